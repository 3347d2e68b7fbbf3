"""Key/value cache for incremental decoding: each new token costs attention over the cache only."""

from __future__ import annotations

import torch
from torch import Tensor


class LayerKVCache:
    """The keys and values one attention layer has seen, filled left to right.

    Buffers are allocated on the first :meth:`append`, shaped like the keys it receives with the
    sequence dim grown to ``max_seq_len`` (so any head layout works).
    """

    def __init__(self, max_seq_len: int, device=None, dtype=None) -> None:
        self.max_seq_len = max_seq_len
        self.device, self.dtype = device, dtype
        self.keys: Tensor | None = None
        self.values: Tensor | None = None
        self.length = 0

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k``, ``v`` ``(..., T, d)`` after the cached positions; return all keys and values."""
        end = self.length + k.shape[-2]
        if end > self.max_seq_len:
            raise ValueError(f"KV cache overflow: {end} positions > max_seq_len={self.max_seq_len}")
        if self.keys is None:
            self.keys = self._buffer(k)
            self.values = self._buffer(v)
        self.keys[..., self.length:end, :] = k
        self.values[..., self.length:end, :] = v
        self.length = end
        return self.keys[..., :end, :], self.values[..., :end, :]

    def _buffer(self, like: Tensor) -> Tensor:
        shape = (*like.shape[:-2], self.max_seq_len, like.shape[-1])
        return torch.zeros(shape, device=self.device or like.device, dtype=self.dtype or like.dtype)


class KVCache:
    """Per-layer key/value caches of one model plus ``position``, the number of tokens processed.

    Made by ``TransformerLM.new_kv_cache``; ``TransformerLM.forward(token_ids, cache=cache)``
    reads and advances it.
    """

    def __init__(self, num_layers: int, batch_size: int, max_seq_len: int, device=None, dtype=None) -> None:
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len
        self.layers = [LayerKVCache(max_seq_len, device, dtype) for _ in range(num_layers)]
        self.position = 0

    def reset(self) -> None:
        """Forget every cached position (buffers are kept for reuse)."""
        self.position = 0
        for layer in self.layers:
            layer.length = 0
