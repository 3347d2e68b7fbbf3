"""Encoding and decoding with a byte-level BPE vocabulary and its merges.

``encode`` splits special tokens out first (the longest wins where two start at the same place),
pre-tokenizes the text between them with GPT-2's pattern, and applies the merges inside each
pre-token in rank order. A cache of pre-token -> ids makes repeated pre-tokens cost one lookup.
"""

from __future__ import annotations

import hashlib
import json
import os
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator

from modulm.errors import ModulmError

from modulm_bpe import files
from modulm_bpe.pretokenize import PretokenStream, check_special_tokens, iter_pretokens

#: The pre-token cache is emptied when it grows past this many entries (bounded memory).
CACHE_ENTRIES = 1 << 18
#: ``encode_iterable`` gathers at least this many characters before encoding them.
ITERABLE_CHARS = 1 << 16
_NO_RANK = 1 << 62


class _PretokenCache(dict):
    """pre-token text -> tuple of ids; a miss runs BPE (``dict.__getitem__`` calls ``__missing__``)."""

    def __init__(self, bpe) -> None:
        super().__init__()
        self._bpe = bpe

    def __missing__(self, pretoken: str) -> tuple[int, ...]:
        if len(self) >= CACHE_ENTRIES:
            self.clear()
        try:
            data = pretoken.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ModulmError(f"cannot encode {pretoken!r}: {exc.reason} (lone surrogates are not text)") from None
        ids = self[pretoken] = self._bpe(data)
        return ids


