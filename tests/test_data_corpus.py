"""The corpus shipped in data/: intact, licensed, and usable by the text source as it stands."""

import hashlib
import lzma
from pathlib import Path

import pytest

from modulm_data import TextSource

FOLDER = Path(__file__).resolve().parents[1] / "data" / "tinystories"
CORPUS = FOLDER / "tinystories_v2_train_head2M.txt.xz"
SEP = "<|endoftext|>"


@pytest.fixture(scope="module")
def text():
    with lzma.open(CORPUS, "rt", encoding="utf-8", newline="") as fh:
        return fh.read()


def test_the_corpus_is_the_documented_file(text):
    raw = text.encode("utf-8")
    assert hashlib.sha256(raw).hexdigest() == "ba02237f5747a07d420cb7329f721fdc51b6f5c35a81788b9c4bb871e15ff30a"
    assert len(raw) == 2_096_346 and text.count(SEP) == 2_316 and text.endswith(SEP + "\n")
    readme = (FOLDER / "README.md").read_text(encoding="utf-8")
    assert "ba02237f5747a07d420cb7329f721fdc51b6f5c35a81788b9c4bb871e15ff30a" in readme and "2,316" in readme


def test_the_licence_and_attribution_travel_with_it():
    licence = (FOLDER / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("Community Data License Agreement - Sharing - Version 1.0")
    assert "3.3 If You Publish Data You Receive, You must do so under an unmodified form" in licence
    readme = (FOLDER / "README.md").read_text(encoding="utf-8")
    for needed in ("CDLA-Sharing-1.0", "Eldan", "roneneldan/TinyStories", "Notice of changes", "806 bytes"):
        assert needed in readme


def test_the_text_source_holds_out_the_last_stories(tmp_path, text):
    data = TextSource(str(CORPUS), tokenizer={"component": "bpe", "vocab_size": 300}, workers=2, cache_dir=tmp_path)
    val_text = data.tokenizer.decode(data.tokens("val").tolist())
    train_text = data.tokenizer.decode(data.tokens("train").tolist())
    assert train_text + val_text == text
    assert val_text.count(SEP) == 232 and data.meta["documents"] == {"train": 2084, "val": 232}
    assert data.bytes_per_token("train") == len(train_text.encode()) / len(data.tokens("train"))
