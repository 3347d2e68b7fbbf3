"""The ``text`` data source: raw text in, cached token files out, served through the memmap path.

On first use the source (1) splits the training text by document when no validation text is
given, (2) trains the tokenizer on the training side if it is untrained, (3) encodes both sides
in parallel processes and (4) stores the token files, the tokenizer and a ``meta.json`` under
``CACHE/text/KEY/``, where KEY hashes the input files' contents, the tokenizer (its fingerprint,
or its settings when it is trained here) and the split settings. The entry is built in a
temporary directory and renamed into place, so a crash leaves no half entry; later runs with the
same inputs find it and skip straight to training.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Mapping

from annotated_types import Ge, Interval, MinLen

from modulm import nested
from modulm.constraints import checks
from modulm.errors import ModulmError
from modulm.fileio import plain_copy
from modulm_data.checks import check_ids
from modulm_data.documents import check_text_file, split_documents
from modulm_data.memmap import TokenSource, vocab_fits_dtype
from modulm_data.prepare import CHUNK_CHARS, default_workers, encode_files
from modulm_data.tokenfile import TOKEN_DTYPES, make_readable, storage_dtype, write_json_atomic
from modulm_data.tokenizers import fingerprint

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """The cache used when none is injected: the assembler's (``$MODULM_CACHE_DIR`` or ``~/.cache/modulm``)."""
    from modulm.assemble import cache_dir

    return cache_dir()


def _as_paths(value: str | list[str] | None, key: str) -> list[Path]:
    if value is None:
        return []
    items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    if not items:
        raise ModulmError(f"data.{key}: needs at least one text file")
    return [check_text_file(item, f"data.{key} text file") for item in items]


