"""Normalisation layers: RMSNorm, and Identity for the no-norm ablation."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) * weight`` over the last dim, with gain ``weight`` initialised to 1.

    Computes in float32 and returns the input's dtype.
    """

    def __init__(self, d_model: int, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        self.d_model = d_model
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        inv_rms = torch.rsqrt(x32.square().mean(dim=-1, keepdim=True) + self.eps)
        return (x32 * inv_rms * self.weight).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.d_model}, eps={self.eps}"


class Identity(nn.Module):
    """No normalisation: returns its input (the layer-norm ablation). Has no parameters."""

    def forward(self, x: Tensor) -> Tensor:
        return x
