"""An example modulm plugin: registers the feed-forward network ``example-geglu``."""

import math
from typing import Annotated

import torch
from annotated_types import Ge
from torch import nn

from modulm import hookimpl


class GeGLU(nn.Module):
    """GeGLU feed-forward network: W2(GELU(W1 x) * W3 x) (Shazeer, 2020).

    hidden_multiple: d_ff defaults to 8/3 * d_model rounded up to a multiple of this
    """

    def __init__(self, hidden_multiple: Annotated[int, Ge(1)] = 64, *, d_model: int, d_ff: int | None = None):
        super().__init__()
        if d_ff is None:
            d_ff = hidden_multiple * math.ceil(8 * d_model / 3 / hidden_multiple)
        std = math.sqrt(2.0 / (d_model + d_ff))
        self.w1 = nn.Parameter(torch.randn(d_ff, d_model) * std)
        self.w3 = nn.Parameter(torch.randn(d_ff, d_model) * std)
        self.w2 = nn.Parameter(torch.randn(d_model, d_ff) * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x @ self.w1.T
        gelu = 0.5 * gate * (1.0 + torch.erf(gate / math.sqrt(2.0)))
        return (gelu * (x @ self.w3.T)) @ self.w2.T


@hookimpl
def modulm_register_components(registry):
    # Third-party names carry a prefix so they never collide with modulm's or another plugin's.
    registry.ffn("example-geglu", GeGLU)
