"""A third-party plugin (tests/third_party/modulm-acme-tools), pip-installed for real, adds a
subcommand, an exporter and a tokenizer; the built-in commands serve its tokenizer too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modulm.assemble import builder
from tests.test_example_plugin import install_for_real, modulm

ACME = Path(__file__).resolve().parent / "third_party" / "modulm-acme-tools"
TINY = {"component": "transformer", "context_length": 8, "d_model": 16, "num_layers": 1, "num_heads": 2, "d_ff": 32}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    return install_for_real(ACME, tmp_path_factory.mktemp("site"))


@pytest.fixture
def checkpoint(tmp_path, modulm_pm):
    model_builder = builder(modulm_pm.registry, "model", TINY)
    model = model_builder(vocab_size=40)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "iteration": 0, "recipe": {"model": model_builder.to_table()},
                "meta": {"vocab_size": 40}}, path)
    return path, model


def test_its_subcommand_runs_and_is_listed_and_blocked(installed, tmp_path):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "acme-bytes.json").write_text("{}")
    (tmp_path / "a.txt").write_text("héllo", encoding="utf-8")
    done = modulm(installed, "acme-count", str(tmp_path / "a.txt"), "--tokenizer", str(tmp_path / "tok"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "a.txt: 6 tokens"  # é is two UTF-8 bytes
    assert "acme-count" in modulm(installed, "--help").stdout
    blocked = modulm(installed, "-p", "no:acme", "acme-count", "x")
    assert blocked.returncode == 2 and "invalid choice: 'acme-count'" in blocked.stderr
    missing = modulm(installed, "acme-count", str(tmp_path / "nope.txt"), "--tokenizer", str(tmp_path / "tok"))
    assert missing.returncode == 2 and missing.stderr.strip() == f"modulm: error: {tmp_path / 'nope.txt'}: file not found"


def test_its_exporter_writes_the_builtin_transformer(installed, checkpoint, tmp_path):
    path, model = checkpoint
    listed = modulm(installed, "export", str(path), "--list-formats")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == ["acme-npz", "hf-llama", "safetensors"]
    assert "[acme]" in listed.stdout
    done = modulm(installed, "export", str(path), str(tmp_path / "out"), "--format", "acme-npz")
    assert done.returncode == 0, done.stderr
    arrays = np.load(tmp_path / "out" / "weights.npz")
    for name, tensor in model.state_dict().items():
        assert np.array_equal(arrays[name.replace(".", "__")], tensor.numpy()), name
    blocked = modulm(installed, "-p", "no:acme", "export", str(path), str(tmp_path / "o2"), "--format", "acme-npz")
    assert blocked.returncode == 2
    assert "unknown export format 'acme-npz'; formats for model 'transformer': hf-llama, safetensors" in blocked.stderr


def test_data_prepare_uses_a_third_party_tokenizer_without_the_bpe_plugin(installed, tmp_path):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "acme-bytes.json").write_text("{}")
    (tmp_path / "a.txt").write_text("abc abc\n" * 50, encoding="utf-8")
    done = modulm(installed, "-p", "no:bpe", "data", "prepare", "--tokenizer", str(tmp_path / "tok"),
                  "--input", str(tmp_path / "a.txt"), "--output", str(tmp_path / "a.npy"), "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "a.npy").tolist() == list(b"abc abc\n" * 50)
    assert "tokenizer" not in modulm(installed, "-p", "no:bpe", "--help").stdout
