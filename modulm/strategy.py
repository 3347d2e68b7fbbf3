"""How the model is spread over the processes: ``distributed.strategy = "ddp" | "fsdp"``.

The trainer holds one strategy object and calls the same hooks whatever it is, with no branch of
its own: :meth:`~Replicated.prepare` (before the optimizer is built: :func:`modulm.assemble.assemble`
calls it), :meth:`~Replicated.wrap`, :meth:`~Replicated.no_sync`, :meth:`~Replicated.save`,
:meth:`~Replicated.read` / :meth:`~Replicated.restore` and :meth:`~Replicated.memory`.

* :class:`Replicated` (``ddp``, and every single-process run): each process holds the whole model
  (DistributedDataParallel under torchrun); rank 0 writes single-file checkpoints.
* :class:`Sharded` (``fsdp``, under torchrun): FSDP2's ``fully_shard`` on each of the model's
  blocks (its ``layers``, see :class:`modulm.kinds.Model`) and then on the whole model, over a 1-D
  device mesh of all processes. Parameters, gradients and optimizer state live as ``DTensor``
  shards (1/N of each tensor per process); checkpoints are DCP directories
  (:mod:`modulm.sharded_checkpoint`) and the final checkpoint is consolidated into one file.

Both load either checkpoint format, so a run moves between strategies and world sizes.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modulm import distributed, rundir, sharded_checkpoint
from modulm.checkpoint import FORMAT_VERSION, save_checkpoint, unwrap
from modulm.errors import ModulmError, human_bytes
from modulm.fileio import atomic_write
from modulm.runtime import native_bf16, resolve_device, resolve_precision


def strategy(settings: Any = None, system: Any = None) -> "Replicated":
    """The strategy for this process: :class:`Sharded` when ``settings.strategy`` is ``"fsdp"`` and
    torchrun launched several processes, :class:`Replicated` otherwise (``settings`` is the
    recipe's [distributed] table, ``system`` its [system] table; None: defaults)."""
    from modulm.settings import DistributedSettings, SystemSettings

    settings, system = settings or DistributedSettings(), system or SystemSettings()
    ctx = distributed.setup(settings, system.device)
    device = distributed.device_for(resolve_device(system.device), ctx)
    kind = Sharded if ctx.enabled and settings.strategy == "fsdp" else Replicated
    return kind(ctx, settings, device, resolve_precision(device, system.dtype).dtype)  # "auto" resolved


@dataclass(frozen=True)
class MemoryUse:
    """Bytes one process holds for the training state (activations not included)."""

    parameters: int
    gradients: int
    optimizer: int | None  # None: the optimizer's state size could not be probed
    buffers: int = 0  # the model's buffers (RoPE tables, ...): not trained, never sharded

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + (self.optimizer or 0) + self.buffers

    def parts(self) -> str:
        """``parameters X + gradients Y + optimizer state Z`` (``+ buffers W`` where there are some)."""
        optimizer = human_bytes(self.optimizer) if self.optimizer is not None else "unknown"
        buffers = f" + buffers {human_bytes(self.buffers)}" if self.buffers else ""
        return (f"parameters {human_bytes(self.parameters)} + gradients {human_bytes(self.gradients)} + optimizer "
                f"state {optimizer}{buffers}")

    def line(self, strategy_name: str, world_size: int) -> str:
        return (f"Memory per process ({strategy_name}, {world_size} process{'es' if world_size > 1 else ''}): "
                f"{self.parts()} = {human_bytes(self.total)}")


def optimizer_bytes_per_element(optimizer: torch.optim.Optimizer) -> float | None:
    """Bytes of optimizer state per parameter element (8 for AdamW in float32), probed by one step
    of a copy of ``optimizer`` on a meta-device parameter (nothing is allocated)."""
    size = 64
    probe = torch.nn.Parameter(torch.empty(size, device="meta"))
    probe.grad = torch.zeros_like(probe)
    try:
        copy = type(optimizer)([probe], **optimizer.defaults)
        copy.step()
    except Exception:  # an optimizer that cannot be rebuilt from its defaults, or stepped on meta
        return None
    state = copy.state.get(probe, {})
    return sum(t.element_size() * t.numel() for t in state.values()
               if isinstance(t, torch.Tensor) and t.numel() == size) / size


def memory_per_process(model: torch.nn.Module, optimizer_bytes: float | None, sharded: bool,
                       world_size: int) -> MemoryUse:
    """Parameter, gradient (same dtype as the parameter), optimizer and buffer bytes on the process
    that holds most: every tensor whole (ddp), or its first ``ceil(rows / N)`` rows (fsdp, rank 0's
    shard: FSDP2 splits each tensor along dim 0 into N chunks; buffers stay whole). ``model`` may
    live on the meta device; sharded parameters count by their global shape."""
    elements, parameters = 0, 0
    for p in model.parameters():
        numel = p.numel()
        if sharded and world_size > 1 and p.dim() > 0 and p.shape[0]:
            numel = math.ceil(p.shape[0] / world_size) * (numel // p.shape[0])
        elements += numel
        parameters += numel * p.element_size()
    optimizer = round(elements * optimizer_bytes) if optimizer_bytes is not None else None
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return MemoryUse(parameters, parameters, optimizer, buffers)


def training_state_memory(model: torch.nn.Module, optimizer_factory: Any, sharded: bool,
                          world_size: int) -> MemoryUse:
    """:func:`memory_per_process` for ``model`` (on the meta device) trained by the optimizer
    ``optimizer_factory(params=...)`` builds; its state is probed on meta (nothing is allocated)
    and is None in the result when the optimizer cannot be built or stepped there."""
    try:
        with torch.device("meta"):
            optimizer = optimizer_factory(params=list(model.named_parameters()))
        optimizer_bytes = optimizer_bytes_per_element(optimizer)
    except ModulmError:
        raise
    except Exception:  # an optimizer that cannot be built on the meta device
        optimizer_bytes = None
    return memory_per_process(model, optimizer_bytes, sharded, world_size)


def micro_batch_token_bytes(training: Any, context_length: int) -> tuple[int, int]:
    """``(micro_batch, bytes)``: the sequences one micro-batch holds (``training.batch_size /
    grad_accum_steps``) and the bytes of its token ids, int64 inputs and targets as every data
    source returns them."""
    micro_batch = training.batch_size // training.grad_accum_steps
    return micro_batch, 2 * 8 * micro_batch * int(context_length)


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively (not emulated, as on AVX2-only CPUs)."""
    return native_bf16(device)[0]


class Replicated:
    """The whole model on every process: a single process, or DistributedDataParallel."""

    name = "ddp"
    sharded = False
    collective_forward = False  # True when every forward pass is a collective all ranks must join

    def __init__(self, ctx: distributed.Context, settings: Any, device: torch.device, dtype: str) -> None:
        self.ctx, self.settings, self.device, self.dtype = ctx, settings, device, dtype
        self._ddp: torch.nn.Module | None = None

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` made ready for its optimizer to be built (the same module here)."""
        return model

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the trainer calls forward on."""
        self._ddp = self.ctx.wrap(model)
        return model if self._ddp is None else self._ddp

    def no_sync(self, last_micro_step: bool) -> contextlib.AbstractContextManager:
        """Gradients are reduced across the processes only on the last micro-step of a step."""
        return self.ctx.no_sync(self._ddp, last_micro_step)

    def describe(self) -> str:
        return "DistributedDataParallel"

    def memory(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> MemoryUse:
        return memory_per_process(model, optimizer_bytes_per_element(optimizer), self.sharded, self.ctx.world_size)

    def save(self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int,
             **extra: Any) -> Path:
        """Every rank calls this; rank 0 writes the single file ``path``. Returns what was written."""
        if self.ctx.is_main:
            save_checkpoint(model, optimizer, iteration, path, **extra)
        return path

    def read(self, path: Path) -> dict[str, Any]:
        """The checkpoint at ``path`` as every rank reads it before resuming: a file whole (on this
        rank's device); for a sharded directory its trainer state, with ``model`` holding meta
        tensors of the saved shapes (enough to check them against the model)."""
        return sharded_checkpoint.read_any(path, map_location=self.device)

    def restore(self, state: dict[str, Any], path: Path, model: torch.nn.Module,
                optimizer: torch.optim.Optimizer) -> None:
        """Load ``model`` and ``optimizer`` from ``state`` (:meth:`read` of ``path``): the shards of a
        sharded directory through DCP (any world size), or a whole file's state dicts."""
        if path.is_dir():
            sharded_checkpoint.load(path, unwrap(model), optimizer)
        else:
            self._load_whole(state, model, optimizer)

    def _load_whole(self, state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])


class Sharded(Replicated):
    """FSDP2: each block, then the whole model, ``fully_shard``-ed over all processes."""

    name = "fsdp"
    sharded = True
    collective_forward = True

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._model: torch.nn.Module | None = None
        self.mixed_precision = self.dtype == "bfloat16" and bf16_native(self.device)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move ``model`` to this rank's device and shard it in place (its parameters become
        ``DTensor`` shards, so the optimizer must be built afterwards)."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        model = unwrap(model).to(self.device)
        mesh = init_device_mesh(self.device.type, (self.ctx.world_size,))
        precision = MixedPrecisionPolicy()
        if self.mixed_precision:  # compute in bf16, reduce gradients in fp32 (emulated bf16 would be slow)
            precision = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        options = {"mesh": mesh, "reshard_after_forward": self.settings.reshard_after_forward, "mp_policy": precision}
        for block in getattr(model, "layers", ()):
            fully_shard(block, **options)
        fully_shard(model, **options)
        return model

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FSDPModule

        if not isinstance(model, FSDPModule):
            raise ModulmError("distributed.strategy = \"fsdp\": the model was not sharded before its optimizer was "
                              "built; build the run with modulm.assemble.assemble()")
        self._model = model
        return model

    def no_sync(self, last_micro_step: bool) -> contextlib.AbstractContextManager:
        # Inner micro-steps accumulate unsharded gradients; the last one reduce-scatters them all.
        self._model.set_requires_gradient_sync(last_micro_step)
        return contextlib.nullcontext()

    def describe(self) -> str:
        reshard = "on" if self.settings.reshard_after_forward else "off"
        precision = ", bfloat16 compute with float32 gradient reduction" if self.mixed_precision else ""
        return f"FSDP2 (fully_shard per block and at the root, reshard_after_forward {reshard}{precision})"

    def save(self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int,
             **extra: Any) -> Path:
        """A sharded directory ``path`` minus its ``.pt`` suffix; the final checkpoint is gathered
        into the single file ``path`` instead (what generate, export and info read)."""
        trainer_state = {"format": FORMAT_VERSION, "iteration": int(iteration), **extra}
        if path.name == rundir.FINAL:
            return self._save_whole(path, model, optimizer, trainer_state)
        return sharded_checkpoint.save(path.with_suffix(""), model, optimizer, trainer_state, self.ctx.on_main)

    def _save_whole(self, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict[str, Any]) -> Path:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        whole = StateDictOptions(full_state_dict=True, cpu_offload=True)  # rank 0 receives it, in host memory
        weights = get_model_state_dict(model, options=whole)
        optimizer_state = get_optimizer_state_dict(model, optimizer, options=whole)
        if self.ctx.is_main:
            state = {**trainer_state, "model": weights,
                     "optimizer": sharded_checkpoint.indexed_optimizer_state(optimizer_state)}
            atomic_write(path, lambda fh: torch.save(state, fh))
        return path

    def _load_whole(self, state: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        whole = StateDictOptions(full_state_dict=True)  # every rank read the file; each keeps its shards
        set_model_state_dict(model, state["model"], options=whole)
        names = {id(p): name for name, p in model.named_parameters()}
        named = sharded_checkpoint.named_optimizer_state(state["optimizer"], optimizer, names)
        set_optimizer_state_dict(model, optimizer, named, options=whole)
