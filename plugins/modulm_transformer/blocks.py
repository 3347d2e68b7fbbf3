"""Residual transformer blocks: pre-norm (CS336 default) and post-norm (the original Transformer)."""

from __future__ import annotations

from torch import Tensor, nn


class _Block(nn.Module):
    """Holds the four parts of a block under the fixed state-dict names ``attn, ffn, ln1, ln2``."""

    def __init__(self, attn: nn.Module, ffn: nn.Module, ln1: nn.Module, ln2: nn.Module) -> None:
        super().__init__()
        self.attn, self.ln1, self.ffn, self.ln2 = attn, ln1, ffn, ln2  # the reference's key order

    def _attention(self, x: Tensor, token_positions: Tensor | None, kv_cache) -> Tensor:
        if kv_cache is None:  # attentions without cache support still work without a cache
            return self.attn(x, token_positions)
        return self.attn(x, token_positions, kv_cache=kv_cache)


class PreNormBlock(_Block):
    """``x + Attn(ln1(x))``, then ``· + FFN(ln2(·))``.

    ``PreNormBlock(attn, ffn, ln1, ln2)`` takes the four built parts (modules);
    ``forward(x, token_positions=None)`` maps ``(..., T, d_model)`` to ``(..., T, d_model)``.
    """

    def forward(self, x: Tensor, token_positions: Tensor | None = None, kv_cache=None) -> Tensor:
        x = x + self._attention(self.ln1(x), token_positions, kv_cache)
        return x + self.ffn(self.ln2(x))


class PostNormBlock(_Block):
    """``ln1(x + Attn(x))``, then ``ln2(· + FFN(·))``.

    ``PostNormBlock(attn, ffn, ln1, ln2)``: ``(..., T, d_model) -> (..., T, d_model)``.
    """

    def forward(self, x: Tensor, token_positions: Tensor | None = None, kv_cache=None) -> Tensor:
        x = self.ln1(x + self._attention(x, token_positions, kv_cache))
        return self.ln2(x + self.ffn(x))
