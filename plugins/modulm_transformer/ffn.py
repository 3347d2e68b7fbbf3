"""Position-wise feed-forward networks: SwiGLU, the plain SiLU ablation and squared ReLU."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from modulm.functional.attention import silu
from modulm.functional.gated_linear import gated_linear
from modulm_transformer.layers import Linear


def swiglu_width(d_model: int) -> int:
    """About ``8/3 * d_model``, rounded to the nearest multiple of 64 (at least 64)."""
    return max(64, round(8 * d_model / 3 / 64) * 64)


class SwiGLU(nn.Module):
    """``W2(SiLU(W1 x) ⊙ W3 x)``; ``d_ff`` defaults to :func:`swiglu_width` of ``d_model``.

    ``SwiGLU(d_model, d_ff=None, device=None, dtype=None)``: ``(..., d_model) -> (..., d_model)``;
    ``w1``, ``w3`` are ``(d_ff, d_model)``, ``w2`` is ``(d_model, d_ff)``.
    The gated input ``SiLU(W1 x) ⊙ W3 x`` is one autograd function over both products
    (:func:`modulm.functional.gated_linear.gated_linear`: contiguous halves, the gating's backward
    in place in their memory).
    """

    def __init__(self, d_model: int, d_ff: int | None = None, device=None, dtype=None) -> None:
        super().__init__()
        d_ff = swiglu_width(d_model) if d_ff is None else d_ff
        self.w1 = Linear(d_model, d_ff, device=device, dtype=dtype)
        self.w2 = Linear(d_ff, d_model, device=device, dtype=dtype)
        self.w3 = Linear(d_model, d_ff, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(gated_linear(x, self.w1.weight, self.w3.weight))


class SiLUFFN(nn.Module):
    """``W2(SiLU(W1 x))``, the ungated ablation; ``d_ff`` defaults to ``4 * d_model``.

    ``SiLUFFN(d_model, d_ff=None, device=None, dtype=None)``: ``(..., d_model) -> (..., d_model)``.
    """

    def __init__(self, d_model: int, d_ff: int | None = None, device=None, dtype=None) -> None:
        super().__init__()
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.w1 = Linear(d_model, d_ff, device=device, dtype=dtype)
        self.w2 = Linear(d_ff, d_model, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(silu(self.w1(x)))


class ReLU2FFN(SiLUFFN):
    """``W2(ReLU(W1 x)²)`` (squared ReLU, Primer; modded-nanogpt's MLP): the ungated layout with
    another activation; ``d_ff`` defaults to ``4 * d_model``."""

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(torch.relu(self.w1(x)).square())
