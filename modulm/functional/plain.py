"""Which tensors the hand-written kernels take: plain ones, not subclasses with their own rules;
and whether a dispatch mode (fake tensors, a tracer) watches them.

A tensor subclass such as ``DTensor`` (FSDP2's shards) must go through the ops it overrides, so
the fused kernels see only :class:`torch.Tensor` and :class:`torch.nn.Parameter`, and the fake
tensors that stand in for them when memory is sized without data (:mod:`modulm.activations`): a
fake tensor must take the path a real one takes, or it would size another computation.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

try:
    from torch._subclasses.fake_tensor import FakeTensor

    _PLAIN: tuple[type, ...] = (Tensor, nn.Parameter, FakeTensor)
except ImportError:  # a torch without fake tensors
    FakeTensor = None
    _PLAIN = (Tensor, nn.Parameter)


def plain(*tensors: Tensor) -> bool:
    """Whether every one of ``tensors`` is a plain tensor or parameter (or a fake one)."""
    return all(type(t) in _PLAIN for t in tensors)


def is_fake(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a fake one (no storage): a chunked loop over it then runs as one chunk,
    the same operations each seen once (a real tensor under a ``FlopCounterMode`` keeps its chunks)."""
    return FakeTensor is not None and isinstance(tensor, FakeTensor)


def dispatch_mode_active() -> bool:
    """Whether a Python dispatch mode (``FakeTensorMode`` and the like) is active: the kernels then
    keep no buffer between calls (what it makes must not outlive it, nor a real buffer enter it)."""
    stack_depth = getattr(torch._C, "_len_torch_dispatch_stack", None)
    return bool(stack_depth()) if stack_depth is not None else False


def outside_dispatch_modes() -> AbstractContextManager:
    """A context in which no Python dispatch mode is active: what a cache keeps past the call that
    fills it (a mask, a probe's answer) must be made of real tensors, even when that first call
    runs under ``FakeTensorMode``. A no-op on a torch without the mode stack."""
    try:
        from torch.utils._python_dispatch import _disable_current_modes
    except ImportError:
        return nullcontext()
    return _disable_current_modes()
