"""Relative position encodings applied to per-head queries and keys: RoPE, and NoPE (none)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RotaryPositionalEmbedding(nn.Module):
    """Rotary embedding: rotates each pair ``(x[2i], x[2i+1])`` by ``pos * theta^(-2i/d_k)``.

    ``forward(x, token_positions)``: ``x`` is ``(..., T, d_k)``; ``token_positions`` ``(..., T)``
    int64 (broadcast against ``x``'s leading dims; default ``arange(T)``) must be
    ``< max_seq_len``. The cos/sin tables are non-persistent buffers. Computes in float32 and
    returns ``x``'s dtype.
    """

    def __init__(self, theta: float, d_k: int, max_seq_len: int, device=None) -> None:
        super().__init__()
        if d_k % 2:
            raise ValueError(f"RoPE needs an even head width, got d_k={d_k}")
        self.theta, self.d_k, self.max_seq_len = theta, d_k, max_seq_len
        inv_freq = theta ** (-torch.arange(0, d_k, 2, device=device, dtype=torch.float64) / d_k)
        angles = torch.arange(max_seq_len, device=device, dtype=torch.float64)[:, None] * inv_freq
        self.register_buffer("cos", angles.cos().float(), persistent=False)  # (max_seq_len, d_k / 2)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: Tensor, token_positions: Tensor | None = None) -> Tensor:
        if token_positions is None:
            cos, sin = self.cos[: x.shape[-2]], self.sin[: x.shape[-2]]
        else:
            cos, sin = self.cos[token_positions], self.sin[token_positions]
        pairs = x.float().unflatten(-1, (-1, 2))  # (..., T, d_k / 2, 2)
        even, odd = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
        return rotated.flatten(-2).to(x.dtype)

    def extra_repr(self) -> str:
        return f"theta={self.theta}, d_k={self.d_k}, max_seq_len={self.max_seq_len}"


class NoPositionalEmbedding(nn.Module):
    """No position information (NoPE): returns ``x`` unchanged; the causal mask alone orders tokens."""

    def forward(self, x: Tensor, token_positions: Tensor | None = None) -> Tensor:
        return x
