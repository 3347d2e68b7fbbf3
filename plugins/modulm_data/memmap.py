"""The ``memmap`` data source, and :class:`TokenSource`, the sampling machinery it shares with ``text``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import numpy as np
import torch
from annotated_types import Interval, MinLen

from modulm.constraints import checks, problem
from modulm.errors import ModulmError
from modulm_data.batching import FileWindows, sample_starts, to_device
from modulm_data.checks import check_ids, count_bytes, remember_stats
from modulm_data.tokenfile import open_token_file
from modulm_data.tokenizers import byte_lengths, fingerprint, load_tokenizer

SPLITS = ("train", "val")
MAX_VOCAB = 2**32  # the largest vocabulary whose ids a uint32 token file (what `auto` writes) holds
_SAMPLE_TOKENS = 1 << 20  # tokens decoded to estimate bytes/token when exact lengths are unknown


def split_seed(seed: int, split: str) -> int:
    """Each split draws from its own generator, so evaluating never shifts the training batches."""
    return (int(seed) + 7919 * SPLITS.index(split)) % (2**63)


class TokenSource:
    """Named splits of memory-mapped token arrays, sampled with :func:`get_batch`.

    Each split has its own ``torch.Generator`` (seeded from ``seed``); ``state_dict()`` holds
    their states, so a resumed run draws exactly the batches it would have drawn. Batches are
    the ones :func:`~modulm_data.batching.get_batch` draws from the same generator, read with
    :class:`~modulm_data.batching.FileWindows` so that resident memory stays flat.
    """

    def __init__(self, files: dict[str, Path], vocab_size: int, seed: int = 0, tokenizer: Any = None) -> None:
        self.files = dict(files)
        self.vocab_size = int(vocab_size)
        self.tokenizer = tokenizer
        self._arrays: dict[str, np.ndarray] = {}
        self._readers: dict[str, FileWindows] = {}
        self.splits = tuple(s for s in SPLITS if s in self.files)
        self._generators = {split: torch.Generator().manual_seed(split_seed(seed, split)) for split in self.splits}
        self._bytes_per_token: dict[str, float | None] = {}
        self._rank, self._world_size = 0, 1
        self._unsaved_stats: dict[str, Any] = {}  # scans cached once validate() passed: a failed start writes nothing

    # -- the DataSource contract ------------------------------------------------------------
    def tokens(self, split: str) -> np.ndarray:
        """The split's tokens as a read-only memory-mapped 1-D array."""
        if split not in self.files:
            raise ModulmError(f"data: no {split!r} split; available: {', '.join(self.splits)}")
        if split not in self._arrays:
            self._arrays[split] = self._open(split)
        return self._arrays[split]

    def validate(self, context_length: int) -> None:
        """Raise a one-line error unless every split holds at least ``context_length + 1`` tokens.

        Called by the trainer's preflight, before anything is written; once every check passed, the
        id scans made when the files were opened are cached beside them.
        """
        for split in self.splits:
            self._check_length(split, context_length)
        for split, stats in self._unsaved_stats.items():
            remember_stats(self.files[split], self.tokens(split), stats)
        self._unsaved_stats.clear()

    def _check_ids(self) -> None:
        """Every split's ids below vocab_size (one-line error otherwise); the scans wait for validate()."""
        for split in self.splits:
            self._unsaved_stats[split] = check_ids(self.files[split], self.tokens(split), self.vocab_size, save=False)

    def get_batch(self, split: str, batch_size: int, context_length: int, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` int64 ``(batch_size, context_length)`` windows of ``split`` on ``device``."""
        self._check_length(split, context_length)
        if split not in self._readers:
            self._readers[split] = FileWindows(self.files[split], self.tokens(split))
        rows = slice(self._rank * batch_size, (self._rank + 1) * batch_size)
        starts = sample_starts(len(self.tokens(split)), batch_size * self._world_size, context_length, self._generators[split])[rows]
        return to_device(self._readers[split].read(starts, context_length + 1), device)

    def shard(self, rank: int, world_size: int) -> None:
        """Serve process ``rank`` of ``world_size`` its rows of each global batch.

        Afterwards ``get_batch(split, b, ...)`` draws the starts of a global batch of ``b *
        world_size`` rows from the split's generator (the same draw on every rank) and returns rows
        ``rank * b`` to ``(rank + 1) * b``: the processes together see exactly the batch that one
        process with batch ``b * world_size`` would, and every rank's generator state stays equal.
        """
        if not 0 <= rank < world_size:
            raise ModulmError(f"data: rank {rank} is outside a world of {world_size} processes")
        self._rank, self._world_size = int(rank), int(world_size)

    def bytes_per_token(self, split: str) -> float | None:
        """Mean UTF-8 bytes per token of ``split``, or None without a tokenizer."""
        if split not in self._bytes_per_token:
            self._bytes_per_token[split] = self._measure_bytes_per_token(split)
        return self._bytes_per_token[split]

    def state_dict(self) -> dict:
        return {"generators": {split: gen.get_state() for split, gen in self._generators.items()}}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("generators") if isinstance(state, dict) else None
        if not isinstance(saved, dict) or set(saved) != set(self._generators):
            raise ModulmError(
                f"data: checkpoint holds sampler state for splits {sorted(saved or {})}, this source has {list(self.splits)}"
            )
        for split, gen_state in saved.items():
            self._generators[split].set_state(gen_state)

    def describe(self) -> list[str]:
        lines = []
        for split in self.splits:
            array = self.tokens(split)
            lines.append(f"{split}: {self.files[split]} ({len(array):,} tokens, {array.dtype.name})")
        return lines

    # -- helpers ----------------------------------------------------------------------------
    def _open(self, split: str) -> np.ndarray:
        return open_token_file(self.files[split])

    def _check_length(self, split: str, context_length: int) -> None:
        length = len(self.tokens(split))
        if length < context_length + 1:
            raise ModulmError(
                f"{self.files[split]}: {split} split has {length} tokens, too few for context_length "
                f"{context_length} (needs at least {context_length + 1})"
            )

    def _measure_bytes_per_token(self, split: str) -> float | None:
        if self.tokenizer is None:
            return None
        array = self.tokens(split)
        lengths = byte_lengths(self.tokenizer)
        if lengths is not None and len(lengths) >= self.vocab_size:
            total = count_bytes(self.files[split], array, lengths, f"bytes:{fingerprint(self.tokenizer)}")
            return total / len(array)
        sample = np.asarray(array[:_SAMPLE_TOKENS], dtype=np.int64).tolist()
        return len(self.tokenizer.decode(sample).encode("utf-8")) / len(sample)


def vocab_fits_dtype(p: Mapping[str, Any], vocab_size: Any) -> list:
    """An explicit token dtype must hold every id below ``vocab_size`` (shared with ``text``)."""
    dtype = p["dtype"]
    if dtype == "auto" or not isinstance(vocab_size, int):
        return []
    largest = int(np.iinfo(np.dtype(dtype)).max)
    if vocab_size - 1 > largest:
        return [problem(f"{dtype} holds token ids up to {largest}, too few for vocab_size {vocab_size}", key="dtype")]
    return []


def _vocab_fits_memmap_dtype(p: Mapping[str, Any]) -> list:
    """an explicit dtype holds every id below vocab_size."""
    return vocab_fits_dtype(p, p["vocab_size"])


@checks(_vocab_fits_memmap_dtype)
class MemmapSource(TokenSource):
    """Token files (.npy, or raw .bin with an explicit dtype), memory-mapped and sampled uniformly.

    train: path of the training token file (.npy, or a raw file with dtype set)
    vocab_size: size of the vocabulary; every token id must be below it (and fit an explicit dtype)
    val: path of the validation token file (optional)
    dtype: "auto" (the .npy header's dtype) or uint16, uint32, int32, int64; required for raw files, must match a .npy header
    tokenizer: directory of the saved tokenizer that made the ids (optional; gives bits per byte and decoded samples)
    """

    def __init__(
        self,
        train: Annotated[str, MinLen(1)],
        vocab_size: Annotated[int, Interval(ge=1, le=MAX_VOCAB)],
        val: Annotated[str, MinLen(1)] | None = None,
        dtype: Literal["auto", "uint16", "uint32", "int32", "int64"] = "auto",
        tokenizer: Annotated[str, MinLen(1)] | None = None,
        *,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if vocab_size < 1:
            raise ModulmError(f"data.vocab_size must be >= 1, got {vocab_size}")
        files = {"train": Path(train)}
        if val is not None:
            files["val"] = Path(val)
        self.dtype = dtype
        self.tokenizer_dir = Path(tokenizer) if tokenizer else None
        loaded = load_tokenizer(self.tokenizer_dir) if self.tokenizer_dir else None
        super().__init__(files, vocab_size, seed, loaded)
        self._check_ids()  # fail before training: missing, empty, wrong dtype, bad ids

    def _open(self, split: str) -> np.ndarray:
        return open_token_file(self.files[split], self.dtype)

    def describe(self) -> list[str]:
        head = f"data: memmap, vocab_size {self.vocab_size}"
        if self.tokenizer_dir:
            head += f", tokenizer {self.tokenizer_dir}"
        return [head] + ["  " + line for line in super().describe()]
