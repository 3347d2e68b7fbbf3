"""Reading raw text files (plain or ``.xz``) in blocks, and splitting them by document.

A *document* ends with the separator (``<|endoftext|>`` by default), which belongs to it; the
text after a file's last separator is a document of its own if it holds anything but
whitespace, and is otherwise appended to the file's last document. The end of a file always
ends a document. Splitting therefore never changes the text: the train part followed by the
validation part is the input, byte for byte.
"""

from __future__ import annotations

import io
import lzma
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, TextIO

from modulm.errors import ModulmError

BLOCK_CHARS = 1 << 20


def open_text(path: str | os.PathLike) -> TextIO:
    """Open a UTF-8 text file for reading, decompressing ``.xz`` transparently; newlines kept as is."""
    path = Path(path)
    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def check_text_file(path: str | os.PathLike, what: str = "text file") -> Path:
    """A one-line error unless ``path`` is an existing, non-empty file."""
    path = Path(path)
    if not path.exists():
        raise ModulmError(f"{path}: {what} not found")
    if path.is_dir():
        raise ModulmError(f"{path}: is a directory, expected a {what}")
    if path.stat().st_size == 0:
        raise ModulmError(f"{path}: {what} is empty")
    return path


def read_blocks(path: str | os.PathLike, block_chars: int = BLOCK_CHARS) -> Iterator[str]:
    """Yield the file's text in blocks of up to ``block_chars`` characters."""
    try:
        with open_text(path) as fh:
            while block := fh.read(block_chars):
                yield block
    except UnicodeDecodeError as exc:
        raise ModulmError(f"{path}: not valid UTF-8 text ({exc.reason})") from None
    except (lzma.LZMAError, EOFError) as exc:
        raise ModulmError(f"{path}: cannot decompress: {exc}") from None
    except io.UnsupportedOperation as exc:  # pragma: no cover - unusual file types
        raise ModulmError(f"{path}: cannot read: {exc}") from None


def iter_pieces(path: str | os.PathLike, separator: str, block_chars: int = BLOCK_CHARS) -> Iterator[tuple[str, bool]]:
    """Yield ``(text, ends_with_separator)`` pieces whose concatenation is the file's text.

    A piece with ``True`` ends exactly after a separator; other pieces end anywhere (a long
    stretch without separators, or the end of the file).
    """
    keep = len(separator) - 1
    buffer = ""
    for block in read_blocks(path, block_chars):
        buffer += block
        start = 0
        while (found := buffer.find(separator, start)) >= 0:
            end = found + len(separator)
            yield buffer[start:end], True
            start = end
        buffer = buffer[start:]
        if len(buffer) > block_chars:  # no separator in a long stretch: pass most of it on
            cut = len(buffer) - keep
            yield buffer[:cut], False
            buffer = buffer[cut:]
    if buffer:
        yield buffer, False


def count_documents(path: str | os.PathLike, separator: str, block_chars: int = BLOCK_CHARS) -> int:
    """The number of documents in one file (see the module docstring)."""
    separators = 0
    tail_has_text = False
    for text, ends in iter_pieces(path, separator, block_chars):
        if ends:
            separators += 1
            tail_has_text = False
        elif text.strip():
            tail_has_text = True
    return separators + (1 if tail_has_text else 0)


@dataclass(frozen=True)
class SplitResult:
    """Documents and UTF-8 bytes written to each side of a split."""

    train_documents: int
    val_documents: int
    train_bytes: int
    val_bytes: int


def held_out_count(documents: int, val_fraction: float) -> int:
    """How many of ``documents`` to hold out: ``round(documents * val_fraction)``, at least 1, at most all but 1."""
    return min(max(1, round(documents * val_fraction)), documents - 1)


def split_documents(
    paths: Sequence[str | os.PathLike], separator: str, val_fraction: float, train_out: TextIO, val_out: TextIO,
    block_chars: int = BLOCK_CHARS,
) -> SplitResult:
    """Write the first documents of ``paths`` to ``train_out`` and the last ``val_fraction`` to ``val_out``.

    Deterministic: the held-out documents are the last :func:`held_out_count` documents, in order.
    """
    counts = [count_documents(path, separator, block_chars) for path in paths]
    total = sum(counts)
    if total < 2:
        names = ", ".join(str(p) for p in paths)
        raise ModulmError(
            f"{names}: found {total} document(s) separated by {separator!r}; holding out a validation "
            "split needs at least 2 (set val explicitly or use a different document_separator)"
        )
    train_docs = total - held_out_count(total, val_fraction)
    sizes = {"train": 0, "val": 0}
    first_doc = 0
    for path, count in zip(paths, counts):
        # Documents first_doc .. first_doc + count - 1 live in this file; the switch to the
        # validation side comes after local document `switch` (a separator, since switch < count).
        switch = min(max(train_docs - first_doc, 0), count)
        seen = 0
        for text, ends in iter_pieces(path, separator, block_chars):
            side = "train" if seen < switch or switch == count else "val"
            (train_out if side == "train" else val_out).write(text)
            sizes[side] += len(text.encode("utf-8"))
            seen += ends
        first_doc += count
    return SplitResult(train_docs, total - train_docs, sizes["train"], sizes["val"])