def _file_hash(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _build_tokenizer(spec: Any) -> tuple[Any, dict]:
    """The tokenizer instance and a description of its settings, from a builder or a spec."""
    if isinstance(spec, (str, dict)):  # used from Python without the assembler
        from modulm.assemble import builder
        from modulm.plugins import load

        spec = builder(load().registry, "tokenizer", spec, path="data.tokenizer")
    if callable(spec) and hasattr(spec, "params"):
        table = spec.to_table() if hasattr(spec, "to_table") else {"component": spec.name, **dict(spec.params)}
        return spec(), table
    if hasattr(spec, "encode"):  # an already built tokenizer
        return spec, {"class": f"{type(spec).__module__}.{type(spec).__qualname__}"}
    raise ModulmError(f"data.tokenizer: expected a tokenizer component, got {spec!r}")


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock so concurrent runs prepare an entry once (no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _say(text: str) -> None:
    """A progress line of the one-time preparation, on stderr (the training log starts after it)."""
    print(f"modulm: {text}", file=sys.stderr, flush=True)


def _short_of(tok: Any) -> str:
    """Why a trained vocabulary is smaller than asked ("" when it is not, or the tokenizer does not say)."""
    asked = getattr(tok, "target_vocab_size", None)
    if isinstance(asked, int) and int(tok.vocab_size) < asked:
        return (f", fewer than data.tokenizer.vocab_size = {asked:,}: the training text has no more "
                "pairs of tokens to merge")
    return ""


def _train(tok: Any, paths: list[str]) -> None:
    """Train ``tok``, with progress bars on a terminal when its ``train`` offers them."""
    try:
        offers_progress = "progress" in inspect.signature(tok.train).parameters
    except (TypeError, ValueError):
        offers_progress = False
    if offers_progress:
        tok.train(paths, progress=sys.stderr.isatty())
    else:
        tok.train(paths)


def _vocab_fits_text_dtype(p: Mapping[str, Any]) -> list:
    """an explicit dtype holds every id below the tokenizer's vocab_size."""
    return vocab_fits_dtype(p, getattr(p["tokenizer"], "params", {}).get("vocab_size"))


@checks(_vocab_fits_text_dtype)
class TextSource(TokenSource):
    """Raw text files (plain or .xz) tokenized once into cached token files, then sampled like memmap.

    train: text file (or list of files) to train on
    val: validation text file(s); when unset, the last val_fraction of the train documents are held out
    val_fraction: share of the documents held out for validation when val is unset (0: no validation split)
    tokenizer: the tokenizer; trained on the train split first when it is untrained
    document_separator: the string that ends each document (it stays in the text)
    dtype: "auto" (uint16 when the vocabulary fits, else uint32), uint16, uint32, int32 or int64
    workers: processes that encode the text (default: the usable CPUs, at most 8)
    """

    def __init__(
        self,
        train: Annotated[str | list[str], MinLen(1)],
        val: Annotated[str | list[str], MinLen(1)] | None = None,
        val_fraction: Annotated[float, Interval(ge=0, lt=1)] = 0.1,
        tokenizer: nested("tokenizer") = "bpe",
        document_separator: Annotated[str, MinLen(1)] = "<|endoftext|>",
        dtype: Literal["auto", "uint16", "uint32", "int32", "int64"] = "auto",
        workers: Annotated[int, Ge(1)] | None = None,
        *,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.train_paths = _as_paths(train, "train")
        self.val_paths = _as_paths(val, "val")
        if not 0.0 <= val_fraction < 1.0:
            raise ModulmError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if not document_separator:
            raise ModulmError("data.document_separator must not be empty")
        if dtype != "auto" and dtype not in TOKEN_DTYPES:
            raise ModulmError(f"data.dtype: unknown dtype {dtype!r}; use auto, {', '.join(TOKEN_DTYPES)}")
        if workers is not None and workers < 1:
            raise ModulmError(f"data.workers must be >= 1, got {workers}")
        self.val_fraction = 0.0 if self.val_paths else float(val_fraction)
        self.separator = document_separator
        self.workers = workers or default_workers()
        tok, tok_settings = _build_tokenizer(tokenizer)
        self.trained_here = not getattr(tok, "is_trained", True)
        self.dtype = dtype
        if not self.trained_here:  # a bad dtype fails now, not after the encoding work
            storage_dtype(int(tok.vocab_size), dtype)

        self.key = self._cache_key(tok, tok_settings)
        root = Path(cache_dir) if cache_dir else default_cache_dir()
        self.entry = root / "text" / self.key[:24]
        self.entry.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.entry.parent / f"{self.entry.name}.lock"):
            if not (self.entry / "meta.json").exists():
                self._prepare(tok)
                self.loaded_from_cache = False
            else:
                self.loaded_from_cache = True
        self.meta = json.loads((self.entry / "meta.json").read_text(encoding="utf-8"))
        if self.trained_here and self.loaded_from_cache:
            tok = type(tok).load(self.entry / "tokenizer")
        files = {split: self.entry / f"{split}.npy" for split in self.meta["tokens"]}
        super().__init__(files, int(tok.vocab_size), seed, tok)
        self._check_ids()

    # -- preparation ------------------------------------------------------------------------
    def _cache_key(self, tok: Any, tok_settings: dict) -> str:
        settings = {
            "format": CACHE_FORMAT,
            "chunk_chars": CHUNK_CHARS,
            "train": [_file_hash(p) for p in self.train_paths],
            "val": [_file_hash(p) for p in self.val_paths],
            "val_fraction": self.val_fraction,
            "separator": self.separator,
            "dtype": self.dtype,
            "tokenizer": tok_settings if self.trained_here else {"fingerprint": fingerprint(tok)},
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()

    def _prepare(self, tok: Any) -> None:
        work = Path(tempfile.mkdtemp(prefix=f".{self.entry.name}.", dir=self.entry.parent))
        try:
            make_readable(work, directory=True)
            scratch = work / "text"
            scratch.mkdir()
            train_paths, val_paths, documents = self.train_paths, self.val_paths, None
            if not val_paths and self.val_fraction > 0:
                train_paths, val_paths = [scratch / "train.txt"], [scratch / "val.txt"]
                with open(train_paths[0], "w", encoding="utf-8", newline="") as t_out, \
                        open(val_paths[0], "w", encoding="utf-8", newline="") as v_out:
                    split = split_documents(self.train_paths, self.separator, self.val_fraction, t_out, v_out)
                documents = {"train": split.train_documents, "val": split.val_documents}
            if self.trained_here:
                started = time.perf_counter()
                _say(f"training the tokenizer on {', '.join(map(str, self.train_paths))} (once; cached for later runs)")
                _train(tok, [str(plain_copy(p, scratch)) for p in train_paths])
                _say(f"tokenizer trained: {int(tok.vocab_size):,} tokens in {time.perf_counter() - started:.1f} s"
                     + _short_of(tok))
            tok.save(work / "tokenizer")
            token_dtype = storage_dtype(int(tok.vocab_size), self.dtype)
            tokens, sizes = {}, {}
            for split, paths in (("train", train_paths), ("val", val_paths)):
                if not paths:
                    continue
                started = time.perf_counter()
                _say(f"encoding the {split} split with {self.workers} worker{'s' * (self.workers > 1)}")
                result = encode_files(paths, tok, work / f"{split}.npy", token_dtype, self.workers,
                                      self.separator, desc=f"encoding {split}")
                if result.tokens == 0:
                    raise ModulmError(f"data.{split}: the text encodes to no tokens")
                _say(f"encoded {split}: {result.tokens:,} tokens in {time.perf_counter() - started:.1f} s")
                tokens[split], sizes[split] = result.tokens, result.bytes
            shutil.rmtree(scratch)
            meta = {
                "format": CACHE_FORMAT,
                "key": self.key,
                "train": [str(p) for p in self.train_paths],
                "val": [str(p) for p in self.val_paths] or None,
                "val_fraction": self.val_fraction,
                "document_separator": self.separator,
                "documents": documents,
                "tokens": tokens,
                "bytes": sizes,
                "dtype": token_dtype.name,
                "tokenizer": {
                    "class": f"{type(tok).__module__}.{type(tok).__qualname__}",
                    "vocab_size": int(tok.vocab_size),
                    "fingerprint": fingerprint(tok),
                    "trained_here": self.trained_here,
                },
            }
            write_json_atomic(work / "meta.json", json.dumps(meta, indent=1))
            os.replace(work, self.entry)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    # -- the DataSource contract ------------------------------------------------------------
    def _measure_bytes_per_token(self, split: str) -> float | None:
        return self.meta["bytes"][split] / self.meta["tokens"][split]

    def describe(self) -> list[str]:
        sources = ", ".join(str(p) for p in self.train_paths)
        if self.val_paths:
            held = f"val from {', '.join(str(p) for p in self.val_paths)}"
        elif self.val_fraction:
            docs = self.meta.get("documents") or {}
            held = f"val = last {self.val_fraction:g} of the documents ({docs.get('val')} of {sum(docs.values())})"
        else:
            held = "no validation split"
        tok = self.meta["tokenizer"]
        how = "trained on the train split" if tok["trained_here"] else "given"
        lines = [
            f"data: text from {sources}; {held}",
            f"  tokenizer: {tok['class'].rsplit('.', 1)[-1]}, vocab_size {self.vocab_size}, {how}",
            f"  cache: {self.entry} ({'reused' if self.loaded_from_cache else 'prepared now'})",
        ]
        for split in self.splits:
            lines.append(
                f"  {split}: {self.meta['tokens'][split]:,} tokens, {self.meta['bytes'][split]:,} bytes, "
                f"{self.bytes_per_token(split):.3f} bytes/token"
            )
        return lines

