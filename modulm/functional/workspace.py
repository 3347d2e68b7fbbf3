"""Reused scratch buffers for the temporaries of hand-written kernels on the CPU.

A fresh multi-megabyte tensor costs a page fault per 4 KiB the first time it is written (the C
allocator hands large blocks back to the system when they are freed), which on a CPU can cost
as much as the arithmetic done in it. :func:`workspace` keeps, per thread and per purpose, the
last buffer handed out and returns a view of it while it is large enough.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from modulm.functional.plain import dispatch_mode_active

_KEPT = threading.local()


def workspace(purpose: str, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised contiguous tensor of ``shape`` for a temporary that lives only within one
    call (nothing may hold it after the call returns). On the CPU it is a view of this thread's
    kept buffer for ``purpose`` (grown when too small); on accelerators, whose caching allocators
    already reuse memory, and under a dispatch mode (fake tensors, a tracer: what it makes must not
    outlive it, nor a real buffer enter it), a new tensor."""
    if device.type != "cpu" or dispatch_mode_active():
        return torch.empty(shape, dtype=dtype, device=device)
    numel = 1
    for size in shape:
        numel *= size
    buffers = _KEPT.__dict__.setdefault("buffers", {})
    kept = buffers.get(purpose)
    if kept is None or kept.dtype != dtype or kept.numel() < numel:
        kept = buffers[purpose] = torch.empty(numel, dtype=dtype)
    return kept[:numel].view(shape)
