"""The Transformer language model: embedding -> blocks -> final norm -> LM head.

``TransformerLM(vocab_size, ...)`` works from plain Python with the CS336 parts (pre-norm blocks,
RoPE, SwiGLU, RMSNorm). A recipe swaps any part: the factory :func:`transformer` receives each
nested part as a builder, which this class calls with the sizes it knows.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Mapping

import torch
from annotated_types import Ge, Gt, Interval
from torch import Tensor, nn

from modulm import nested
from modulm.builders import bind
from modulm.constraints import checks, problem
from modulm.errors import ModulmError
from modulm.functional.loss import cross_entropy, linear_cross_entropy
from modulm_transformer import components
from modulm_transformer.accounting import format_accounting, model_accounting
from modulm_transformer.cache import KVCache
from modulm_transformer.layers import Embedding, Linear


class TransformerLM(nn.Module):
    """Causal LM returning logits ``(..., T, vocab_size)`` for token ids ``(..., T)``.

    ``block, attention, ffn, norm, position`` are builders (callables taking the injected keyword
    arguments of their kind); ``None`` picks the CS336 default. ``position`` also receives
    ``theta=rope_theta``. With ``tie_embeddings`` the LM head and the token embedding share one
    matrix (initialised as the LM head). ``logit_softcap > 0`` bounds the logits smoothly:
    ``cap * tanh(logits / cap)`` (0: off). ``init="zero-out"`` zeroes every block's residual
    output projections (see :data:`INITS`), so each block starts as the identity.

    ``TransformerLM(vocab_size, context_length=512, d_model=512, num_layers=6, num_heads=8,
    d_ff=2048, rope_theta=10000.0, tie_embeddings=False, *, block=None, attention=None, ffn=None,
    norm=None, position=None, logit_softcap=0.0, init="cs336")``: int64 ids ``(..., T)`` with
    ``T <= context_length`` -> logits ``(..., T, vocab_size)``.
    """

    def __init__(self, vocab_size: int, context_length: int = 512, d_model: int = 512, num_layers: int = 6,
                 num_heads: int = 8, d_ff: int | None = 2048, rope_theta: float = 10000.0,
                 tie_embeddings: bool = False, *, block=None, attention=None, ffn=None, norm=None,
                 position=None, logit_softcap: float = 0.0, init: str = "cs336") -> None:
        super().__init__()
        if not logit_softcap >= 0:
            raise ValueError(f"logit_softcap must be >= 0 (0 = off), got {logit_softcap}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        block, attention = block or components.prenorm, attention or components.mha
        ffn, norm, position = ffn or components.swiglu, norm or components.rmsnorm, position or components.rope
        self.vocab_size, self.context_length, self.d_model = vocab_size, context_length, d_model
        self.logit_softcap = float(logit_softcap)

        self.token_embeddings = Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(
            block(d_model=d_model, num_heads=num_heads, d_ff=d_ff, context_length=context_length,
                  attention=attention, ffn=ffn, norm=norm, position=bind(position, theta=rope_theta))
            for _ in range(num_layers)
        )
        self.ln_final = norm(d_model=d_model)
        self.lm_head = Linear(d_model, vocab_size)
        if tie_embeddings:
            self.token_embeddings.weight = self.lm_head.weight
        if init == "zero-out":
            zero_output_projections(self.layers)

    def forward(self, token_ids: Tensor, cache: KVCache | None = None, *, targets: Tensor | None = None) -> Tensor:
        """Logits for ``token_ids``; with ``cache``, ``token_ids`` continue the cached sequence.

        With ``targets`` (int ``(..., T)``, no cache) it returns the mean cross-entropy of predicting
        them instead, the LM head and the loss fused (:func:`modulm.functional.linear_cross_entropy`:
        no ``(..., T, vocab_size)`` logits are formed); the trainer calls it so.
        """
        if targets is not None and cache is not None:
            raise ValueError("forward: pass targets (a loss) or a cache (decoding), not both")
        start = 0 if cache is None else cache.position
        end = start + token_ids.shape[-1]
        if end > self.context_length:
            raise ValueError(f"sequence of {end} tokens exceeds context_length={self.context_length}")
        x = self.token_embeddings(token_ids)
        if cache is None:
            for layer in self.layers:
                x = layer(x)
        else:
            positions = torch.arange(start, end, device=token_ids.device)
            for layer, layer_cache in zip(self.layers, cache.layers):
                x = layer(x, positions, kv_cache=layer_cache)
            cache.position = end
        if targets is not None and not self.logit_softcap:
            return linear_cross_entropy(self.ln_final(x), self.lm_head.weight, targets)
        logits = self.lm_head(self.ln_final(x))
        if self.logit_softcap:
            logits = soft_cap(logits, self.logit_softcap)
        if targets is not None:
            with torch.autocast(logits.device.type, enabled=False):  # the loss outside autocast, as the trainer's
                return cross_entropy(logits, targets)
        return logits

    def accounting(self, batch_size: int = 1, context_length: int | None = None, dtype=torch.float32) -> dict:
        """Parameters, FLOPs and memory: see :func:`modulm_transformer.accounting.model_accounting`."""
        return model_accounting(self, batch_size, context_length, dtype)

    def accounting_text(self, batch_size: int = 1, context_length: int | None = None, dtype=torch.float32) -> str:
        """:meth:`accounting` as a text table (what ``modulm info`` prints)."""
        return format_accounting(self.accounting(batch_size, context_length, dtype))

    def new_kv_cache(self, batch_size: int, max_seq_len: int | None = None, device=None, dtype=None) -> KVCache:
        """An empty cache for decoding up to ``max_seq_len`` (default ``context_length``) positions."""
        max_seq_len = self.context_length if max_seq_len is None else max_seq_len
        if max_seq_len > self.context_length:
            raise ValueError(f"max_seq_len={max_seq_len} exceeds context_length={self.context_length}")
        return KVCache(len(self.layers), batch_size, max_seq_len, device, dtype)


def _heads_split_d_model(p: Mapping[str, Any]) -> list:
    """d_model is divisible by num_heads; with RoPE the head width d_model / num_heads is even."""
    d_model, heads = p["d_model"], p["num_heads"]
    if d_model % heads:
        return [problem(f"{d_model} is not divisible by model.num_heads ({heads}): each head gets d_model / num_heads features",
                        key="d_model")]
    position = getattr(getattr(p["position"], "component", None), "factory", None)
    if position is components.rope and (d_model // heads) % 2:
        return [problem(f"RoPE needs an even head width, and d_model / num_heads = {d_model} / {heads} = {d_model // heads}",
                        key="num_heads")]
    return []


@checks(_heads_split_d_model)
def transformer(
    context_length: Annotated[int, Ge(1)] = 512,
    d_model: Annotated[int, Ge(1)] = 512,
    num_layers: Annotated[int, Interval(ge=1, le=4096)] = 6,
    num_heads: Annotated[int, Ge(1)] = 8,
    d_ff: Annotated[int, Ge(1)] | None = 2048,
    rope_theta: Annotated[float, Gt(0)] = 10000.0,
    tie_embeddings: bool = False,
    block: nested("block") = "prenorm",
    attention: nested("attention") = "mha",
    ffn: nested("ffn") = "swiglu",
    norm: nested("norm") = "rmsnorm",
    position: nested("position") = "rope",
    logit_softcap: Annotated[float, Ge(0)] = 0.0,
    init: Literal["cs336", "zero-out"] = "cs336",
    *,
    vocab_size: int,
) -> TransformerLM:
    """Transformer LM (CS336): embedding, residual blocks, final norm, LM head.

    context_length: longest sequence the model accepts (RoPE tables are built up to it)
    d_model: width of the residual stream
    num_layers: number of blocks (at most 4096: even built on the meta device, each costs time)
    num_heads: attention heads (d_model must be divisible by it)
    d_ff: feed-forward hidden width; None -> the ffn's own default
    rope_theta: base of the rotary frequencies, passed to the position component as theta
    tie_embeddings: share one matrix between the token embedding and the LM head
    block: residual block layout
    attention: attention component
    ffn: feed-forward component
    norm: normalisation used in every block and before the LM head
    position: position encoding applied to queries and keys
    logit_softcap: bound the logits smoothly to (-cap, cap) with cap * tanh(logits / cap); 0 = off
    init: "cs336" (every matrix from the CS336 truncated normal) or "zero-out" (attention and FFN output projections start at zero)
    """
    try:
        return TransformerLM(vocab_size, context_length, d_model, num_layers, num_heads, d_ff, rope_theta,
                             tie_embeddings, block=block, attention=attention, ffn=ffn, norm=norm, position=position,
                             logit_softcap=logit_softcap, init=init)
    except ValueError as exc:
        if "init 'zero-out'" in str(exc):  # a user's part without the projection: a recipe mistake
            raise ModulmError(f"model.init = 'zero-out': {exc}") from None
        raise


def soft_cap(logits: Tensor, cap: float) -> Tensor:
    """``cap * tanh(logits / cap)``: about the identity for ``|logits| << cap``, always within ``(-cap, cap)``."""
    return torch.tanh(logits / cap) * cap


#: Whole-model initialisations. "zero-out" zeroes the output projection of every block's attention
#: (``output_proj``) and feed-forward (``w2``): each block then adds nothing to the residual stream at
#: step 0 and starts as the identity (modded-nanogpt, nanochat).
INITS = ("cs336", "zero-out")

#: The attribute holding the residual output projection of a block's attention and feed-forward.
OUTPUT_PROJECTIONS = {"attn": "output_proj", "ffn": "w2"}


def zero_output_projections(layers: nn.ModuleList) -> None:
    """Zero each block's attention ``output_proj`` and feed-forward ``w2`` weights (ValueError if absent)."""
    for index, layer in enumerate(layers):
        for part, attribute in OUTPUT_PROJECTIONS.items():
            projection = getattr(getattr(layer, part, None), attribute, None)
            if not isinstance(getattr(projection, "weight", None), torch.Tensor):
                raise ValueError(f"init 'zero-out' needs layers[{index}].{part}.{attribute}.weight; "
                                 f"this {part} component has no such output projection")
            with torch.no_grad():
                projection.weight.zero_()
