"""Linear and Embedding layers, from scratch (``nn.Parameter`` and tensor ops only; the product
itself is :func:`modulm.functional.linear.linear`, a float32 matrix product in the CPU's faster GEMM
library)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from modulm.functional.linear import linear


class Linear(nn.Module):
    """``y = x Wᵀ`` without bias; ``weight`` is ``(out_features, in_features)``.

    Initialised from N(0, 2 / (in + out)) truncated at ±3σ.

    ``Linear(in_features, out_features, device=None, dtype=None)``: ``(..., in_features) -> (..., out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        std = math.sqrt(2.0 / (in_features + out_features))
        nn.init.trunc_normal_(self.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Embedding(nn.Module):
    """Lookup table ``weight[token_ids]``; ``weight`` is ``(num_embeddings, embedding_dim)``.

    Initialised from N(0, 1) truncated at ±3.

    ``Embedding(num_embeddings, embedding_dim, device=None, dtype=None)``: int64 ids ``(...)`` ->
    ``(..., embedding_dim)``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None, dtype=None) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        nn.init.trunc_normal_(self.weight, mean=0.0, std=1.0, a=-3.0, b=3.0)

    def forward(self, token_ids: Tensor) -> Tensor:
        # Same as weight[token_ids]; index_select's backward (index_add) is ~5x faster on a CPU
        # than advanced indexing's (a sorting index_put).
        rows = self.weight.index_select(0, token_ids.reshape(-1))
        return rows.view(*token_ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}"
