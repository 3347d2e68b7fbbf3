"""Dataset utilities behind ``modulm data``: dummy data, splitting and inspecting token files.

Each streams through memory-mapped input in chunks (nothing is loaded whole) and writes its
outputs atomically, so a failure leaves no output behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modulm.errors import ModulmError
from modulm_data.checks import CHUNK_TOKENS, count_bytes, token_stats
from modulm_data.tokenfile import NpyWriter, check_output_path, open_token_file, storage_dtype
from modulm_data.tokenizers import byte_lengths, fingerprint


def make_dummy(output: str | os.PathLike, size: int, vocab_size: int, seed: int = 0, dtype: str = "auto") -> Path:
    """Write ``size`` uniformly random ids in ``[0, vocab_size)`` to ``output`` (deterministic in ``seed``)."""
    if size < 1:
        raise ModulmError(f"--size must be >= 1, got {size}")
    if vocab_size < 1:
        raise ModulmError(f"--vocab-size must be >= 1, got {vocab_size}")
    if seed < 0:
        raise ModulmError(f"--seed must be >= 0, got {seed}")
    output = check_output_path(output)
    chosen = storage_dtype(vocab_size, dtype)
    rng = np.random.default_rng(seed)
    with NpyWriter(output, chosen) as writer:
        for start in range(0, size, CHUNK_TOKENS):
            count = min(CHUNK_TOKENS, size - start)
            writer.write(rng.integers(0, vocab_size, size=count, dtype=np.int64))
    return output


@dataclass(frozen=True)
class SplitCounts:
    train: int
    val: int


def _copy(array: np.ndarray, start: int, stop: int, writer: NpyWriter) -> None:
    for begin in range(start, stop, CHUNK_TOKENS):
        writer.write(array[begin : min(begin + CHUNK_TOKENS, stop)])


def split_tokens(input_path: str | os.PathLike, train_output: str | os.PathLike, val_output: str | os.PathLike,
                 val_split: float = 0.1) -> SplitCounts:
    """Write the first tokens of ``input_path`` to ``train_output`` and the last ``val_split`` share to ``val_output``.

    The validation part is ``round(length * val_split)`` tokens; both parts must be non-empty.
    """
    if not 0.0 < val_split < 1.0:
        raise ModulmError(f"--val-split must be between 0 and 1 (exclusive), got {val_split}")
    array = open_token_file(input_path)
    train_path, val_path = check_output_path(train_output), check_output_path(val_output)
    if train_path.resolve() == val_path.resolve():
        raise ModulmError(f"{train_path}: the train and validation outputs must be different files")
    for output in (train_path, val_path):
        if output.resolve() == Path(input_path).resolve():
            raise ModulmError(f"{output}: the output would overwrite the input file")
    n_val = round(len(array) * val_split)
    n_train = len(array) - n_val
    if n_val < 1 or n_train < 1:
        raise ModulmError(
            f"{input_path}: {len(array)} tokens cannot be split with --val-split {val_split} "
            f"({n_train} train, {n_val} validation tokens)"
        )
    with NpyWriter(train_path, array.dtype) as train_writer, NpyWriter(val_path, array.dtype) as val_writer:
        _copy(array, 0, n_train, train_writer)
        _copy(array, n_train, len(array), val_writer)
    return SplitCounts(n_train, n_val)


def inspect_lines(path: str | os.PathLike, tokenizer: Any = None, dtype: str = "auto", show: int = 32) -> list[str]:
    """Human-readable facts about a token file: length, dtype, id range, first tokens (decoded if possible)."""
    array = open_token_file(path, dtype)
    stats = token_stats(Path(path), array)
    head = np.asarray(array[:show], dtype=np.int64).tolist()
    lines = [
        f"file:    {path}",
        f"format:  {'npy' if Path(path).suffix == '.npy' else 'raw'}, {array.dtype.name}, {Path(path).stat().st_size:,} bytes",
        f"tokens:  {stats.length:,}",
        f"ids:     min {stats.min_id}, max {stats.max_id}",
        f"first {len(head)}: {head}",
    ]
    if tokenizer is not None:
        vocab_size = int(tokenizer.vocab_size)
        if stats.min_id < 0 or stats.max_id >= vocab_size:
            lines.append(f"warning: ids outside the tokenizer's vocabulary [0, {vocab_size})")
            return lines
        lines.append(f"decoded: {tokenizer.decode(head)!r}")
        lengths = byte_lengths(tokenizer)
        if lengths is not None:
            total = count_bytes(Path(path), array, lengths, f"bytes:{fingerprint(tokenizer)}")
            lines.append(f"text:    {total:,} bytes, {total / stats.length:.3f} bytes/token")
    return lines
