"""Reading a training corpus: safe cut points, streamed UTF-8 decoding, pre-token counting.

A file is cut into byte ranges that worker processes pre-tokenize independently. A cut is made
only where pre-tokenizing the two sides apart gives the same pre-tokens as the whole:

* at the start of a special token, when no special token can overlap another (no suffix of one
  is a prefix of another, none contains another), so no special-token match spans the cut;
* after a newline that sits between two printable ASCII characters (``x\\nY``), when no special
  token contains a newline: the pre-token before ends at the newline, which is a pre-token of
  its own on either side, and the text after starts afresh.

Each range is read in blocks and decoded incrementally, so no worker holds its range as one string.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

from modulm.errors import ModulmError

from modulm_bpe.pretokenize import PretokenStream

BLOCK_BYTES = 1 << 20
_SEARCH_BYTES = 1 << 16
_NEWLINE_CUT = rb"[\x21-\x7e]\n[\x21-\x7e]"


def overlap_free(special_tokens: Sequence[str]) -> bool:
    """True when no special token contains another or overlaps one (itself included) at its ends."""
    for s in special_tokens:
        for t in special_tokens:
            if s != t and t in s:
                return False
            for k in range(1, min(len(s), len(t))):
                if s[-k:] == t[:k]:
                    return False
    return True


def cut_pattern(special_tokens: Sequence[str]) -> re.Pattern | None:
    """The bytes pattern whose matches mark safe cuts (see the module docstring), or None."""
    alternatives = []
    if not any("\n" in t for t in special_tokens):
        alternatives.append(b"(?P<nl>" + _NEWLINE_CUT + b")")
    if special_tokens and overlap_free(special_tokens):
        alternatives.extend(re.escape(t.encode("utf-8")) for t in special_tokens)
    return re.compile(b"|".join(alternatives)) if alternatives else None


def _cut_position(match: re.Match) -> int:
    return match.start() + 2 if match.group("nl") is not None else match.start()


def find_cut(handle, begin: int, end: int, pattern: re.Pattern, overlap: int) -> int | None:
    """The first safe cut in ``(begin, end)`` of an open binary file, or None."""
    position = max(begin - 2, 0)
    while position < end:
        handle.seek(position)
        window = handle.read(min(_SEARCH_BYTES, end - position) + overlap)
        for match in pattern.finditer(window):
            cut = position + _cut_position(match)
            if cut > begin:
                return cut if cut < end else None
        if len(window) <= overlap:
            return None
        position += len(window) - overlap
    return None


def byte_ranges(path: str | os.PathLike, pieces: int, special_tokens: Sequence[str]) -> list[tuple[int, int]]:
    """Cut a file into at most ``pieces`` byte ranges at safe cuts (fewer if cuts are missing)."""
    size = os.path.getsize(path)
    pattern = cut_pattern(special_tokens)
    if pieces <= 1 or size == 0 or pattern is None:
        return [(0, size)]
    overlap = max([len(t.encode("utf-8")) for t in special_tokens] + [3])
    cuts = [0]
    with open(path, "rb") as handle:
        for i in range(1, pieces):
            target = max(size * i // pieces, cuts[-1])
            cut = find_cut(handle, target, size * (i + 1) // pieces, pattern, overlap)
            if cut is not None and cut > cuts[-1]:
                cuts.append(cut)
    cuts.append(size)
    return list(zip(cuts[:-1], cuts[1:]))


def iter_decoded(path: str | os.PathLike, begin: int, end: int, block: int = BLOCK_BYTES,
                 allow_partial_end: bool = False) -> Iterator[str]:
    """Decode bytes ``[begin, end)`` of a UTF-8 file in blocks; bad UTF-8 is an error with its offset.

    ``allow_partial_end`` drops a character cut off by ``end`` instead of reporting it.
    """
    pending = b""
    with open(path, "rb") as handle:
        handle.seek(begin)
        position = begin
        while position < end:
            data = handle.read(min(block, end - position))
            if not data:
                break
            data_start = position - len(pending)
            position += len(data)
            data, pending = pending + data, b""
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                truncated = exc.end == len(data) and exc.reason == "unexpected end of data"
                if truncated and (position < end or allow_partial_end):
                    text, pending = data[: exc.start].decode("utf-8"), data[exc.start:]
                else:
                    raise _utf8_error(path, data_start + exc.start, data[exc.start: exc.end]) from None
            yield text
    if pending and not allow_partial_end:
        raise _utf8_error(path, end - len(pending), pending)


def _utf8_error(path, offset: int, bad: bytes) -> ModulmError:
    return ModulmError(f"{path}: not valid UTF-8 at byte offset {offset} (bytes {bad.hex(' ')})")


def count_range(path: str, begin: int, end: int, special_tokens: Sequence[str]) -> Counter:
    """Pre-token counts of bytes ``[begin, end)`` of ``path``; special tokens are left out."""
    counts: Counter = Counter()
    stream = PretokenStream(special_tokens)
    for text in iter_decoded(path, begin, end):
        for pretokens, _special in stream.feed(text):
            counts.update(pretokens)
    for pretokens, _special in stream.finish():
        counts.update(pretokens)
    return counts


def count_job(job: tuple[str, int, int, tuple[str, ...]]) -> tuple[Counter, int]:
    """Worker entry point: ``(counts, bytes read)`` of one byte range."""
    path, begin, end, special_tokens = job
    return count_range(path, begin, end, special_tokens), end - begin


def check_inputs(input_path) -> list[Path]:
    """Normalise one path or a list of paths to existing files; a missing one is a one-line error."""
    items = list(input_path) if isinstance(input_path, (list, tuple)) else [input_path]
    if not items:
        raise ModulmError("no input files given")
    paths = []
    for item in items:
        path = Path(item)
        if not path.is_file():
            raise ModulmError(f"input file not found: {path}")
        paths.append(path)
    return paths
