"""Causal multi-head self-attention, with a fused-kernel and a from-scratch implementation."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from modulm.functional.attention import causal_mask, scaled_dot_product_attention
from modulm.functional.linear import linear
from modulm.functional.plain import plain
from modulm_transformer.cache import LayerKVCache
from modulm_transformer.cpu_attention import block_causal_attention, block_causal_available, blocks_pay_off
from modulm_transformer.layers import Linear
from modulm_transformer.position import NoPositionalEmbedding, rotated_qkv_heads

IMPLS = ("sdpa", "scratch")


class CausalSelfAttention(nn.Module):
    """``output_proj(MultiHead(q_proj x, k_proj x, v_proj x))`` with a causal mask.

    ``d_k = d_v = d_model / num_heads``; ``position`` (a module, default none) rotates the queries
    and keys of every head alike. ``q_norm`` and ``k_norm`` (modules over the head width, default
    none) normalise each head's queries and keys after the projections and before ``position``
    (QK-norm). ``impl="sdpa"`` uses ``torch.nn.functional.scaled_dot_product_attention``
    (for cached decoding too); ``impl="scratch"`` uses
    :func:`modulm.functional.attention.scaled_dot_product_attention`. The three projections keep
    their own parameters (and state-dict names) but run as one matmul against the stacked weights.

    ``CausalSelfAttention(d_model, num_heads, position=None, impl="sdpa", device=None, dtype=None,
    q_norm=None, k_norm=None)``: ``forward(x, token_positions=None)`` maps ``(..., T, d_model)`` to
    ``(..., T, d_model)``.
    """

    def __init__(self, d_model: int, num_heads: int, position: nn.Module | None = None,
                 impl: Literal["sdpa", "scratch"] = "sdpa", device=None, dtype=None,
                 q_norm: nn.Module | None = None, k_norm: nn.Module | None = None) -> None:
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
        if q_norm is not None or k_norm is not None:  # QK-norm; absent by default (no modules, same state_dict)
            self.q_norm, self.k_norm = q_norm or nn.Identity(), k_norm or nn.Identity()

    def forward(self, x: Tensor, token_positions: Tensor | None = None, kv_cache: LayerKVCache | None = None) -> Tensor:
        """``x``: ``(..., T, d_model)``; with ``kv_cache``, ``x`` holds the tokens after the cached ones."""
        qkv = self._stacked_projection(x)
        if token_positions is None and kv_cache is None and self._rotates_in_one_kernel(qkv):
            # training and prefill with RoPE: both rotations in one kernel over the projection
            q, k, v = rotated_qkv_heads(qkv, self.position.complex_rotations(x.shape[-2]), self.num_heads)
            return self.output_proj(self._attend(q, k, v).transpose(-3, -2).flatten(-2))
        q, k, v = self._heads(qkv)
        if token_positions is None and kv_cache is not None:
            token_positions = torch.arange(kv_cache.length, kv_cache.length + x.shape[-2], device=x.device)
        if token_positions is not None:
            token_positions = token_positions.unsqueeze(-2)  # broadcast over the head dim
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)  # before the rotation, so the gains act on unrotated features
        q, k = self.position(q, token_positions), self.position(k, token_positions)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)
        out = self._attend(q, k, v)  # (..., heads, T, head_dim)
        return self.output_proj(out.transpose(-3, -2).flatten(-2))

    def _rotates_in_one_kernel(self, qkv: Tensor) -> bool:
        """Whether :func:`rotated_qkv_heads` applies: a position module that states its rotations
        (RoPE), no QK-norm between the projection and the rotation, plain eager float32 tensors."""
        return (hasattr(self.position, "complex_rotations") and not hasattr(self, "q_norm")
                and qkv.dtype == torch.float32 and plain(qkv) and not torch.compiler.is_compiling())

    def _stacked_projection(self, x: Tensor) -> Tensor:
        """``[q | k | v]`` ``(..., T, 3 d_model)``: the three projections as one matmul against the
        stacked weights (fewer, larger kernels; the stacked weight's gradient splits back into views)."""
        return linear(x, torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight)))

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values ``(..., heads, T, head_dim)``, unrotated."""
        return self._heads(self._stacked_projection(x))

    def _heads(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = qkv.split(self.d_model, dim=-1)
        return self._split_heads(q), self._split_heads(k), self._split_heads(v)

    def _split_heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Causal attention of the last ``q`` positions over all ``k`` positions."""
        if self.impl == "sdpa":
            return fused_causal_attention(q, k, v)
        num_queries = q.shape[-2]
        mask = None if num_queries == 1 else causal_mask(num_queries, k.shape[-2], q.device)
        return scaled_dot_product_attention(q, k, v, mask)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, impl={self.impl!r}"


def fused_causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal attention of the last ``n`` positions (``q``) over all ``m`` (``k``, ``v``) through
    ``torch.nn.functional.scaled_dot_product_attention``.

    ``n == m`` (training, prefill) passes ``is_causal=True``, which the flash and memory-efficient
    kernels take on CUDA (float32 on the CPU runs torch's flash kernel a query block at a time,
    :mod:`modulm_transformer.cpu_attention`, so it skips most of the masked half, on the CPUs where
    that measured faster: :func:`~modulm_transformer.cpu_attention.blocks_pay_off`); a single query
    (a decoding step) sees every key, so it needs no mask; any
    other ``n < m`` passes the bottom-right-aligned boolean mask, which the memory-efficient kernel takes.

    On the CPU, half-precision inputs (bf16 autocast) are attended in float32 and the output cast
    back: torch's CPU flash kernel is slower in bf16 than in float32 (forward and backward of
    bench-tiny's heads, 2 threads: 9.0 against 5.2 ms; bench-small's: 33.9 against 26.8 ms), and
    float32 is the more accurate of the two. Accelerators keep their native half-precision kernels.
    """
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", enabled=False):
            return _sdpa(q.float(), k.float(), v.float()).to(q.dtype)
    return _sdpa(q, k, v)


def _sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    num_queries, num_keys = q.shape[-2], k.shape[-2]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if num_queries == num_keys:
        if block_causal_available(q, k, v) and blocks_pay_off():
            return block_causal_attention(q, k, v)
        return sdpa(q, k, v, is_causal=True)
    if num_queries == 1:
        return sdpa(q, k, v)
    return sdpa(q, k, v, attn_mask=causal_mask(num_queries, num_keys, q.device))
