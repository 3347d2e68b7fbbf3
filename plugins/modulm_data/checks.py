"""Checking token files before training, cheaply and once.

:func:`token_stats` reads a token file in fixed-size chunks with ordinary reads (never the
whole file, never through the memory map, so the process's resident memory does not grow) and
records its length and smallest and largest id. The result is cached in a small JSON file beside
the token file (``NAME.modulm-check.json``), keyed by the file's size, modification time and
dtype, so a large file is scanned once, not at every run. :func:`check_ids` turns the stats into
a one-line error naming the first offending id and its offset.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from modulm.errors import ModulmError
from modulm_data.tokenfile import data_offset, write_json_atomic

CHECK_SUFFIX = ".modulm-check.json"
CHUNK_TOKENS = 1 << 22  # 4 Mi tokens per read: 8-32 MiB of buffer
_CACHE_VERSION = 1


@dataclass(frozen=True)
class TokenStats:
    """What a scan of a token file found."""

    length: int
    min_id: int
    max_id: int


def check_file_for(path: Path) -> Path:
    """The cache file beside ``path`` that holds its scan result."""
    return path.with_name(path.name + CHECK_SUFFIX)


def iter_chunks(path: Path, array: np.ndarray, chunk_tokens: int = CHUNK_TOKENS) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(offset, chunk)`` over the tokens behind ``array``, read from ``path`` in chunks.

    The chunks share one buffer: use each before asking for the next.
    """
    dtype = array.dtype
    buffer = np.empty(min(chunk_tokens, len(array)), dtype=dtype)
    view = memoryview(buffer).cast("B")
    with open(path, "rb", buffering=0) as fh:
        fh.seek(data_offset(array))
        offset = 0
        while offset < len(array):
            count = min(len(buffer), len(array) - offset)
            wanted = count * dtype.itemsize
            got = 0
            while got < wanted:
                read = fh.readinto(view[got:wanted])
                if not read:
                    raise ModulmError(f"{path}: file ended after {offset + got // dtype.itemsize} of {len(array)} tokens")
                got += read
            yield offset, buffer[:count]
            offset += count


def _fingerprint(path: Path, array: np.ndarray) -> dict:
    stat = path.stat()
    return {"version": _CACHE_VERSION, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "dtype": array.dtype.str}


def _read_cache(path: Path, key: dict) -> dict | None:
    try:
        cached = json.loads(check_file_for(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(cached, dict) or cached.get("key") != key:
        return None
    return cached


def _write_cache(path: Path, record: dict) -> None:
    try:
        write_json_atomic(check_file_for(path), json.dumps(record, indent=1))
    except OSError:
        pass  # a read-only directory: the scan is simply paid again next time


def token_stats(path: str | os.PathLike, array: np.ndarray, use_cache: bool = True, save: bool = True) -> TokenStats:
    """Length and id range of the token file at ``path`` (opened as ``array``), cached beside it
    (read from the cache when ``use_cache``; a new scan written to it when ``save`` too)."""
    path = Path(path)
    key = _fingerprint(path, array)
    cached = _read_cache(path, key) if use_cache else None
    if cached is not None and "stats" in cached:
        return TokenStats(**cached["stats"])
    low, high = None, None
    for _, chunk in iter_chunks(path, array):
        c_low, c_high = int(chunk.min()), int(chunk.max())
        low = c_low if low is None else min(low, c_low)
        high = c_high if high is None else max(high, c_high)
    stats = TokenStats(len(array), int(low), int(high))
    if use_cache and save:
        remember_stats(path, array, stats)
    return stats


def remember_stats(path: str | os.PathLike, array: np.ndarray, stats: TokenStats) -> None:
    """Write a scan's result to the cache beside ``path`` (a no-op when it is already there)."""
    path = Path(path)
    key = _fingerprint(path, array)
    cached = _read_cache(path, key)
    if cached is not None and cached.get("stats") == asdict(stats):
        return
    record = cached or {"key": key}
    record["stats"] = asdict(stats)
    _write_cache(path, record)


def first_where(path: Path, array: np.ndarray, bad: Callable[[np.ndarray], np.ndarray]) -> tuple[int, int] | None:
    """``(offset, value)`` of the first token for which ``bad`` is true, or None."""
    for offset, chunk in iter_chunks(path, array):
        hits = np.flatnonzero(bad(chunk))
        if hits.size:
            return offset + int(hits[0]), int(chunk[hits[0]])
    return None


def check_ids(path: str | os.PathLike, array: np.ndarray, vocab_size: int, use_cache: bool = True,
              save: bool = True) -> TokenStats:
    """Raise a one-line error unless every id in the file is in ``[0, vocab_size)``.

    The scan is cached only when the file passes (and ``save``): a failed check writes nothing."""
    path = Path(path)
    stats = token_stats(path, array, use_cache, save=False)
    if stats.min_id < 0:
        found = first_where(path, array, lambda c: c < 0)
        offset, value = found if found else ("?", stats.min_id)
        raise ModulmError(f"{path}: token id {value} at offset {offset} is negative")
    if stats.max_id >= vocab_size:
        found = first_where(path, array, lambda c: c >= vocab_size)
        offset, value = found if found else ("?", stats.max_id)
        raise ModulmError(f"{path}: token id {value} at offset {offset} >= vocab_size {vocab_size}")
    if use_cache and save:
        remember_stats(path, array, stats)
    return stats


def count_bytes(path: str | os.PathLike, array: np.ndarray, byte_lengths: np.ndarray, label: str, use_cache: bool = True) -> int:
    """Total UTF-8 bytes the tokens decode to, given each id's byte length; cached under ``label``."""
    path = Path(path)
    key = _fingerprint(path, array)
    cached = _read_cache(path, key) if use_cache else None
    if cached is not None and label in cached.get("bytes", {}):
        return int(cached["bytes"][label])
    total = 0
    for _, chunk in iter_chunks(path, array):
        total += int(byte_lengths[chunk].sum(dtype=np.int64))
    if use_cache:
        record = cached or {"key": key}
        record.setdefault("bytes", {})[label] = total
        _write_cache(path, record)
    return total
