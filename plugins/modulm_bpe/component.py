"""The ``bpe`` tokenizer component: loads a saved tokenizer, or trains one on plain-text files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Iterable, Iterator, Mapping

from annotated_types import Ge, Interval, MinLen

from modulm.constraints import checks, problem
from modulm.errors import ModulmError

from modulm_bpe.pretokenize import check_special_tokens
from modulm_bpe.tokenizer import Tokenizer
from modulm_bpe.train import check_vocab_size, train_bpe


def _vocab_holds_bytes_and_specials(p: Mapping[str, Any]) -> list:
    """special_tokens are distinct non-empty strings; vocab_size >= 256 + their number."""
    try:
        specials = check_special_tokens(p["special_tokens"])
    except ModulmError as exc:
        return [problem(str(exc), key="special_tokens")]
    try:
        check_vocab_size(p["vocab_size"], specials)
    except ModulmError as exc:
        return [problem(str(exc), key="vocab_size")]
    return []


@checks(_vocab_holds_bytes_and_specials)
class BPETokenizer:
    """Byte-level BPE tokenizer (GPT-2 pre-tokenization), loaded from a directory or trained.

    vocab_size: vocabulary size to train to, counting special tokens and the 256 bytes (so at least 256 + the special tokens)
    special_tokens: strings never split and never merged across, e.g. "<|endoftext|>"
    path: directory with vocab.json, merges.txt, special_tokens.json to load; unset: train first
    num_workers: pre-tokenization processes when training; unset picks by input size and CPUs
    """

    def __init__(self, vocab_size: Annotated[int, Interval(ge=256, le=2**32)] = 10000,
                 special_tokens: list[str] = ["<|endoftext|>"],  # noqa: B006 (never mutated)
                 path: Annotated[str, MinLen(1)] | None = None, num_workers: Annotated[int, Ge(1)] | None = None) -> None:
        self.special_tokens_requested = check_special_tokens(special_tokens)
        self.target_vocab_size = check_vocab_size(vocab_size, self.special_tokens_requested)
        self.num_workers = num_workers
        self.path = path
        self._tokenizer: Tokenizer | None = None
        if path is not None:
            self._tokenizer = Tokenizer.load(path)

    # -- training and files -------------------------------------------------------------------
    @property
    def is_trained(self) -> bool:
        return self._tokenizer is not None

    def train(self, paths: Iterable[str | os.PathLike], progress: bool = False) -> "BPETokenizer":
        """Train on plain-text files (replacing any loaded vocabulary); returns ``self``."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        vocab, merges = train_bpe(list(paths), self.target_vocab_size, self.special_tokens_requested,
                                  num_workers=self.num_workers, progress=progress)
        self._tokenizer = Tokenizer(vocab, merges, self.special_tokens_requested)
        return self

    def save(self, directory: str | os.PathLike) -> None:
        self.tokenizer.save(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "BPETokenizer":
        """A trained component read from a directory written by :meth:`save`."""
        tokenizer = Tokenizer.load(directory)
        component = cls.__new__(cls)
        component.special_tokens_requested = tokenizer.special_tokens
        component.target_vocab_size = tokenizer.vocab_size
        component.num_workers = None
        component.path = str(Path(directory))
        component._tokenizer = tokenizer
        return component

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> "BPETokenizer":
        component = cls.__new__(cls)
        component.special_tokens_requested = tokenizer.special_tokens
        component.target_vocab_size = tokenizer.vocab_size
        component.num_workers = None
        component.path = None
        component._tokenizer = tokenizer
        return component

    @property
    def tokenizer(self) -> Tokenizer:
        """The underlying :class:`Tokenizer`; an error if the component is not trained yet."""
        if self._tokenizer is None:
            raise ModulmError(
                "the bpe tokenizer is not trained: call train(paths) first, or set path to a saved tokenizer directory"
            )
        return self._tokenizer

    # -- the Tokenizer interface, delegated -----------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def special_tokens(self) -> list[str]:
        return self.tokenizer.special_tokens if self._tokenizer is not None else list(self.special_tokens_requested)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        return self.tokenizer.encode_iterable(iterable)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(ids)

    def token_bytes(self, token_id: int) -> bytes:
        return self.tokenizer.token_bytes(token_id)

    def fingerprint(self) -> str:
        return self.tokenizer.fingerprint()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, BPETokenizer):
            other = other._tokenizer
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return self._tokenizer == other

    __hash__ = None  # mutable: training changes it

    def __repr__(self) -> str:
        state = repr(self._tokenizer) if self._tokenizer is not None else "untrained"
        return f"<BPETokenizer {state}>"
