"""Loading saved tokenizers and measuring how many bytes their tokens stand for."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from modulm.errors import ModulmError


def load_tokenizer(directory: str | os.PathLike) -> Any:
    """Load a tokenizer saved by the built-in BPE plugin from ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModulmError(f"{directory}: tokenizer directory not found")
    try:
        from modulm_bpe import Tokenizer
    except ImportError as exc:
        raise ModulmError(f"{directory}: cannot load a tokenizer: the modulm_bpe plugin is unavailable ({exc})") from None
    try:
        return Tokenizer.load(directory)
    except ModulmError:
        raise
    except Exception as exc:  # a corrupt or foreign directory
        raise ModulmError(f"{directory}: cannot load the tokenizer: {exc}") from None


def fingerprint(tokenizer: Any) -> str:
    """A content hash of a trained tokenizer: its own ``fingerprint()``, else a hash of its saved files."""
    own = getattr(tokenizer, "fingerprint", None)
    if callable(own):
        return str(own())
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                digest.update(str(path.relative_to(tmp)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def byte_lengths(tokenizer: Any) -> np.ndarray | None:
    """UTF-8 byte length of each token id (an int64 array of ``vocab_size``), or None if unknown.

    Uses the tokenizer's ``vocab`` (id -> bytes) when it has one, which is exact even for tokens
    that hold part of a multi-byte character.
    """
    vocab = getattr(tokenizer, "vocab", None)
    if not isinstance(vocab, dict) or not vocab:
        return None
    size = max(int(getattr(tokenizer, "vocab_size", 0)), max(vocab) + 1)
    lengths = np.zeros(size, dtype=np.int64)
    for token_id, token_bytes in vocab.items():
        if not isinstance(token_bytes, (bytes, bytearray)):
            return None
        lengths[token_id] = len(token_bytes)
    return lengths
