"""Data-parallel plumbing on ``torch.distributed``: the process group, DDP, and the few collectives
the trainer needs.

A process is distributed when torchrun launched it with ``WORLD_SIZE`` > 1 in the environment
(``modulm run --nproc N`` launches torchrun). Otherwise :func:`setup` returns :data:`SINGLE`, whose
methods do nothing, and the trainer runs exactly as a single process.

Batch semantics: ``training.batch_size`` is per process; the global batch is ``batch_size *
world_size``. Every rank draws the global batch's start offsets from the same generator and keeps
its own rows (see :meth:`shard_data`), so N processes with batch B train on exactly the samples of
one process with batch N*B, and DDP's gradient mean equals that process's gradient.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import gc
import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from modulm.errors import ModulmError


@dataclass(frozen=True)
class Context:
    """This process's place in the job; its collectives are no-ops in a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    timeout_seconds: float = 0.0
    device: torch.device = torch.device("cpu")  # where collective tensors live (CUDA for nccl)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives (every rank must call them in the same order) ----------------------------
    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks."""
        if not self.enabled:
            return value
        return float(self._sum([value])[0]) / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        if not self.enabled:
            return flag
        return bool(self._sum([float(flag)])[0] > 0)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (pickled; keep it small)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 alone; every rank returns its result, or raises its ModulmError."""
        if not self.enabled:
            return fn()
        payload: list[Any] = [None]
        if self.is_main:
            try:
                payload[0] = ("ok", fn())
            except Exception as exc:
                dist.broadcast_object_list([("error", str(exc))], src=0)
                raise
        dist.broadcast_object_list(payload, src=0)
        status, value = payload[0]
        if status == "error":
            raise ModulmError(value if self.is_main else f"{value} (reported by rank 0)")
        return value

    def reduce_eval(self, result: Any) -> Any:
        """An :class:`~modulm.evaluate.EvalResult` over every rank's windows."""
        if not self.enabled:
            return result
        total, tokens = self._sum([result.loss * result.tokens if result.tokens else 0.0, float(result.tokens)])
        loss = float(total / tokens) if tokens else float("nan")
        return replace(result, loss=loss, tokens=int(tokens))

    def _sum(self, values: list[float]) -> torch.Tensor:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.cpu()

    # -- data and model -----------------------------------------------------------------------
    def shard_data(self, data: Any) -> Any:
        """Tell the data source which rows of each global batch this rank reads (``shard``)."""
        if not self.enabled:
            return data
        if not hasattr(data, "shard"):
            raise ModulmError(f"data: {type(data).__name__} cannot be sampled by several processes "
                              "(it has no shard(rank, world_size) method); run it in a single process")
        data.shard(self.rank, self.world_size)
        return data

    def shard_rows(self, windows: Iterable[np.ndarray], keep_empty: bool = False) -> Iterable[np.ndarray]:
        """This rank's share of the rows of each evaluation batch (``windows`` itself in a single process).

        Empty shares are dropped unless ``keep_empty`` (fsdp: every rank must join every forward pass).
        """
        if not self.enabled:
            return windows
        parts = (np.array_split(window, self.world_size)[self.rank] for window in windows)
        return (part for part in parts if len(part) or keep_empty)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module | None:
        """``model`` in DistributedDataParallel (None in a single process).

        Buffers are not broadcast: the models' buffers are fixed tables, and without that broadcast
        a forward pass holds no collective, so ranks may evaluate different numbers of batches.
        """
        if not self.enabled:
            return None
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)

    def no_sync(self, ddp: torch.nn.Module | None, last_micro_step: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on every micro-step but the last of an optimizer step."""
        if ddp is None or last_micro_step:
            return contextlib.nullcontext()
        return ddp.no_sync()

    def own_state(self, checkpoint: dict[str, Any], key: str) -> Any:
        """This rank's ``key`` state (``"data"`` or ``"rng"``) from a run checkpoint.

        A checkpoint written by as many ranks holds one state per rank; otherwise rank 0's (the
        plain ``key`` entry) is used, which is exact for the data sources here: their generator
        state is the same on every rank.
        """
        saved = checkpoint.get("distributed") or {}
        if saved.get("world_size") == self.world_size and key in saved:
            return saved[key][self.rank]
        return checkpoint.get(key)


SINGLE = Context()
_current: Context | None = None


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(settings: Any, device: str | torch.device) -> Context:
    """Join the process group torchrun describes in the environment; once per process.

    ``settings`` is the recipe's [distributed] table (None: defaults), ``device`` the recipe's
    ``system.device``. In a single process this returns :data:`SINGLE` and touches nothing.
    """
    global _current
    if not launched():
        return SINGLE
    if _current is not None:
        return _current
    from modulm.runtime import resolve_device
    from modulm.settings import DistributedSettings

    device = resolve_device(device) if isinstance(device, str) else device
    settings = settings or DistributedSettings()
    backend = settings.backend if settings.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and device.type != "cuda":
        raise ModulmError(f"distributed.backend: nccl needs CUDA devices but system.device is {device}; use gloo or auto")
    if settings.timeout_seconds <= 0:
        raise ModulmError(f"distributed.timeout_seconds must be > 0, got {settings.timeout_seconds}")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=settings.timeout_seconds))
    _current = Context(dist.get_rank(), dist.get_world_size(), local_rank, backend,
                       float(settings.timeout_seconds), device)
    atexit.register(teardown)
    return _current


def current() -> Context:
    """The context :func:`setup` made in this process, or :data:`SINGLE`."""
    return _current or SINGLE


def device_for(device: torch.device, ctx: Context) -> torch.device:
    """The device this rank computes on: its own GPU (``cuda:LOCAL_RANK``) when on CUDA."""
    return ctx.device if ctx.enabled and device.type == "cuda" else device


@contextlib.contextmanager
def main_first(ctx: Context) -> Iterator[None]:
    """Rank 0 runs the body first (e.g. to build a data cache), then the other ranks."""
    if ctx.enabled and not ctx.is_main:
        dist.barrier()
    yield
    if ctx.enabled and ctx.is_main:
        dist.barrier()


_LOST_CONTACT = ("gloo", "nccl", "timed out", "timeout", "connection", "socket", "peer")


@contextlib.contextmanager
def report_lost_ranks() -> Iterator[None]:
    """Turn a failed or timed-out collective into a one-line :class:`ModulmError` naming the cause."""
    try:
        yield
    except RuntimeError as exc:
        ctx = current()
        first = (str(exc).splitlines() or [""])[0]
        if not ctx.enabled or not (isinstance(exc, dist.DistError) or any(m in first.lower() for m in _LOST_CONTACT)):
            raise
        raise ModulmError(
            f"rank {ctx.rank}/{ctx.world_size}: lost contact with the other ranks (a collective failed or waited "
            f"longer than distributed.timeout_seconds = {ctx.timeout_seconds:g}); another rank probably died or "
            f"stalled, see its output. Cause: {first[:300]}") from exc


def teardown() -> None:
    """Leave the process group (idempotent).

    Unreachable DDP wrappers are collected first: a DDP reducer that outlives its process group
    can abort the process at exit ("terminate called without an active exception", gloo).
    """
    global _current
    if _current is not None and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
    _current = None
