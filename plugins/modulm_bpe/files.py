"""The GPT-2 / Hugging Face file layout: ``vocab.json``, ``merges.txt`` and ``special_tokens.json``.

``vocab.json`` maps each token, written as text through GPT-2's bytes-to-unicode table, to its id.
``merges.txt`` holds one merge a line in rank order, the two parts written the same way and
separated by one space (an optional first line ``#version: ...`` is skipped). modulm adds
``special_tokens.json``: ``{"special_tokens": [...]}``. Everything is JSON or plain text; no pickle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from modulm.errors import ModulmError

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
SPECIAL_TOKENS_FILE = "special_tokens.json"
MERGES_HEADER = "#version: 0.2"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte to a printable character.

    Printable Latin-1 bytes map to themselves; the other 68 bytes (controls, space, soft hyphen...)
    map in order to the characters from U+0100 on, so no token text contains whitespace.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    table: dict[int, str] = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}
# The inverse as a str.translate table onto latin-1 characters; a character outside GPT-2's table
# becomes U+FFFF (or stays above U+00FF), so the latin-1 encode that follows rejects it.
_DECODE_TABLE = {code: chr(_CHAR_TO_BYTE[chr(code)]) if chr(code) in _CHAR_TO_BYTE else "\uffff"
                 for code in range(max(map(ord, _CHAR_TO_BYTE)) + 1)}


def token_to_text(token: bytes) -> str:
    """A token's bytes as GPT-2 vocabulary text."""
    return token.decode("latin-1").translate(_BYTE_TO_CHAR)  # latin-1: one char per byte


def text_to_token(text: str, *, where: str = "token") -> bytes:
    """Inverse of :func:`token_to_text`; a character outside the table is a one-line error."""
    try:
        return text.translate(_DECODE_TABLE).encode("latin-1")
    except UnicodeEncodeError:
        bad = next(c for c in text if c not in _CHAR_TO_BYTE)
        raise ModulmError(f"{where}: character {bad!r} is not in GPT-2's bytes-to-unicode table") from None


def _require(path: Path) -> None:
    if not path.is_file():
        inner = path.parent / "tokenizer"
        hint = f"; did you mean {inner}? (a run directory keeps its tokenizer there)" if (inner / path.name).is_file() else ""
        raise ModulmError(f"tokenizer file not found: {path}{hint}")


def _no_duplicate_keys(path: Path):
    def hook(pairs):
        seen: dict = {}
        for key, value in pairs:
            if key in seen:
                raise ModulmError(f"{path}: key {key!r} appears twice")
            seen[key] = value
        return seen

    return hook


def write_vocab(path: str | os.PathLike, vocab: dict[int, bytes]) -> None:
    """Write ``vocab`` (id -> bytes) as ``vocab.json`` in id order; byte strings must be unique."""
    table: dict[str, int] = {}
    for token_id in sorted(vocab):
        text = token_to_text(vocab[token_id])
        if text in table:
            raise ModulmError(
                f"cannot write {path}: ids {table[text]} and {token_id} have the same bytes {vocab[token_id]!r}"
            )
        table[text] = token_id
    _write_text(path, json.dumps(table, ensure_ascii=False, indent=0) + "\n")


def read_vocab(path: str | os.PathLike) -> dict[int, bytes]:
    """Read a ``vocab.json`` (token text -> id) into id -> bytes."""
    path = Path(path)
    _require(path)
    try:
        table = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModulmError(f"{path}: not a valid JSON vocabulary ({exc})") from None
    if not isinstance(table, dict):
        raise ModulmError(f"{path}: expected a JSON object mapping token text to id")
    vocab: dict[int, bytes] = {}
    for text, token_id in table.items():
        if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
            raise ModulmError(f"{path}: token {text!r} has id {token_id!r}, expected an integer >= 0")
        if token_id in vocab:
            raise ModulmError(f"{path}: id {token_id} is given to two tokens")
        vocab[token_id] = text_to_token(text, where=f"{path}: token {text!r}")
    return vocab


def write_merges(path: str | os.PathLike, merges: Iterable[tuple[bytes, bytes]]) -> None:
    """Write merges in rank order, one ``left right`` line each, after a ``#version`` header."""
    lines = [MERGES_HEADER] + [f"{token_to_text(a)} {token_to_text(b)}" for a, b in merges]
    _write_text(path, "\n".join(lines) + "\n")


def read_merges(path: str | os.PathLike) -> list[tuple[bytes, bytes]]:
    """Read ``merges.txt``; a first line starting with ``#version`` and blank lines are skipped."""
    path = Path(path)
    _require(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise ModulmError(f"{path}: not UTF-8 text ({exc})") from None
    merges: list[tuple[bytes, bytes]] = []
    decoded: dict[str, bytes] = {}  # each token text recurs in many merges
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if not line or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ModulmError(f"{path}:{number}: expected two tokens separated by one space, got {line!r}")
        pair = []
        for part in parts:
            token = decoded.get(part)
            if token is None:
                token = decoded[part] = text_to_token(part, where=f"{path}:{number}")
            pair.append(token)
        merges.append((pair[0], pair[1]))
    return merges


def write_special_tokens(path: str | os.PathLike, special_tokens: list[str]) -> None:
    _write_text(path, json.dumps({"special_tokens": list(special_tokens)}, ensure_ascii=False, indent=2) + "\n")


def read_special_tokens(path: str | os.PathLike) -> list[str]:
    path = Path(path)
    _require(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModulmError(f"{path}: not valid JSON ({exc})") from None
    tokens = data.get("special_tokens") if isinstance(data, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ModulmError(f'{path}: expected {{"special_tokens": [strings]}}')
    return tokens


def _write_text(path: str | os.PathLike, text: str) -> None:
    """Write atomically: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    os.replace(tmp, path)
