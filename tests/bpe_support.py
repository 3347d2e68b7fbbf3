"""Helpers for the BPE tests: the shared corpora and GPT-2 files, read straight from their .xz."""

from __future__ import annotations

import functools
import lzma
from pathlib import Path

import pytest

#: ``shared/`` lies beside the repository (in CI too: a fresh clone with shared/ next to it).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: Byte-identical copies shipped in the repository, used when shared/ is not beside it.
_DATA = Path(__file__).resolve().parents[1] / "data"
SHIPPED_DATA = {
    "tinystories_v2_train_head2M.txt": _DATA / "tinystories",
    "tinyshakespeare.txt": _DATA / "tinyshakespeare",
    "gpt2_vocab.json": _DATA / "gpt2",
    "gpt2_merges.txt": _DATA / "gpt2",
}


def shared_file(name: str) -> Path:
    for directory in (SHARED_DATA, SHIPPED_DATA.get(name)):
        if directory is not None and (directory / f"{name}.xz").is_file():
            return directory / f"{name}.xz"
    pytest.skip(f"shared corpus {SHARED_DATA / name}.xz is not available (it lies in ../shared/data beside the repository)")


@functools.lru_cache(maxsize=None)
def corpus_text(name: str) -> str:
    """A whole shared corpus, decompressed (cached: each is read once per test session)."""
    with lzma.open(shared_file(name), "rt", encoding="utf-8", newline="") as handle:
        return handle.read()


def corpus_slice(name: str, chars: int) -> str:
    return corpus_text(name)[:chars]


@functools.lru_cache(maxsize=None)
def _gpt2_bytes(name: str) -> bytes:
    with lzma.open(shared_file(name), "rb") as handle:
        return handle.read()


def gpt2_files(directory: Path) -> tuple[Path, Path]:
    """Write GPT-2's vocab.json and merges.txt (as shipped) into ``directory``."""
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    vocab.write_bytes(_gpt2_bytes("gpt2_vocab.json"))
    merges.write_bytes(_gpt2_bytes("gpt2_merges.txt"))
    return vocab, merges
