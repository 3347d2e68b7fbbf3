"""Conformance checks for ``logger`` and ``tokenizer`` components (contracts in :mod:`modulm.kinds`)."""

from __future__ import annotations

import random
import tempfile
import types
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from modulm.kinds import INTERFACES
from modulm.testing._build import component_builder, describe

#: One event of each kind the trainer sends, in run order (values are plausible, not special).
EVENTS: tuple[dict[str, Any], ...] = (
    {"event": "start", "lines": ["Starting training", "data: 1,000 tokens"], "max_steps": 2, "run_dir": "run"},
    {"event": "train", "step": 0, "max_steps": 2, "loss": 4.2, "lr": 0.0, "grad_norm": 1.5, "step_time": 0.01,
     "tokens_per_sec": 12800.0, "tokens": 128, "elapsed": 0.01},
    {"event": "message", "text": "a note", "level": "INFO"},
    {"event": "train", "step": 1, "max_steps": 2, "loss": 3.9, "lr": 1e-3, "grad_norm": 1.2, "step_time": 0.01,
     "tokens_per_sec": 12800.0, "tokens": 256, "elapsed": 0.02, "an_unknown_key": [1, 2]},
    {"event": "eval", "step": 2, "val_loss": 3.8, "val_perplexity": 44.7, "eval_time": 0.1},
    {"event": "eval", "step": 2, "val_loss": 3.8, "val_perplexity": 44.7, "eval_time": 0.1, "val_bpb": 1.3},
    {"event": "an-unknown-event", "step": 2, "value": 1},
    {"event": "message", "text": "warning text", "level": "WARNING"},
    {"event": "end", "step": 2},
)


def check_logger(component: str | Callable[..., Any], config: Mapping[str, Any] | None = None, *,
                 registry: Any = None) -> None:
    """Check the ``logger`` contract: built with an existing ``run_dir``, it takes one event of each
    kind (read-only mappings, unknown events and keys included) without error, writes nothing
    outside ``run_dir``, and ``close()`` may be called twice. Events are logged twice over, by a
    second instance on the same directory, as a resumed run does."""
    label = describe("logger", component)
    make = component_builder("logger", component, config, registry)
    with tempfile.TemporaryDirectory(prefix="modulm-check-logger-") as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        for _ in range(2):
            logger = make(run_dir=run_dir)
            assert isinstance(logger, INTERFACES["logger"]), f"{label}: does not match the logger interface (log, close)"
            for event in EVENTS:
                try:
                    logger.log(types.MappingProxyType(dict(event)))
                except Exception as exc:
                    raise AssertionError(f"{label}: log({event}) raised {type(exc).__name__}: {exc}") from exc
            logger.close()
            try:
                logger.close()
            except Exception as exc:
                raise AssertionError(f"{label}: a second close() raised {type(exc).__name__}: {exc}") from exc
        outside = sorted(p.name for p in Path(tmp).iterdir() if p != run_dir)
        assert not outside, f"{label}: wrote {outside} outside its run_dir"


_ALPHABETS = ("abcdefghijklmnopqrstuvwxyz", "ABCXYZ0123456789", " \t\n\r  ", ".,;:!?'\"-()[]{}",
              "éèüßøçñ", "жизнь", "日本語の文字", "한국어", "🙂🚀👍🏽", "\u0301\u200d\ufeff\x00\x7f")
DEFAULT_TRAINING_TEXT = (
    "The quick brown fox jumps over the lazy dog. Once upon a time, there was a little cat.\n"
    "She liked to play in the garden with her friends. Héllo wörld, naïve café! 日本語 🙂\n"
) * 20


def _random_texts(seed: int, special_tokens: list[str], n: int = 20) -> list[str]:
    rng = random.Random(seed)
    pieces = list(_ALPHABETS) + list(special_tokens) * 2
    texts = []
    for _ in range(n):
        text = ""
        for _ in range(rng.randint(0, 12)):
            piece = rng.choice(pieces)
            text += piece if piece in special_tokens else "".join(rng.choices(piece, k=rng.randint(1, 5)))
        texts.append(text)
    return texts


def check_tokenizer(component: str | Callable[..., Any], config: Mapping[str, Any] | None = None, *,
                    texts: Iterable[str] = (), training_text: str = DEFAULT_TRAINING_TEXT, seed: int = 0,
                    registry: Any = None) -> None:
    """Check the ``tokenizer`` contract. An untrained tokenizer (``is_trained`` false) is first
    trained on ``training_text``. Then for ``texts`` plus fixed and random unicode strings (special
    tokens included): ids are ints in ``[0, vocab_size)``, ``decode(encode(s)) == s``,
    ``encode_iterable`` over the lines gives the same ids, each special token is one id, and a
    tokenizer saved and loaded back with its class's ``load`` encodes every string the same way."""
    label = describe("tokenizer", component)
    make = component_builder("tokenizer", component, config, registry)
    tokenizer = make()
    with tempfile.TemporaryDirectory(prefix="modulm-check-tokenizer-") as tmp:
        if not getattr(tokenizer, "is_trained", True):
            assert hasattr(tokenizer, "train"), f"{label}: is untrained and has no train(paths)"
            corpus = Path(tmp) / "corpus.txt"
            corpus.write_text(training_text, encoding="utf-8")
            tokenizer.train([corpus])
            assert tokenizer.is_trained, f"{label}: is_trained is still false after train()"
        assert isinstance(tokenizer, INTERFACES["tokenizer"]), f"{label}: does not match the tokenizer interface"
        vocab, specials = tokenizer.vocab_size, list(tokenizer.special_tokens)
        assert isinstance(vocab, int) and vocab >= 1, f"{label}: vocab_size is {vocab!r}"
        assert all(isinstance(s, str) and s for s in specials), f"{label}: special_tokens is {specials!r}"
        samples = ["", "hello world", "  leading and trailing  ", "line one\nline two\n\n", training_text[:200]]
        samples += list(texts) + _random_texts(seed, specials)
        samples += [f"{s}{s}x{s}" for s in specials]
        encoded = {}
        for text in samples:
            ids = tokenizer.encode(text)
            encoded[text] = ids
            assert isinstance(ids, list) and all(isinstance(i, int) and 0 <= i < vocab for i in ids), (
                f"{label}: encode({text!r}) gave {ids!r}, not a list of ints in [0, {vocab})"
            )
            decoded = tokenizer.decode(ids)
            assert decoded == text, f"{label}: decode(encode({text!r})) = {decoded!r}"
            lazy = list(tokenizer.encode_iterable(text.splitlines(keepends=True)))
            assert lazy == ids, f"{label}: encode_iterable over the lines of {text!r} gave {lazy!r}, encode gave {ids!r}"
        for special in specials:
            ids = tokenizer.encode(special)
            assert len(ids) == 1 and tokenizer.decode(ids) == special, (
                f"{label}: special token {special!r} encodes to {ids!r}, not one id"
            )
        saved = Path(tmp) / "saved"
        tokenizer.save(saved)
        loaded = type(tokenizer).load(saved)
        assert loaded.vocab_size == vocab and list(loaded.special_tokens) == specials, (
            f"{label}: the tokenizer loaded from save() has vocab_size {loaded.vocab_size} and special tokens "
            f"{loaded.special_tokens!r}"
        )
        for text, ids in encoded.items():
            assert loaded.encode(text) == ids, f"{label}: after save/load, encode({text!r}) changed"
