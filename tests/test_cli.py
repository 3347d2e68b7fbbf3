"""The command line: version, plugins listing, validate errors, init, info, one-line user errors."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from modulm.cli import main
from modulm.kinds import KINDS

ROOT = Path(__file__).resolve().parents[1]


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and "modulm 0.1.0" in capsys.readouterr().out


def test_plugins_lists_every_kind_and_builtin(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for kind in KINDS:
        assert f"\n{kind}:\n" in out
    for plugin in ("transformer", "optim", "bpe", "data", "loggers"):
        assert f"  {plugin:<14} modulm 0.1.0" in out
    assert "  adamw  [optim]  " in out and "lr: float (> 0) = 0.0003" in out and "(injected: params)" in out


def test_validate_reports_both_problems_with_file_path_and_hint(tmp_path, capsys):
    recipe = tmp_path / "bad.toml"
    recipe.write_text('[data]\ncomponent = "memmap"\ntrain = "x.npy"\nvocab_size = 10\n'
                      '[optimizer]\ncomponent = "adamw"\nlrr = 0.1\n[model]\nnum_layer = 2\n')
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("modulm: error: ") for line in err)
    assert "bad.toml: optimizer.lrr: unknown key; did you mean 'lr'? [optimizer 'adamw' from plugin 'optim']" in err[0] + err[1]
    assert "bad.toml: model.num_layer: unknown key; did you mean 'num_layers'?" in err[0] + err[1]


def test_user_errors_are_one_line_without_traceback_and_debug_shows_it(tmp_path):
    missing = tmp_path / "nope.toml"
    quiet = subprocess.run([sys.executable, "-m", "modulm", "validate", str(missing)], capture_output=True, text=True)
    assert quiet.returncode == 2 and quiet.stderr.strip() == f"modulm: error: {missing}: recipe file not found"
    loud = subprocess.run([sys.executable, "-m", "modulm", "--debug", "validate", str(missing)], capture_output=True, text=True)
    assert "Traceback" in loud.stderr


def test_init_writes_a_recipe_that_validates_and_lists_every_setting(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the starter points at the corpus shipped in the repository
    out = tmp_path / "starter.toml"
    assert main(["init", str(out)]) == 0
    data = tomllib.loads(out.read_text())
    for table in ("data", "model", "optimizer", "schedule", "training", "checkpointing", "logging", "system", "generation"):
        assert table in data
    for key in ("batch_size", "max_iterations", "grad_clip"):
        assert key in data["training"]
    assert {"lr", "beta1", "beta2", "weight_decay"} <= data["optimizer"].keys()
    assert {"warmup_iters", "min_lr"} <= data["schedule"].keys()
    assert {"device", "dtype", "compile", "seed"} <= data["system"].keys()
    assert "# resume_from =" in out.read_text()
    assert main(["validate", str(out)]) == 0
    assert main(["init", str(out)]) == 2  # no silent overwrite
    assert "already exists" in capsys.readouterr().err


def test_info_reports_parameters_and_flops(capsys):
    assert main(["info", str(ROOT / "recipes" / "base.toml")]) == 0
    out = capsys.readouterr().out
    assert "vocab_size 4096" in out and "1,840,256" in out and "FLOP" in out
