"""Activation memory of a training step, sized without memory or arithmetic.

:func:`saved_activation_bytes` runs the model's forward pass and loss once on fake tensors
(PyTorch's ``FakeTensorMode``: shapes, dtypes and devices, no storage, nothing computed) under the
run's autocast, and adds up the tensors autograd keeps for the backward pass. Those are all alive
when the forward pass ends, so their sum is a floor under a step's peak memory (the temporaries of
each operation, and the backward pass's own, come on top: the base recipe's model at batch 128
peaked at 1.2x the count in float32 and 1.5x in bfloat16, measured as resident memory).
Parameters, buffers and the token ids are not counted: the training state and the micro-batch's
ids are sized apart (:mod:`modulm.strategy`).

Kernels that branch on the tensor type must treat a fake tensor as the plain one it stands for
(:func:`modulm.functional.plain.plain`), and kernels that keep buffers between calls must not keep
one made here (:func:`modulm.functional.workspace.workspace` does not under a dispatch mode).

The count holds for eager execution. Under ``system.compile`` a compiled graph may keep fewer
tensors (it can recompute some in the backward pass), so no floor is claimed there.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

#: Above this many sequences a micro-batch is not run whole: two smaller runs give the cost of a
#: sequence, and the count grows linearly from there (a sequence's activations do not depend on
#: the others in its batch).
DIRECT_SEQUENCES = 16
#: The sizing gives up (and nothing is claimed) past this many seconds: a deep model whose blocks
#: differ runs every one of them, at about 15 ms a transformer block.
TIME_LIMIT_S = 10.0


def _fake_modes() -> tuple[Any, Any] | None:
    """A fake-tensor mode, and a mode above it that answers a read of a tensor's value
    (``.item()``, ``bool(t)``) with zero or False: a fake tensor has none, and a model may branch
    on one (an overflow check, say). None on a torch without them."""
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.utils._python_dispatch import TorchDispatchMode
    except ImportError:
        return None

    class NoData(TorchDispatchMode):
        deadline = math.inf

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if time.perf_counter() > self.deadline:
                raise TimeoutError(f"sizing the activations took more than {TIME_LIMIT_S} s")
            if func is torch.ops.aten._local_scalar_dense.default:
                tensor = args[0]
                return False if tensor.dtype == torch.bool else (0.0 if tensor.is_floating_point() else 0)
            return func(*args, **(kwargs or {}))

    return FakeTensorMode(allow_non_fake_inputs=True), NoData()


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


def _saved_bytes(model: torch.nn.Module, sequences: int, context_length: int, device: torch.device,
                 autocast: Callable[[], Any], modes: tuple[Any, Any]) -> int:
    from modulm.evaluate import model_loss
    from modulm.kinds import takes_targets

    state = {_storage(t) for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, torch.Tensor] = {}  # storage -> a tensor on it (held, so no id is reused)

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage(tensor)
        if key not in state:
            saved.setdefault(key, tensor)
        return tensor

    fake, no_data = modes
    with fake, no_data:
        ids = torch.zeros(sequences, context_length, dtype=torch.long, device=device)
        state.add(_storage(ids))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model_loss(model, ids, ids, autocast, takes_targets(model))
    return sum(t.untyped_storage().nbytes() for t in saved.values())


def _identical_blocks(model: torch.nn.Module) -> list[torch.nn.Module] | None:
    """The blocks of ``model.layers`` (the :class:`modulm.kinds.Model` contract) when there are more
    than two and every one has the first's type and parameter and buffer shapes, so keeps as much
    as it does; None otherwise."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) <= 2:
        return None

    def shape(block: torch.nn.Module) -> tuple:
        return (type(block), tuple((n, tuple(t.shape), t.dtype) for n, t in block.named_parameters()),
                tuple((n, tuple(t.shape), t.dtype) for n, t in block.named_buffers()))

    first = shape(layers[0])
    return list(layers) if all(shape(block) == first for block in layers) else None


def saved_activation_bytes(meta_model: torch.nn.Module, micro_batch: int, context_length: int,
                           device: torch.device, autocast: Callable[[], Any]) -> int | None:
    """Bytes of the tensors one training forward pass of ``micro_batch`` sequences of
    ``context_length`` tokens keeps for its backward pass, on ``device`` under ``autocast()``.

    ``meta_model`` is a model on the meta device; it is moved to fake tensors (so it is used up:
    pass one built for this). Each fake operation costs about 0.1 ms whatever its size, so the
    count is extrapolated where that pays, linearly in each direction: past
    :data:`DIRECT_SEQUENCES` sequences from runs of 8 and 16, and for more than two identical
    blocks (:func:`_identical_blocks`) from runs of the first one and two. None where the model
    cannot run on fake tensors, or a pass outlasts :data:`TIME_LIMIT_S`.
    """
    from modulm.functional.cpu_matmul import chosen, forget_cpu_matmul, set_cpu_matmul

    modes = _fake_modes()
    if modes is None or micro_batch < 1 or context_length < 1:
        return None
    unresolved = chosen() is None
    if unresolved:  # either library keeps the same tensors: no need to time them now
        set_cpu_matmul("blas")
    blocks = _identical_blocks(meta_model)
    sequences = [micro_batch] if micro_batch <= DIRECT_SEQUENCES else [DIRECT_SEQUENCES // 2, DIRECT_SEQUENCES]
    modes[1].deadline = time.perf_counter() + TIME_LIMIT_S
    try:
        if blocks is not None:
            meta_model.layers = torch.nn.ModuleList(blocks[:2])
        with modes[0]:
            model = meta_model.to_empty(device=device)
        model.train()
        whole = []  # the count for the whole model at each number of sequences
        for n in sequences:
            if blocks is None:
                whole.append(_saved_bytes(model, n, context_length, device, autocast, modes))
                continue
            fake_blocks = list(model.layers)
            at = []
            for kept in (1, 2):
                model.layers = torch.nn.ModuleList(fake_blocks[:kept])
                at.append(_saved_bytes(model, n, context_length, device, autocast, modes))
            model.layers = torch.nn.ModuleList(fake_blocks)
            whole.append(at[0] + (len(blocks) - 1) * (at[1] - at[0]))
        if len(whole) == 1:
            return whole[0]
        per_sequence = (whole[1] - whole[0]) / (sequences[1] - sequences[0])
        return round(whole[1] + per_sequence * (micro_batch - sequences[1]))
    except Exception:  # an operation without a fake-tensor kernel, a model that reads its data, too slow
        return None
    finally:
        if unresolved:
            forget_cpu_matmul()
