"""Loading saved tokenizers and measuring how many bytes their tokens stand for."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from modulm.errors import ModulmError


def load_tokenizer(directory: str | os.PathLike, registry: Any = None, component: str | None = None) -> Any:
    """Load a saved tokenizer from ``directory`` with ``load`` of a ``tokenizer`` component.

    ``component`` names it (default: the only tokenizer registered, else ``bpe``); ``registry``
    defaults to a freshly loaded one. No plugin is imported by name: a third-party tokenizer
    serves as well as the built-in one.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ModulmError(f"{directory}: tokenizer directory not found")
    if registry is None:
        from modulm.plugins import load

        registry = load().registry
    names = registry.names("tokenizer")
    name = component or (names[0] if len(names) == 1 else "bpe")
    if ("tokenizer", name) not in registry:
        raise ModulmError(f"{directory}: cannot load a tokenizer: {registry.unknown_message('tokenizer', name)}")
    entry = registry.get("tokenizer", name)
    loader = getattr(entry.factory, "load", None)
    if loader is None:
        raise ModulmError(f"{directory}: tokenizer {name!r} from plugin {entry.plugin!r} cannot load a saved directory")
    try:
        return loader(directory)
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

    Read from the tokenizer's ``vocab`` (id -> bytes) or its ``token_bytes(id)``, which is exact
    even for tokens that hold part of a multi-byte character.
    """
    size = int(getattr(tokenizer, "vocab_size", 0))
    vocab = getattr(tokenizer, "vocab", None)
    if isinstance(vocab, dict) and vocab:
        items = vocab.items()
        size = max(size, max(vocab) + 1)
    elif callable(getattr(tokenizer, "token_bytes", None)) and size:
        items = ((token_id, tokenizer.token_bytes(token_id)) for token_id in range(size))
    else:
        return None
    lengths = np.zeros(size, dtype=np.int64)
    for token_id, token_bytes in items:
        if not isinstance(token_bytes, (bytes, bytearray)):
            return None
        lengths[token_id] = len(token_bytes)
    return lengths
