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

    def complex_rotations(self, length: int) -> Tensor:
        """The complex ``(length, d_k / 2)`` rotations of positions ``0 .. length-1``: without
        positions, ``forward(x)`` multiplies each pair ``x[2i] + i*x[2i+1]`` by them (the contract
        :func:`rotated_qkv_heads` relies on)."""
        return self._rotations[:length]

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


def _complex_pairs(x: Tensor) -> Tensor:
    """``x`` (last dim even) as complex pairs ``x[2i] + i*x[2i+1]``: a view where its strides allow
    (view_as_complex needs whole complex numbers in memory), else a copy."""
    pairs = x.unflatten(-1, (-1, 2))
    if pairs.stride(-1) != 1 or pairs.storage_offset() % 2 or any(s % 2 for s in pairs.stride()[:-1]):
        pairs = pairs.contiguous()
    return torch.view_as_complex(pairs)


def _rotate(x: Tensor, rotations: Tensor) -> Tensor:
    rotated = torch.view_as_real(_complex_pairs(x.to(torch.promote_types(x.dtype, torch.float32))) * rotations)
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


class _RotatedQKVHeads(torch.autograd.Function):
    """See :func:`rotated_qkv_heads`. The backward writes the three gradients into one new
    ``(..., T, 3 d_model)`` tensor (the queries' and keys' rotated back on the way), which is what
    the projection's backward takes, with no concatenation."""

    @staticmethod
    def forward(ctx, qkv: Tensor, rotations: Tensor, num_heads: int):  # type: ignore[override]
        width = qkv.shape[-1] // 3
        head_dim = width // num_heads
        rotated = qkv.new_empty(*qkv.shape[:-1], 2 * num_heads, head_dim)  # (..., T, 2 heads, head_dim)
        torch.mul(_complex_pairs(qkv[..., : 2 * width].unflatten(-1, (2 * num_heads, head_dim))),
                  rotations.unsqueeze(-2), out=torch.view_as_complex(rotated.unflatten(-1, (-1, 2))))
        ctx.save_for_backward(rotations)
        ctx.num_heads = num_heads
        q, k = rotated.transpose(-3, -2).split(num_heads, dim=-3)
        return q, k, qkv[..., 2 * width:].unflatten(-1, (num_heads, head_dim)).transpose(-3, -2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_q: Tensor | None, grad_k: Tensor | None, grad_v: Tensor | None):  # type: ignore[override]
        (rotations,) = ctx.saved_tensors
        grads = (grad_q, grad_k, grad_v)
        first = next(g for g in grads if g is not None)
        shape = first.shape  # (..., heads, T, head_dim)
        width = shape[-3] * shape[-1]
        new = torch.zeros if any(g is None for g in grads) else torch.empty
        grad_qkv = new(*shape[:-3], shape[-2], 3 * width, dtype=first.dtype, device=first.device)
        unrotate = rotations.conj().unsqueeze(-2)
        for i, g in enumerate(grads):
            if g is None:
                continue
            heads_last = g.transpose(-3, -2)  # (..., T, heads, head_dim)
            target = grad_qkv[..., i * width:(i + 1) * width].unflatten(-1, (shape[-3], shape[-1]))
            if i < 2:
                torch.mul(_complex_pairs(heads_last), unrotate, out=torch.view_as_complex(target.unflatten(-1, (-1, 2))))
            else:
                target.copy_(heads_last)
        return grad_qkv, None, None


def rotated_qkv_heads(qkv: Tensor, rotations: Tensor, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """The heads of a stacked projection ``qkv = [q | k | v]`` (``(..., T, 3 d_model)`` float32),
    the queries and keys rotated by the complex ``rotations`` ``(T, head_dim / 2)``: ``q, k, v`` as
    ``(..., heads, T, head_dim)``, ``v`` a view of ``qkv``.

    The same values as rotating ``q`` and ``k`` apart with :func:`rotate_by`, in one kernel over
    both; the backward forms ``qkv``'s gradient in place of the concatenation of three.
    On a 2-core Intel Xeon (AMX), paired A/B: bench-tiny's attention forward and backward 1.03–1.04x,
    whole steps 1.01–1.02x.
    """
    return _RotatedQKVHeads.apply(qkv, rotations, num_heads)


class NoPositionalEmbedding(nn.Module):
    """No position information (NoPE): returns ``x`` unchanged; the causal mask alone orders tokens."""

    def forward(self, x: Tensor, token_positions: Tensor | None = None) -> Tensor:
        return x
