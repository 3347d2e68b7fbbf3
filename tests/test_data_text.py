"""The text pipeline: document splits, safe chunks, parallel encoding and the text source's cache.

These tests drive the pipeline with a byte-level tokenizer written here (one id per byte, one
per special token), so they check the plumbing on its own; tests/test_data_bpe.py runs it with
the real BPE tokenizer.
"""

import json
import lzma
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modulm.errors import ModulmError
from modulm.kinds import DataSource
from modulm_data import TextSource, text
from modulm_data.documents import count_documents, held_out_count, split_documents
from modulm_data.prepare import encode_files, text_chunks

SEP = "<|endoftext|>"


class ByteTokenizer:
    """Ids 0-255 are bytes; special tokens follow. Trainable variant records what it was trained on."""

    def __init__(self, special_tokens=(SEP,), trained=True):
        self.special_tokens = list(special_tokens)
        self.is_trained = trained
        self.trained_on = None
        self._pattern = re.compile("(" + "|".join(map(re.escape, self.special_tokens)) + ")") if special_tokens else None

    @property
    def vocab_size(self):
        return 256 + len(self.special_tokens)

    @property
    def vocab(self):
        table = {i: bytes([i]) for i in range(256)}
        table.update({256 + i: s.encode() for i, s in enumerate(self.special_tokens)})
        return table

    def train(self, paths):
        self.trained_on = "".join(Path(p).read_text(encoding="utf-8") for p in paths)
        self.is_trained = True

    def encode(self, text):
        ids = []
        for part in self._pattern.split(text) if self._pattern else [text]:
            if part in self.special_tokens:
                ids.append(256 + self.special_tokens.index(part))
            else:
                ids.extend(part.encode("utf-8"))
        return ids

    def encode_iterable(self, lines):
        for line in lines:
            yield from self.encode(line)

    def decode(self, ids):
        table = self.vocab
        return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")

    def save(self, directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "specials.json").write_text(json.dumps(self.special_tokens))

    @classmethod
    def load(cls, directory):
        return cls(json.loads((Path(directory) / "specials.json").read_text()))


# -- documents ---------------------------------------------------------------------------------
words = st.text(alphabet=st.sampled_from("ab é\n<|>"), max_size=12)
documents = st.lists(words, min_size=1, max_size=12)


def _write(path, content):
    if str(path).endswith(".xz"):
        with lzma.open(path, "wt", encoding="utf-8", newline="") as fh:
            fh.write(content)
    else:
        Path(path).write_text(content, encoding="utf-8", newline="")
    return Path(path)


def _read(path):
    with open(path, encoding="utf-8", newline="") as fh:
        return fh.read()


@given(docs=documents, tail=st.sampled_from(["", "\n", "  \n", "tail text"]), fraction=st.floats(0.01, 0.99),
       block=st.integers(14, 40), files=st.integers(1, 3))