class Tokenizer:
    """A byte-level BPE tokenizer: ``vocab`` (id -> bytes), ``merges`` in rank order, special tokens.

    Special tokens whose bytes are not in ``vocab`` get new ids after the largest one. Every
    single byte must be in ``vocab``, and both parts and the product of every merge.
    """

    def __init__(self, vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]],
                 special_tokens: list[str] | None = None) -> None:
        self._special_tokens = check_special_tokens(special_tokens)
        self._vocab = _checked_vocab(vocab)
        self._merges = [(bytes(a), bytes(b)) for a, b in merges]
        ids_by_bytes: dict[bytes, int] = {}
        for token_id in sorted(self._vocab):
            ids_by_bytes.setdefault(self._vocab[token_id], token_id)
        next_id = max(self._vocab, default=-1) + 1
        self._special_ids: dict[str, int] = {}
        for token in self._special_tokens:
            data = token.encode("utf-8")
            if data not in ids_by_bytes:
                self._vocab[next_id] = data
                ids_by_bytes[data] = next_id
                next_id += 1
            self._special_ids[token] = ids_by_bytes[data]
        missing = [b for b in range(256) if bytes([b]) not in ids_by_bytes]
        if missing:
            raise ModulmError(f"the vocabulary lacks {len(missing)} single byte(s), e.g. {bytes([missing[0]])!r}")
        self._byte_ids = [ids_by_bytes[bytes([b])] for b in range(256)]
        self._stride = next_id
        self._pair_rank: dict[int, int] = {}  # a * stride + b -> rank (index into _products)
        self._products: list[int] = []
        # the rank of each pair of single bytes, indexed by (first byte << 8) | second byte
        self._byte_pair_rank = [_NO_RANK] * (1 << 16)
        byte_of = {token_id: byte for byte, token_id in enumerate(self._byte_ids)}
        made = set(self._byte_ids)  # tokens some merge can reach
        get, stride, pair_rank, products = ids_by_bytes.get, self._stride, self._pair_rank, self._products
        for rank, (left, right) in enumerate(self._merges):
            a, b, product = get(left), get(right), get(left + right)
            if a is None or b is None or product is None:
                which = "left part" if a is None else "right part" if b is None else "product"
                raise ModulmError(f"merge {rank} ({left!r}, {right!r}): its {which} is not in the vocabulary")
            if a not in made or b not in made:
                part = left if a not in made else right
                raise ModulmError(f"merge {rank} ({left!r}, {right!r}) uses {part!r} before any merge makes it")
            made.add(product)
            key = a * stride + b
            if key not in pair_rank:
                pair_rank[key] = len(products)
                if a in byte_of and b in byte_of:
                    self._byte_pair_rank[(byte_of[a] << 8) | byte_of[b]] = len(products)
                products.append(product)
        self._cache = _PretokenCache(self._bpe)
        self._fingerprint: str | None = None

    # -- construction from files --------------------------------------------------------------
    @classmethod
    def from_files(cls, vocab_filepath: str | os.PathLike, merges_filepath: str | os.PathLike,
                   special_tokens: list[str] | None = None) -> "Tokenizer":
        """Read ``vocab.json`` and ``merges.txt`` in the GPT-2 layout."""
        return cls(files.read_vocab(vocab_filepath), files.read_merges(merges_filepath), special_tokens)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Tokenizer":
        """Read a directory written by :meth:`save` (``special_tokens.json`` may be absent)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ModulmError(f"tokenizer directory not found: {directory}")
        special_path = directory / files.SPECIAL_TOKENS_FILE
        specials = files.read_special_tokens(special_path) if special_path.exists() else []
        return cls.from_files(directory / files.VOCAB_FILE, directory / files.MERGES_FILE, specials)

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``vocab.json``, ``merges.txt`` and ``special_tokens.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files.write_vocab(directory / files.VOCAB_FILE, self._vocab)
        files.write_merges(directory / files.MERGES_FILE, self._merges)
        files.write_special_tokens(directory / files.SPECIAL_TOKENS_FILE, self._special_tokens)

    # -- properties ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """One more than the largest id (ids are usually 0..n-1)."""
        return self._stride

    @property
    def special_tokens(self) -> list[str]:
        return list(self._special_tokens)

    @property
    def special_token_ids(self) -> dict[str, int]:
        return dict(self._special_ids)

    @property
    def vocab(self) -> dict[int, bytes]:
        return dict(self._vocab)

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        return list(self._merges)

    def token_bytes(self, token_id: int) -> bytes:
        try:
            return self._vocab[token_id]
        except (KeyError, TypeError):
            raise ModulmError(f"token id {token_id!r} is not in the vocabulary") from None

    def fingerprint(self) -> str:
        """sha256 over vocab, merges and special tokens: equal tokenizers, equal fingerprints."""
        if self._fingerprint is None:
            canonical = json.dumps({
                "vocab": [[i, self._vocab[i].hex()] for i in sorted(self._vocab)],
                "merges": [[a.hex(), b.hex()] for a, b in self._merges],
                "special_tokens": self._special_tokens,
            }, separators=(",", ":"))
            self._fingerprint = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        return self._fingerprint

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return self.fingerprint() == other.fingerprint()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        return f"<Tokenizer vocab_size={self.vocab_size} merges={len(self._merges)} special_tokens={self._special_tokens}>"

    # -- encoding -----------------------------------------------------------------------------
    def _bpe(self, word: bytes) -> tuple[int, ...]:
        """Apply the merges to one pre-token: repeatedly merge the lowest-ranked adjacent pair.

        Merging its leftmost occurrence at a time gives the same result as merging every
        occurrence at once, because a pair that contains a merge's product always ranks after it
        (checked in ``__init__``).
        """
        if len(word) < 2:
            return tuple([self._byte_ids[b] for b in word])
        first = self._byte_pair_rank
        ranks = [first[(a << 8) | b] for a, b in zip(word, word[1:])]
        rank = min(ranks)
        byte_ids = self._byte_ids
        ids = [byte_ids[b] for b in word]
        get = self._pair_rank.get
        stride = self._stride
        products = self._products
        while rank != _NO_RANK:
            i = ranks.index(rank)
            new = ids[i] = products[rank]
            del ids[i + 1]
            del ranks[i]
            last = len(ranks)
            if not last:
                break
            if i:
                ranks[i - 1] = get(ids[i - 1] * stride + new, _NO_RANK)
            if i < last:
                ranks[i] = get(new * stride + ids[i + 1], _NO_RANK)
            rank = min(ranks)
        return tuple(ids)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special tokens become their ids, never split."""
        if not isinstance(text, str):
            raise ModulmError(f"encode expects a str, got {type(text).__name__}")
        ids: list[int] = []
        lookup = self._cache.__getitem__
        for pretokens, special in iter_pretokens(text, self._special_tokens):
            if pretokens:
                ids.extend(chain.from_iterable(map(lookup, pretokens)))
            if special is not None:
                ids.append(self._special_ids[special])
        return ids

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        """Lazily yield the ids of the concatenated strings (e.g. a text file's lines).

        Gives exactly ``encode("".join(iterable))`` while holding only a bounded buffer: text is
        encoded in batches of about :data:`ITERABLE_CHARS` characters, and the few characters
        whose pre-tokens could still change are carried over, so no token spans a batch edge.
        """
        stream = PretokenStream(self._special_tokens)
        batch: list[str] = []
        size = 0
        for piece in iterable:
            if not isinstance(piece, str):
                raise ModulmError(f"encode_iterable expects str pieces, got {type(piece).__name__}")
            batch.append(piece)
            size += len(piece)
            if size >= ITERABLE_CHARS:
                yield from self._ids_of(stream.feed("".join(batch)))
                batch, size = [], 0
        if batch:
            yield from self._ids_of(stream.feed("".join(batch)))
        yield from self._ids_of(stream.finish())

    def _ids_of(self, pairs) -> Iterator[int]:
        lookup = self._cache.__getitem__
        for pretokens, special in pairs:
            if pretokens:
                yield from chain.from_iterable(map(lookup, pretokens))
            if special is not None:
                yield self._special_ids[special]

    # -- decoding -----------------------------------------------------------------------------
    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``; byte sequences that are not valid UTF-8 become U+FFFD."""
        if hasattr(ids, "tolist"):  # numpy arrays and torch tensors
            ids = ids.tolist()
        try:
            data = b"".join(map(self._vocab.__getitem__, ids))
        except (KeyError, TypeError) as exc:
            bad = exc.args[0] if isinstance(exc, KeyError) else exc
            raise ModulmError(f"cannot decode: token id {bad!r} is not in the vocabulary") from None
        return data.decode("utf-8", errors="replace")


def _checked_vocab(vocab: dict[int, bytes]) -> dict[int, bytes]:
    if not isinstance(vocab, dict):
        raise ModulmError(f"vocab must be a dict of id -> bytes, got {type(vocab).__name__}")
    checked: dict[int, bytes] = {}
    for token_id, token in vocab.items():
        if not isinstance(token_id, int) or isinstance(token_id, bool) or token_id < 0:
            raise ModulmError(f"vocab id {token_id!r} is not an integer >= 0")
        if not isinstance(token, (bytes, bytearray)) or not token:
            raise ModulmError(f"vocab entry {token_id} is {token!r}, expected non-empty bytes")
        checked[token_id] = bytes(token)
    return checked
