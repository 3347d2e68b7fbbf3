"""Relative position encodings applied to per-head queries and keys: RoPE, and NoPE (none)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


class RotaryPositionalEmbedding(nn.Module):
    """Rotary embedding: rotates each pair ``(x[2i], x[2i+1])`` by ``pos * theta^(-2i/d_k)``.

    ``forward(x, token_positions)``: ``x`` is ``(..., T, d_k)``; ``token_positions`` ``(..., T)``
    int64 (broadcast against ``x``'s leading dims; default ``arange(T)``) must be
    ``< max_seq_len``. The cos/sin tables are non-persistent float32 buffers. Computes in at least
    float32 and returns ``x``'s dtype.

    ``RotaryPositionalEmbedding(theta, d_k, max_seq_len, device=None)`` (CS336's order):
    ``(..., T, d_k) -> (..., T, d_k)``; ``d_k`` must be even.
    """

    def __init__(self, theta: float, d_k: int, max_seq_len: int, device=None) -> None:
        super().__init__()
        if d_k % 2:
            raise ValueError(f"RoPE needs an even head width, got d_k={d_k}")
        self.theta, self.d_k, self.max_seq_len = theta, d_k, max_seq_len
        self._build_tables(device)

    def _build_tables(self, device) -> None:
        inv_freq = self.theta ** (-torch.arange(0, self.d_k, 2, device=device, dtype=torch.float64) / self.d_k)
        angles = torch.arange(self.max_seq_len, device=device, dtype=torch.float64)[:, None] * inv_freq
        self.register_buffer("cos", angles.cos().float(), persistent=False)  # (max_seq_len, d_k / 2)
        self.register_buffer("sin", angles.sin().float(), persistent=False)
        # cos + i*sin, derived from the buffers (not one itself: it is rebuilt with them)
        self._rotations = torch.complex(self.cos, self.sin)

    def _apply(self, fn, recurse=True):
        # The tables are derived data: after a move or a cast (model.to(torch.bfloat16)) rebuild
        # them in float32 on the new device rather than keep rounded angles.
        super()._apply(fn, recurse)
        self._build_tables(self.cos.device)
        return self

    def forward(self, x: Tensor, token_positions: Tensor | None = None) -> Tensor:
        rows = slice(x.shape[-2]) if token_positions is None else token_positions
        if torch.compiler.is_compiling():  # inductor fuses the real form; it cannot lower complex views
            return rotate_pairs(x, self.cos[rows], self.sin[rows])
        return rotate_by(x, self._rotations[rows])

    def extra_repr(self) -> str:
        return f"theta={self.theta}, d_k={self.d_k}, max_seq_len={self.max_seq_len}"


def rotate_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair ``(x[2i], x[2i+1])`` by the angle whose cosine and sine are ``cos[i], sin[i]``."""
    pairs = x.to(torch.promote_types(x.dtype, torch.float32)).unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2).to(x.dtype)


def rotate_pairs_complex(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """:func:`rotate_pairs` as one complex product: the pair is ``x[2i] + i*x[2i+1]``, the rotation
    ``cos + i*sin``. In eager mode that is one kernel (forward and backward) instead of six."""
    return rotate_by(x, torch.complex(cos, sin))


def rotate_by(x: Tensor, rotations: Tensor) -> Tensor:
    """Multiply each pair ``x[2i] + i*x[2i+1]`` by the complex ``rotations[i]`` (unit modulus for
    RoPE), computing in at least float32 and returning ``x``'s dtype. Differentiable in ``x`` (and
    in ``rotations`` where they require a gradient)."""
    if torch.is_grad_enabled() and x.requires_grad and not rotations.requires_grad:
        return _Rotation.apply(x, rotations)
    return _rotate(x, rotations)


def _rotate(x: Tensor, rotations: Tensor) -> Tensor:
    pairs = x.to(torch.promote_types(x.dtype, torch.float32)).unflatten(-1, (-1, 2))
    if pairs.stride(-1) != 1 or pairs.storage_offset() % 2 or any(s % 2 for s in pairs.stride()[:-1]):
        pairs = pairs.contiguous()  # view_as_complex needs whole complex numbers in memory
    rotated = torch.view_as_real(torch.view_as_complex(pairs) * rotations)
    return rotated.flatten(-2).to(x.dtype)


class _Rotation(torch.autograd.Function):
    """:func:`_rotate` with its backward as one more rotation: the gradient of ``z * r`` in ``z``
    is ``g * conj(r)``. One graph node instead of the seven of the views, casts and product."""

    @staticmethod
    def forward(ctx, x: Tensor, rotations: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(rotations)
        return _rotate(x, rotations)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (rotations,) = ctx.saved_tensors
        return _rotate(grad, rotations.conj()), None


class NoPositionalEmbedding(nn.Module):
    """No position information (NoPE): returns ``x`` unchanged; the causal mask alone orders tokens."""

    def forward(self, x: Tensor, token_positions: Tensor | None = None) -> Tensor:
        return x
