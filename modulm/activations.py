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

from typing import Any, Callable

import torch

#: Above this many sequences a micro-batch is not run whole: two smaller runs give the cost of a
#: sequence, and the count grows linearly from there (a sequence's activations do not depend on
#: the others in its batch).
DIRECT_SEQUENCES = 16


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
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
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


def saved_activation_bytes(meta_model: torch.nn.Module, micro_batch: int, context_length: int,
                           device: torch.device, autocast: Callable[[], Any]) -> int | None:
    """Bytes of the tensors one training forward pass of ``micro_batch`` sequences of
    ``context_length`` tokens keeps for its backward pass, on ``device`` under ``autocast()``.

    ``meta_model`` is a model on the meta device; it is moved to fake tensors (so it is used up:
    pass one built for this). Past :data:`DIRECT_SEQUENCES` sequences the count is extrapolated
    linearly from runs of 8 and 16. None where the model cannot run on fake tensors.
    """
    from modulm.functional.cpu_matmul import chosen, forget_cpu_matmul, set_cpu_matmul

    modes = _fake_modes()
    if modes is None or micro_batch < 1 or context_length < 1:
        return None
    unresolved = chosen() is None
    if unresolved:  # either library keeps the same tensors: no need to time them now
        set_cpu_matmul("blas")
    try:
        with modes[0]:
            model = meta_model.to_empty(device=device)
        model.train()
        if micro_batch <= DIRECT_SEQUENCES:
            return _saved_bytes(model, micro_batch, context_length, device, autocast, modes)
        low, high = DIRECT_SEQUENCES // 2, DIRECT_SEQUENCES
        at_low, at_high = (_saved_bytes(model, n, context_length, device, autocast, modes) for n in (low, high))
        per_sequence = (at_high - at_low) / (high - low)
        return round(at_high + per_sequence * (micro_batch - high))
    except Exception:  # an operation without a fake-tensor kernel, a model that reads its data
        return None
    finally:
        if unresolved:
            forget_cpu_matmul()
