"""Which tensors the hand-written kernels take: plain ones, not subclasses with their own rules.

A tensor subclass such as ``DTensor`` (FSDP2's shards) must go through the ops it overrides, so
the fused kernels see only :class:`torch.Tensor` and :class:`torch.nn.Parameter`, and the fake
tensors that stand in for them when memory is sized without data (:mod:`modulm.activations`): a
fake tensor must take the path a real one takes, or it would size another computation.
"""

from __future__ import annotations

from torch import Tensor, nn

try:
    from torch._subclasses.fake_tensor import FakeTensor

    _PLAIN: tuple[type, ...] = (Tensor, nn.Parameter, FakeTensor)
except ImportError:  # a torch without fake tensors
    _PLAIN = (Tensor, nn.Parameter)


def plain(*tensors: Tensor) -> bool:
    """Whether every one of ``tensors`` is a plain tensor or parameter (or a fake one)."""
    return all(type(t) in _PLAIN for t in tensors)
