"""The registered factories of the transformer's parts: recipe parameters and injected names.

Each factory's positional-or-keyword parameters are what a recipe may set; keyword-only ones are
injected by the parent component (see ``modulm.kinds.INJECTED``). The modules they build live in
``layers``, ``norms``, ``ffn``, ``position``, ``attention`` and ``blocks``.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Callable, Literal

from annotated_types import Gt
from torch import nn

from modulm import nested

from modulm_transformer.attention import CausalSelfAttention
from modulm_transformer.blocks import PostNormBlock, PreNormBlock
from modulm_transformer.ffn import ReLU2FFN, SiLUFFN, SwiGLU
from modulm_transformer.norms import Identity, RMSNorm
from modulm_transformer.position import NoPositionalEmbedding, RotaryPositionalEmbedding

Builder = Callable[..., nn.Module]


# -- blocks -----------------------------------------------------------------------------------
def _block_parts(d_model: int, num_heads: int, d_ff: int | None, context_length: int,
                 attention: Builder, ffn: Builder, norm: Builder, position: Builder) -> tuple[nn.Module, ...]:
    attn = attention(d_model=d_model, num_heads=num_heads, context_length=context_length, position=position)
    return attn, ffn(d_model=d_model, d_ff=d_ff), norm(d_model=d_model), norm(d_model=d_model)


def prenorm(*, d_model: int, num_heads: int, d_ff: int | None, context_length: int,
            attention: Builder, ffn: Builder, norm: Builder, position: Builder) -> PreNormBlock:
    """Pre-norm residual block: x + Attn(Norm(x)), then + FFN(Norm(.)) (CS336 default)."""
    return PreNormBlock(*_block_parts(d_model, num_heads, d_ff, context_length, attention, ffn, norm, position))


def postnorm(*, d_model: int, num_heads: int, d_ff: int | None, context_length: int,
             attention: Builder, ffn: Builder, norm: Builder, position: Builder) -> PostNormBlock:
    """Post-norm residual block: Norm(x + Attn(x)), then Norm(. + FFN(.)) (CS336 ablation)."""
    return PostNormBlock(*_block_parts(d_model, num_heads, d_ff, context_length, attention, ffn, norm, position))


def _is_part(part) -> bool:
    """Whether an optional nested part is switched on: not None, "none" or the "none" component."""
    if part is None or isinstance(part, str):
        if part not in (None, "none"):
            raise ValueError(f"pass a builder, not the name {part!r}, outside a recipe")
        return False
    return getattr(part, "name", None) != "none"


# -- attention --------------------------------------------------------------------------------
def mha(impl: Literal["sdpa", "scratch"] = "sdpa", qk_norm: nested("norm") = "none", *, d_model: int,
        num_heads: int, context_length: int, position: Builder | None = None) -> CausalSelfAttention:
    """Causal multi-head self-attention with q/k/v/output projections and a position encoding.

    impl: "sdpa" (torch's fused attention kernel) or "scratch" (modulm.functional; same result, slower)
    qk_norm: QK-norm: the norm applied to each head's queries and keys before the position encoding ("rmsnorm"; "none" = off)
    """
    head_dim = d_model // num_heads
    encoding = position(d_k=head_dim, context_length=context_length) if position is not None else None
    norms = {}
    if _is_part(qk_norm):
        norms = {"q_norm": qk_norm(d_model=head_dim), "k_norm": qk_norm(d_model=head_dim)}
    return CausalSelfAttention(d_model, num_heads, position=encoding, impl=impl, **norms)


# -- feed-forward -----------------------------------------------------------------------------
def swiglu(*, d_model: int, d_ff: int | None = None) -> SwiGLU:
    """SwiGLU feed-forward W2(SiLU(W1 x) * W3 x); d_ff None -> 8/3 d_model rounded to 64."""
    return SwiGLU(d_model, d_ff)


def silu_ffn(*, d_model: int, d_ff: int | None = None) -> SiLUFFN:
    """Ungated SiLU feed-forward W2(SiLU(W1 x)); d_ff None -> 4 d_model (CS336 ablation)."""
    return SiLUFFN(d_model, d_ff)


def silu(*, d_model: int, d_ff: int | None = None) -> SiLUFFN:
    """Deprecated alias of :func:`silu_ffn`, removed in the next release.

    Renamed because ``silu`` is also the activation :func:`modulm.functional.silu`.
    """
    warnings.warn("modulm_transformer.components.silu is deprecated: use silu_ffn (the feed-forward factory; "
                  "modulm.functional.silu is the activation)", DeprecationWarning, stacklevel=2)
    return silu_ffn(d_model=d_model, d_ff=d_ff)


def relu2(*, d_model: int, d_ff: int | None = None) -> ReLU2FFN:
    """Squared-ReLU feed-forward W2(ReLU(W1 x)^2); d_ff None -> 4 d_model."""
    return ReLU2FFN(d_model, d_ff)


# -- norms ------------------------------------------------------------------------------------
def rmsnorm(eps: Annotated[float, Gt(0)] = 1e-5, gain: bool = True, *, d_model: int) -> RMSNorm:
    """RMSNorm with a learned gain, computed in float32.

    eps: added to the mean square before the square root
    gain: learn a gain per feature (false: no parameters, x / rms(x))
    """
    return RMSNorm(d_model, eps=eps, gain=gain)


def no_norm(*, d_model: int | None = None) -> Identity:
    """No normalisation (identity, no parameters): the layer-norm ablation."""
    return Identity()


# -- position ---------------------------------------------------------------------------------
def rope(*, d_k: int, context_length: int, theta: float = 10000.0) -> RotaryPositionalEmbedding:
    """Rotary position embedding on adjacent feature pairs; theta is the model's rope_theta."""
    return RotaryPositionalEmbedding(theta, d_k, context_length)


def nope(*, d_k: int | None = None, context_length: int | None = None, theta: float | None = None) -> NoPositionalEmbedding:
    """No position encoding (NoPE): only the causal mask orders tokens (CS336 ablation)."""
    return NoPositionalEmbedding()
