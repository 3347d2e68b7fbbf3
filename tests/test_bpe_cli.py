"""``modulm tokenizer train|encode|decode|info`` end to end, and its one-line errors."""

from __future__ import annotations

import pytest

from modulm.cli import main
from modulm_bpe import Tokenizer
from tests.bpe_support import corpus_slice

EOT = "<|endoftext|>"


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_slice("tinystories_v2_train_head2M.txt", 100_000), encoding="utf-8")
    return path


def test_train_writes_a_loadable_tokenizer_and_a_summary(corpus, tmp_path, capsys):
    out = tmp_path / "tok"
    code = main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "400",
                 "--special-token", EOT, "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "vocab size 400 (special tokens 1, bytes 256, merges 143)" in printed
    assert "trained in" in printed and "longest token" in printed and "bytes/token" in printed
    tokenizer = Tokenizer.load(out)
    assert tokenizer.vocab_size == 400 and tokenizer.special_tokens == [EOT]


def test_a_text_too_small_for_the_vocabulary_warns_and_an_empty_one_is_refused(tmp_path, capsys):
    (tmp_path / "small.txt").write_text("abab abab", encoding="utf-8")
    assert main(["tokenizer", "train", "--input", str(tmp_path / "small.txt"), "--vocab-size", "300",
                 "--out", str(tmp_path / "tok"), "--no-progress"]) == 0
    captured = capsys.readouterr()
    vocab = Tokenizer.load(tmp_path / "tok").vocab_size
    assert 256 < vocab < 300 and f"vocab size {vocab} " in captured.out
    assert captured.err.strip() == (f"modulm: warning: {vocab} tokens, fewer than --vocab-size 300: the input has no "
                                    "more pairs of tokens to merge")
    (tmp_path / "empty.txt").write_text("")
    assert main(["tokenizer", "train", "--input", str(tmp_path / "empty.txt"), "--vocab-size", "300",
                 "--out", str(tmp_path / "none"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == f"modulm: error: {tmp_path / 'empty.txt'}: no text to train on (the input is empty)"
    assert not (tmp_path / "none").exists()


def test_a_run_directory_given_for_its_tokenizer_points_to_it(saved, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(saved, run / "tokenizer")
    assert main(["tokenizer", "info", str(run)]) == 2
    assert capsys.readouterr().err.strip() == (f"modulm: error: tokenizer file not found: {run / 'vocab.json'}; did you "
                                               f"mean {run / 'tokenizer'}? (a run directory keeps its tokenizer there)")


@pytest.fixture
def saved(corpus, tmp_path, capsys):
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "300",
                 "--special-token", EOT, "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    return out


def test_encode_then_decode(saved, capsys, tmp_path):
    text = f"Once upon a time{EOT} the end"
    assert main(["tokenizer", "encode", str(saved), text]) == 0
    ids = capsys.readouterr().out.split()
    assert [int(i) for i in ids] == Tokenizer.load(saved).encode(text)
    assert main(["tokenizer", "decode", str(saved), *ids]) == 0
    assert capsys.readouterr().out == text
    sample = tmp_path / "sample.txt"
    sample.write_text(text, encoding="utf-8")
    assert main(["tokenizer", "encode", str(saved), "--input", str(sample)]) == 0
    assert capsys.readouterr().out.split() == ids


def test_encode_tokens_view(saved, capsys):
    assert main(["tokenizer", "encode", str(saved), "Once", "--tokens"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert all("\t" in line for line in lines)
    assert "".join(eval(line.split("\t")[1]).decode() for line in lines) == "Once"  # noqa: S307 (bytes reprs)


def test_info(saved, capsys):
    assert main(["tokenizer", "info", str(saved)]) == 0
    printed = capsys.readouterr().out
    assert "vocab size  300" in printed and "merges      43" in printed
    assert f"'{EOT}'=0" in printed
    assert Tokenizer.load(saved).fingerprint() in printed


@pytest.mark.parametrize("argv, message", [
    (["tokenizer", "train", "--input", "/nonexistent.txt", "--vocab-size", "300", "--out", "x"], "input file not found"),
    (["tokenizer", "train", "--input", "{corpus}", "--vocab-size", "100", "--out", "x"], "too small"),
    (["tokenizer", "train", "--input", "{corpus}", "--vocab-size", "300", "--special-token", "", "--out", "x"], "non-empty"),
    (["tokenizer", "train", "--input", "{corpus}", "--vocab-size", "300", "--special-token", "a|",
      "--special-token", "a|", "--out", "x"], "given twice"),
    (["tokenizer", "train", "--input", "{bad}", "--vocab-size", "300", "--out", "x"], "byte offset 3"),
    (["tokenizer", "info", "/nonexistent-dir"], "directory not found"),
    (["tokenizer", "decode", "{saved}", "12", "x"], "not a token id"),
    (["tokenizer", "decode", "{saved}", "99999"], "99999 is not in the vocabulary"),
])
def test_user_errors_exit_2_with_one_line(argv, message, corpus, saved, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xff")
    argv = [a.format(corpus=corpus, bad=bad, saved=saved) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("modulm: error: ") and message in err and "\n" not in err
