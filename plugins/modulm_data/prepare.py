"""Encoding text files to a ``.npy`` token file, in parallel worker processes.

The text is streamed in chunks of about :data:`CHUNK_CHARS` characters. A chunk ends right after
a document separator when there is one, else after a newline, and never inside a special
token, so encoding chunk by chunk gives the same ids as encoding each document whole (a
document longer than a chunk may be cut at a newline, which can only change how the text
around that cut is merged; decoding still gives the text back exactly). Chunks are encoded by
``workers`` processes, each holding a copy of the tokenizer, and written in order through
:class:`~modulm_data.tokenfile.NpyWriter`, so the output appears only when complete.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from modulm.errors import ModulmError
from modulm.machine import cpu_budget
from modulm_data.documents import read_blocks
from modulm_data.tokenfile import NpyWriter

CHUNK_CHARS = 1 << 18


@dataclass(frozen=True)
class PrepareResult:
    """What an encoding pass wrote."""

    path: Path
    tokens: int
    bytes: int
    dtype: str

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.tokens if self.tokens else float("nan")


def _safe_cut(buffer: str, cut: int, specials: Sequence[str]) -> int:
    """Move ``cut`` left until no special token occurrence straddles it."""
    moved = True
    while moved and cut > 0:
        moved = False
        for special in specials:
            start = buffer.find(special, max(0, cut - len(special) + 1))
            if 0 <= start < cut < start + len(special):
                cut, moved = start, True
    return cut


def _cut_point(buffer: str, limit: int, separator: str | None, specials: Sequence[str]) -> int:
    if separator:
        found = buffer.rfind(separator, 0, limit)
        if found >= 0:
            return found + len(separator)
    newline = buffer.rfind("\n", 0, limit)
    cut = _safe_cut(buffer, newline + 1 if newline >= 0 else limit, specials)
    if cut > 0:
        return cut
    # A special token sits at the very start: cut after it instead.
    first = min((len(s) for s in specials if buffer.startswith(s)), default=limit)
    return first


def text_chunks(
    paths: Sequence[str | os.PathLike],
    separator: str | None = "<|endoftext|>",
    specials: Sequence[str] = (),
    chunk_chars: int = CHUNK_CHARS,
) -> Iterator[str]:
    """Yield the text of ``paths``, in order, as chunks that are safe to encode separately."""
    specials = tuple(s for s in {*specials, *([separator] if separator else [])} if s)
    tail = max((len(s) for s in specials), default=1)
    for path in paths:
        buffer = ""
        for block in read_blocks(path, chunk_chars):
            buffer += block
            while len(buffer) >= chunk_chars + tail:
                cut = _cut_point(buffer, chunk_chars, separator, specials)
                yield buffer[:cut]
                buffer = buffer[cut:]
        if buffer:
            yield buffer


# -- worker side ------------------------------------------------------------------------------

_worker_tokenizer: Any = None


def _init_worker(tokenizer: Any) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode(tokenizer: Any, text: str, dtype: str) -> tuple[np.ndarray, int]:
    ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
    return ids.astype(dtype, copy=False), len(text.encode("utf-8"))


def _encode_in_worker(text: str, dtype: str) -> tuple[np.ndarray, int]:
    return _encode(_worker_tokenizer, text, dtype)


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork starts workers at once and without re-importing torch; the workers only tokenize.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def encode_chunks(chunks: Iterable[str], tokenizer: Any, dtype: str, workers: int = 1) -> Iterator[tuple[np.ndarray, int]]:
    """Yield ``(ids, utf8_bytes)`` for each chunk, in order, encoded by ``workers`` processes."""
    if workers <= 1:
        for chunk in chunks:
            yield _encode(tokenizer, chunk, dtype)
        return
    # Encoding once here builds whatever the tokenizer makes lazily (the BPE plugin compiles its
    # pre-tokenization pattern on first use), so forked workers inherit it instead of each
    # building it again.
    tokenizer.encode("warm up: 1 2 3")
    with ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_init_worker, initargs=(tokenizer,)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.submit(_encode_in_worker, chunk, dtype))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def default_workers() -> int:
    """Worker processes to use when none are asked for: the CPUs this process can keep busy (its
    affinity and cgroup CPU quota, :func:`modulm.machine.cpu_budget`), at most 8."""
    return min(cpu_budget(), 8)


def _progress(total: int | None, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr, disable=None, leave=False)


def encode_files(
    paths: Sequence[str | os.PathLike],
    tokenizer: Any,
    output: str | os.PathLike,
    dtype: np.dtype | str,
    workers: int | None = None,
    separator: str | None = "<|endoftext|>",
    desc: str = "encoding",
) -> PrepareResult:
    """Encode the text of ``paths`` with ``tokenizer`` into the ``.npy`` file ``output``, atomically."""
    dtype = np.dtype(dtype).name
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ModulmError(f"workers must be >= 1, got {workers}")
    specials = list(getattr(tokenizer, "special_tokens", []) or [])
    sizes = [Path(p).stat().st_size for p in paths]
    total = None if any(Path(p).suffix == ".xz" for p in paths) else sum(sizes)
    total_bytes = 0
    with NpyWriter(output, dtype) as writer, _progress(total, desc) as bar:
        for ids, nbytes in encode_chunks(text_chunks(paths, separator, specials), tokenizer, dtype, workers):
            writer.write(ids)
            total_bytes += nbytes
            bar.update(nbytes)
    return PrepareResult(Path(output), writer.length, total_bytes, dtype)
