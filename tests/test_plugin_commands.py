"""Commands that plugins add: present with their plugin, gone with ``-p no:NAME``; how they parse."""

from __future__ import annotations

import lzma

import pytest
import torch

from modulm.assemble import builder
from modulm.cli import main
from modulm_bpe import Tokenizer
from tests.test_bpe_cli import corpus, saved  # noqa: F401 (fixtures)

EOT = "<|endoftext|>"


def help_commands(capsys, *options) -> set[str]:
    with pytest.raises(SystemExit):
        main([*options, "--help"])
    out = capsys.readouterr().out
    listed = out.split("COMMAND\n", 2)[-1].split("options:")[0]
    return {line.split()[0] for line in listed.splitlines() if line.startswith("    ") and line.split()}


def test_tokenizer_and_data_come_and_go_with_their_plugins(capsys):
    assert {"tokenizer", "data", "run", "export"} <= help_commands(capsys)
    without_bpe = help_commands(capsys, "-p", "no:bpe")
    assert "tokenizer" not in without_bpe and "data" in without_bpe
    assert "data" not in help_commands(capsys, "-p", "no:data")
    with pytest.raises(SystemExit) as done:
        main(["-p", "no:bpe", "tokenizer", "info", "x"])
    assert done.value.code == 2 and "invalid choice: 'tokenizer'" in capsys.readouterr().err


def test_tokenizer_train_reads_xz_like_plain_text(corpus, tmp_path, capsys):
    packed = tmp_path / "corpus.txt.xz"
    packed.write_bytes(lzma.compress(corpus.read_bytes()))
    for name, source in (("plain", corpus), ("packed", packed)):
        assert main(["tokenizer", "train", "--input", str(source), "--vocab-size", "300", "--special-token", EOT,
                     "--out", str(tmp_path / name), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count(f"{corpus.stat().st_size / 1e6:.2f} MB") == 2  # the text's size, not the archive's
    plain, unpacked = Tokenizer.load(tmp_path / "plain"), Tokenizer.load(tmp_path / "packed")
    assert unpacked.merges == plain.merges and unpacked.vocab == plain.vocab and len(plain.merges) == 300 - 257


def test_tokenizer_train_names_a_missing_input_before_writing(corpus, tmp_path, capsys):
    code = main(["tokenizer", "train", "--input", str(corpus), str(tmp_path / "gone.txt.xz"), "--vocab-size", "300",
                 "--out", str(tmp_path / "tok"), "--no-progress"])
    assert code == 2 and capsys.readouterr().err.strip() == f"modulm: error: input file not found: {tmp_path / 'gone.txt.xz'}"
    assert not (tmp_path / "tok").exists()


def test_encode_takes_its_options_before_or_after_the_text(saved, capsys):
    outputs = []
    for argv in (["tok", "the cat", "--tokens"], ["tok", "--tokens", "the cat"], ["--tokens", "tok", "the cat"]):
        argv = [str(saved) if a == "tok" else a for a in argv]
        assert main(["tokenizer", "encode", *argv]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == outputs[2] and "\t" in outputs[0]


def test_export_refuses_a_named_tokenizer_directory_that_does_not_exist(modulm_pm, tmp_path, capsys):
    bound = builder(modulm_pm.registry, "model", {"component": "transformer", "context_length": 8, "d_model": 16,
                                                  "num_layers": 1, "num_heads": 2, "d_ff": 32})
    torch.save({"model": bound(vocab_size=20).state_dict(), "iteration": 0, "recipe": {"model": bound.to_table()},
                "meta": {"vocab_size": 20}}, tmp_path / "ckpt.pt")
    code = main(["export", str(tmp_path / "ckpt.pt"), str(tmp_path / "out"), "--tokenizer", str(tmp_path / "no_such_dir")])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"modulm: error: {tmp_path / 'no_such_dir'}: tokenizer directory not found"
    assert not (tmp_path / "out").exists()