def test_split_by_document_concatenates_to_the_input(tmp_path_factory, docs, tail, fraction, block, files):
    folder = tmp_path_factory.mktemp("split")
    groups = [docs[len(docs) * k // files : len(docs) * (k + 1) // files] for k in range(files)]
    parts = ["".join(d + SEP for d in group) for group in groups if group]
    parts[-1] += tail
    content = "".join(parts)
    paths = [_write(folder / f"part{i}.txt", part) for i, part in enumerate(parts)]
    total = sum(count_documents(p, SEP, block) for p in paths)
    train_path, val_path = folder / "train.txt", folder / "val.txt"
    if total < 2:
        with pytest.raises(ModulmError, match="at least 2"):
            with open(train_path, "w") as t, open(val_path, "w") as v:
                split_documents(paths, SEP, fraction, t, v, block)
        return
    with open(train_path, "w", newline="") as t, open(val_path, "w", newline="") as v:
        result = split_documents(paths, SEP, fraction, t, v, block)
    train_text = _read(train_path)
    val_text = _read(val_path)
    assert train_text + val_text == content
    assert result.val_documents == held_out_count(total, fraction) and result.train_documents == total - result.val_documents
    assert result.train_bytes == len(train_text.encode()) and result.val_bytes == len(val_text.encode())
    assert count_documents(_write(folder / "v.txt", val_text), SEP, block) == result.val_documents
    assert train_text.endswith(SEP)  # the switch falls on a document boundary


def test_documents_counted_like_tinystories():
    sample = "story one\n" + SEP + "\nstory two\n" + SEP + "\n"
    assert sample.count(SEP) == 2
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / "s.txt.xz", sample)
        assert count_documents(path, SEP) == 2  # the trailing newline joins the last document
        assert count_documents(_write(Path(tmp) / "t.txt", sample + "three"), SEP) == 3


# -- chunks and encoding -----------------------------------------------------------------------
@given(content=st.lists(st.sampled_from(["a", "b", "\n", " ", SEP, "<|x|>", "é"]), max_size=80).map("".join),
       size=st.integers(4, 30))
def test_chunks_concatenate_to_the_input_and_never_cut_a_special_token(tmp_path_factory, content, size):
    path = _write(tmp_path_factory.mktemp("c") / "in.txt", content)
    chunks = list(text_chunks([path], SEP, ["<|x|>"], chunk_chars=size))
    assert "".join(chunks) == content
    assert all(chunks)
    boundaries, position = set(), 0
    for chunk in chunks[:-1]:
        position += len(chunk)
        boundaries.add(position)
    for special in (SEP, "<|x|>"):
        for match in re.finditer(re.escape(special), content):
            assert not any(match.start() < b < match.end() for b in boundaries)


@pytest.mark.parametrize("workers", [1, 2])
def test_prepare_then_decode_gives_the_input(tmp_path, workers, monkeypatch):
    import modulm_data.prepare as prepare

    monkeypatch.setattr(prepare, "CHUNK_CHARS", 64)
    content = "".join(f"doc {i} caf\u00e9 \u2603\n{SEP}\n" for i in range(200))
    paths = [_write(tmp_path / "a.txt", content[:3000]), _write(tmp_path / "b.txt.xz", content[3000:])]
    tokenizer = ByteTokenizer()
    result = encode_files(paths, tokenizer, tmp_path / "out.npy", "uint16", workers)
    ids = np.load(tmp_path / "out.npy")
    assert ids.dtype == np.uint16 and len(ids) == result.tokens
    assert tokenizer.decode(ids.tolist()) == content
    assert result.bytes == len(content.encode())
    assert ids.tolist() == tokenizer.encode(content)  # chunking changes nothing for this tokenizer


def test_parallel_and_serial_encoding_agree(tmp_path):
    content = "".join(f"line {i}\n" + (SEP if i % 7 == 0 else "") for i in range(3000))
    path = _write(tmp_path / "in.txt", content)
    for workers in (1, 2):
        encode_files([path], ByteTokenizer(), tmp_path / f"out{workers}.npy", "uint32", workers)
    assert np.array_equal(np.load(tmp_path / "out1.npy"), np.load(tmp_path / "out2.npy"))


# -- the text source ---------------------------------------------------------------------------
def _corpus(tmp_path, count=40, name="corpus.txt"):
    content = "".join(f"Story number {i}.\n{SEP}\n" for i in range(count))
    return _write(tmp_path / name, content), content


def test_text_source_holds_out_the_last_documents(tmp_path):
    path, content = _corpus(tmp_path, name="corpus.txt.xz")
    tokenizer = ByteTokenizer(trained=False)
    data = TextSource(str(path), val_fraction=0.1, tokenizer=tokenizer, seed=0, cache_dir=tmp_path / "cache")
    assert isinstance(data, DataSource) and data.splits == ("train", "val")
    assert data.vocab_size == 257 and data.tokenizer is tokenizer
    train_text = data.tokenizer.decode(np.asarray(data.tokens("train")).tolist())
    val_text = data.tokenizer.decode(np.asarray(data.tokens("val")).tolist())
    assert train_text + val_text == content
    assert val_text.startswith("\nStory number 36.") and train_text.endswith("Story number 35.\n" + SEP)
    assert tokenizer.trained_on == train_text  # the tokenizer never sees validation text
    for split in data.splits:
        assert data.bytes_per_token(split) == pytest.approx(len(data.tokenizer.decode(data.tokens(split).tolist()).encode()) / len(data.tokens(split)))
        inputs, targets = data.get_batch(split, 3, 8, "cpu")
        assert inputs.shape == (3, 8) and torch.equal(inputs[:, 1:], targets[:, :-1])
    assert (data.entry / "tokenizer" / "specials.json").exists()
    assert any("last 0.1 of the documents (4 of 40)" in line for line in data.describe())


def test_a_vocabulary_trained_short_of_its_target_is_reported(tmp_path, capsys):
    path, _ = _corpus(tmp_path)
    tokenizer = ByteTokenizer(trained=False)
    tokenizer.target_vocab_size = 1000  # what a trainable tokenizer was asked for; training reaches 257
    TextSource(str(path), tokenizer=tokenizer, cache_dir=tmp_path / "cache")
    line = next(line for line in capsys.readouterr().err.splitlines() if "tokenizer trained" in line)
    assert line.startswith("modulm: tokenizer trained: 257 tokens in ")
    assert line.endswith(", fewer than data.tokenizer.vocab_size = 1,000: the training text has no more pairs of tokens to merge")
    tokenizer = ByteTokenizer(trained=False)
    tokenizer.target_vocab_size = 257
    TextSource(str(path), tokenizer=tokenizer, cache_dir=tmp_path / "cache2")
    line = next(line for line in capsys.readouterr().err.splitlines() if "tokenizer trained" in line)
    assert line.endswith(" s")


def test_text_source_prepares_once_and_reuses_the_cache(tmp_path, monkeypatch):
    path, _ = _corpus(tmp_path)
    first = TextSource(str(path), tokenizer=ByteTokenizer(trained=False), cache_dir=tmp_path / "cache")
    assert not first.loaded_from_cache

    def fail(*args, **kwargs):
        raise AssertionError("prepared again")

    monkeypatch.setattr(text, "encode_files", fail)
    again = TextSource(str(path), tokenizer=ByteTokenizer(trained=False), cache_dir=tmp_path / "cache", seed=5)
    assert again.loaded_from_cache and again.entry == first.entry
    assert np.array_equal(again.tokens("train"), first.tokens("train"))
    assert isinstance(again.tokenizer, ByteTokenizer) and again.tokenizer.is_trained
    # new content, or new settings, is a new entry
    _write(path, _read(path) + "One more story.\n" + SEP)
    with pytest.raises(AssertionError, match="prepared again"):
        TextSource(str(path), tokenizer=ByteTokenizer(trained=False), cache_dir=tmp_path / "cache")
    with pytest.raises(AssertionError, match="prepared again"):
        TextSource(str(path), val_fraction=0.2, tokenizer=ByteTokenizer(trained=False), cache_dir=tmp_path / "cache")


def test_a_failed_preparation_leaves_no_cache_entry(tmp_path, monkeypatch):
    path, _ = _corpus(tmp_path)

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(text, "encode_files", crash)
    with pytest.raises(RuntimeError):
        TextSource(str(path), tokenizer=ByteTokenizer(), cache_dir=tmp_path / "cache")
    leftovers = [p for p in (tmp_path / "cache" / "text").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_explicit_validation_files_and_no_validation(tmp_path):
    train, train_text = _corpus(tmp_path, 10, "train.txt")
    val, val_text = _corpus(tmp_path, 3, "val.txt")
    data = TextSource([str(train)], val=str(val), tokenizer=ByteTokenizer(), cache_dir=tmp_path / "c")
    assert data.tokenizer.decode(data.tokens("val").tolist()) == val_text
    assert data.tokenizer.decode(data.tokens("train").tolist()) == train_text
    only = TextSource(str(train), val_fraction=0.0, tokenizer=ByteTokenizer(), cache_dir=tmp_path / "c")
    assert only.splits == ("train",)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"train": "missing.txt"}, "missing.txt: data.train text file not found"),
        ({"train": "empty.txt"}, "empty.txt: data.train text file is empty"),
        ({"train": "one.txt"}, "found 1 document"),
        ({"train": "one.txt", "val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
        ({"train": "one.txt", "document_separator": ""}, "document_separator must not be empty"),
        ({"train": "one.txt", "workers": 0}, "workers must be >= 1"),
        ({"train": "one.txt", "dtype": "float16"}, "unknown dtype"),
        ({"train": []}, "needs at least one text file"),
        ({"train": "bad.txt"}, "bad.txt: not valid UTF-8"),
    ],
)
def test_text_source_errors_are_one_line(tmp_path, monkeypatch, kwargs, message):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "empty.txt", "")
    _write(tmp_path / "one.txt", "a single document with no separator")
    (tmp_path / "bad.txt").write_bytes(b"ok\n" + SEP.encode() + b"\n\xff\xfe broken\n" + SEP.encode())
    with pytest.raises(ModulmError, match=message) as info:
        TextSource(tokenizer=ByteTokenizer(), cache_dir=tmp_path / "cache", **kwargs)
    assert "\n" not in str(info.value)
