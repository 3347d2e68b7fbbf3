"""Causal multi-head self-attention, with a fused-kernel and a from-scratch implementation."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from modulm.functional.attention import causal_mask, scaled_dot_product_attention
from modulm_transformer.cache import LayerKVCache
from modulm_transformer.layers import Linear
from modulm_transformer.position import NoPositionalEmbedding

IMPLS = ("sdpa", "scratch")


class CausalSelfAttention(nn.Module):
    """``output_proj(MultiHead(q_proj x, k_proj x, v_proj x))`` with a causal mask.

    ``d_k = d_v = d_model / num_heads``; ``position`` (a module, default none) rotates the queries
    and keys of every head alike. ``impl="sdpa"`` uses ``torch.nn.functional.scaled_dot_product_attention``;
    ``impl="scratch"`` uses :func:`modulm.functional.attention.scaled_dot_product_attention`.

    ``CausalSelfAttention(d_model, num_heads, position=None, impl="sdpa", device=None, dtype=None)``:
    ``forward(x, token_positions=None)`` maps ``(..., T, d_model)`` to ``(..., T, d_model)``.
    """

    def __init__(self, d_model: int, num_heads: int, position: nn.Module | None = None,
                 impl: Literal["sdpa", "scratch"] = "sdpa", device=None, dtype=None) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        if impl not in IMPLS:
            raise ValueError(f"attention impl must be one of {IMPLS}, got {impl!r}")
        self.d_model, self.num_heads, self.head_dim, self.impl = d_model, num_heads, d_model // num_heads, impl
        self.q_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.k_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.v_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.output_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.position = position if position is not None else NoPositionalEmbedding()

    def forward(self, x: Tensor, token_positions: Tensor | None = None, kv_cache: LayerKVCache | None = None) -> Tensor:
        """``x``: ``(..., T, d_model)``; with ``kv_cache``, ``x`` holds the tokens after the cached ones."""
        q, k, v = (self._split_heads(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if token_positions is None and kv_cache is not None:
            token_positions = torch.arange(kv_cache.length, kv_cache.length + x.shape[-2], device=x.device)
        if token_positions is not None:
            token_positions = token_positions.unsqueeze(-2)  # broadcast over the head dim
        q, k = self.position(q, token_positions), self.position(k, token_positions)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)
        out = self._attend(q, k, v)  # (..., heads, T, head_dim)
        return self.output_proj(out.transpose(-3, -2).flatten(-2))

    def _split_heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Causal attention of the last ``q`` positions over all ``k`` positions."""
        num_queries, num_keys = q.shape[-2], k.shape[-2]
        if self.impl == "sdpa" and num_queries == num_keys:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        # Cached decoding (few queries over many keys) takes the plain path on purpose: torch's CPU
        # fused kernel spends ~20 ms per call on a single query, ~300x the two small matmuls here.
        mask = None if num_queries == 1 else causal_mask(num_queries, num_keys, q.device)
        return scaled_dot_product_attention(q, k, v, mask)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, impl={self.impl!r}"
