"""The data plugin with the real BPE tokenizer: ``modulm data prepare``, the text source built from a
recipe table, and bits-per-byte support for memmap files with a tokenizer."""

import lzma
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modulm.assemble import create
from modulm.cli import main
from modulm_bpe import BPETokenizer
from modulm_data import MemmapSource, TextSource
from modulm_data.prepare import encode_files
from tests.bpe_support import corpus_slice

SEP = "<|endoftext|>"


def _corpus_head(chars: int) -> str:
    return corpus_slice("tinystories_v2_train_head2M.txt", chars)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    (folder / "train.txt").write_text(_corpus_head(60_000), encoding="utf-8", newline="")
    tokenizer = BPETokenizer(vocab_size=400, special_tokens=[SEP]).train([folder / "train.txt"])
    tokenizer.save(folder / "bpe")
    return folder / "bpe"


def run_cli(capsys, *argv):
    code = main(["data", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


# -- prepare -----------------------------------------------------------------------------------
texts = st.lists(st.one_of(st.text(max_size=40), st.sampled_from([SEP, "\n", "Once upon a time", " caf\u00e9\r\n"])),
                 max_size=20).map("".join).filter(bool)


@given(content=texts)
def test_prepare_then_decode_gives_the_input(tokenizer_dir, tmp_path_factory, content):
    """Exact round trip: no normalisation is applied (newlines, unicode and special tokens kept)."""
    folder = tmp_path_factory.mktemp("prep")
    path = folder / "in.txt"
    path.write_text(content, encoding="utf-8", newline="")  # (empty files are refused: test_prepare_bad_input)
    tokenizer = BPETokenizer.load(tokenizer_dir)
    result = encode_files([path], tokenizer, folder / "out.npy", "uint16", workers=1)
    ids = np.load(folder / "out.npy")
    assert result.tokens == len(ids) and tokenizer.decode(ids.tolist()) == content
    assert result.bytes == len(content.encode("utf-8"))


def test_prepare_cli_encodes_in_parallel_and_reports(tokenizer_dir, tmp_path, capsys):
    text = _corpus_head(40_000)
    (tmp_path / "a.txt").write_text(text[:25_000], encoding="utf-8", newline="")
    with lzma.open(tmp_path / "b.txt.xz", "wt", encoding="utf-8", newline="") as fh:
        fh.write(text[25_000:])
    outputs = {}
    for workers in (1, 2):
        out_path = tmp_path / f"out{workers}.npy"
        code, out, err = run_cli(capsys, "prepare", "--tokenizer", tokenizer_dir, "--input", tmp_path / "a.txt",
                                 tmp_path / "b.txt.xz", "--output", out_path, "--workers", workers)
        assert code == 0, err
        outputs[workers] = np.load(out_path)
        assert f"wrote {len(outputs[workers]):,} tokens (uint16)" in out and "bytes/token" in out
    assert np.array_equal(outputs[1], outputs[2])
    tokenizer = BPETokenizer.load(tokenizer_dir)
    assert tokenizer.decode(outputs[2].tolist()) == text
    code, out, _ = run_cli(capsys, "inspect", tmp_path / "out2.npy", "--tokenizer", tokenizer_dir, "--show", 8)
    assert code == 0 and repr(tokenizer.decode(outputs[2][:8].tolist())) in out and "bytes/token" in out


def test_prepare_cli_does_not_import_torch(tokenizer_dir, tmp_path):
    """The dataset utilities start in a fraction of torch's import time (it is not needed)."""
    (tmp_path / "a.txt").write_text(_corpus_head(5_000), encoding="utf-8", newline="")
    script = (
        "import sys\n"
        "from modulm.cli import main\n"
        f"code = main(['data', 'prepare', '--tokenizer', {str(tokenizer_dir)!r}, '--input', {str(tmp_path / 'a.txt')!r},"
        f" '--output', {str(tmp_path / 'a.npy')!r}, '--workers', '2'])\n"
        "assert code == 0, code\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert len(np.load(tmp_path / "a.npy")) > 0


@pytest.mark.parametrize(
    "setup,argv,message",
    [
        (None, ["--input", "{d}/missing.txt"], "missing.txt: input file not found"),
        ("empty", ["--input", "{d}/in.txt"], "in.txt: input file is empty"),
        ("bad-utf8", ["--input", "{d}/in.txt"], "in.txt: not valid UTF-8 text"),
        ("text", ["--input", "{d}/in.txt", "--workers", 0], "--workers must be >= 1"),
        ("text", ["--input", "{d}/in.txt", "--tokenizer", "{d}/nothing"], "nothing: tokenizer directory not found"),
        ("text", ["--input", "{d}/in.txt", "--output", "{d}/out.txt"], "must end in .npy"),
        ("text", ["--input", "{d}/in.txt", "--output", "{d}/sub/out.npy"], "does not exist"),
    ],
)
def test_prepare_bad_input(tokenizer_dir, tmp_path, capsys, setup, argv, message):
    if setup == "empty":
        (tmp_path / "in.txt").write_text("")
    elif setup == "bad-utf8":
        (tmp_path / "in.txt").write_bytes(b"fine text " * 10_000 + b"\xff\xfe\n")
    elif setup == "text":
        (tmp_path / "in.txt").write_text("Once upon a time." + SEP)
    argv = [str(a).format(d=tmp_path) for a in argv]
    if "--tokenizer" not in argv:
        argv += ["--tokenizer", str(tokenizer_dir)]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "out.npy")]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_cli(capsys, "prepare", *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# -- the text source from a recipe table -------------------------------------------------------
def test_text_source_trains_bpe_on_the_train_split(registry, tmp_path):
    text = _corpus_head(80_000)
    text = text[: text.rindex(SEP) + len(SEP) + 1]
    corpus = tmp_path / "stories.txt.xz"
    with lzma.open(corpus, "wt", encoding="utf-8", newline="") as fh:
        fh.write(text)
    table = {"component": "text", "train": str(corpus), "val_fraction": 0.2,
             "tokenizer": {"component": "bpe", "vocab_size": 320}}
    data = create(registry, "data", table, seed=0, cache_dir=tmp_path / "cache")
    assert isinstance(data, TextSource) and data.vocab_size == 320
    train_text = data.tokenizer.decode(data.tokens("train").tolist())
    val_text = data.tokenizer.decode(data.tokens("val").tolist())
    assert train_text + val_text == text
    documents = text.count(SEP)
    assert val_text.count(SEP) == round(documents * 0.2)
    assert data.bytes_per_token("val") == pytest.approx(len(val_text.encode()) / len(data.tokens("val")))
    reloaded = BPETokenizer.load(data.entry / "tokenizer")
    assert reloaded.fingerprint() == data.tokenizer.fingerprint()
    again = create(registry, "data", table, seed=0, cache_dir=tmp_path / "cache")
    assert again.loaded_from_cache and again.tokenizer.fingerprint() == data.tokenizer.fingerprint()


def test_memmap_with_a_tokenizer_knows_bytes_per_token(tokenizer_dir, tmp_path):
    text = _corpus_head(20_000)
    tokenizer = BPETokenizer.load(tokenizer_dir)
    np.save(tmp_path / "t.npy", np.array(tokenizer.encode(text), dtype=np.uint16))
    data = MemmapSource(str(tmp_path / "t.npy"), tokenizer.vocab_size, tokenizer=str(tokenizer_dir))
    assert data.tokenizer.decode(data.tokens("train")[:50].tolist()) == tokenizer.decode(tokenizer.encode(text)[:50])
    assert data.bytes_per_token("train") == pytest.approx(len(text.encode()) / len(data.tokens("train")))
