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
    assert "      (rule: d_model is divisible by num_heads; with RoPE the head width d_model / num_heads is even.)" in out
    assert "  [training]\n      batch_size: int (>= 1) = 32" in out and "(rule: schedule.min_lr is at most optimizer.lr.)" in out


def test_plugins_names_the_kinds_when_asked_for_an_unknown_one(capsys):
    assert main(["plugins", "--kind", "modle"]) == 2
    captured = capsys.readouterr()
    assert not captured.out
    assert captured.err.strip() == f"modulm: error: --kind 'modle': not a component kind; choose one of {', '.join(KINDS)}"
    assert main(["plugins", "--kind", "ffn"]) == 0
    out = capsys.readouterr().out
    assert "\nffn:\n" in out and "\nmodel:\n" not in out


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
    # batch_size 16, context 256: 2 x 8 bytes x 16 x 256
    assert "\nToken ids per micro-batch: 16 x 256 inputs and targets (int64) = 64.00 KiB\nActivations per micro-batch: at " in out
    assert main(["info", str(ROOT / "recipes" / "base.toml"), "training.grad_accum_steps=4"]) == 0
    assert "Token ids per micro-batch: 4 x 256 inputs and targets (int64) = 16.00 KiB" in capsys.readouterr().out


def _starter_lines(text: str) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(table, key) -> (value text, the default named by a "starter value" mark or None)."""
    import re

    table, out = "", {}
    for line in text.splitlines():
        if line.startswith("["):
            table = line.strip("[]")
        match = re.match(r"^(\w+) = (.*?)(?:  # starter value; default: (.*))?$", line)
        if match and not line.startswith("#"):
            out[(table, match.group(1))] = (match.group(2), match.group(3))
    return out


def test_init_writes_the_defaults_except_the_values_it_marks(tmp_path, monkeypatch):
    from modulm.schema import schema_of
    from modulm.settings import recipe_schema
    from modulm.tomlwrite import _value
    from modulm.validate import copy_default
    from tests.kit_support import REGISTRY

    monkeypatch.chdir(ROOT)
    out = tmp_path / "starter.toml"
    assert main(["init", str(out)]) == 0
    lines = _starter_lines(out.read_text())
    schemas = {p.name: schema_of(p.settings) for p in schema_of(recipe_schema).params if p.settings is not None}
    schemas["model"] = REGISTRY.get("model", "transformer").schema
    schemas["optimizer"] = REGISTRY.get("optimizer", "adamw").schema
    schemas["data.tokenizer"] = REGISTRY.get("tokenizer", "bpe").schema
    marked = set()
    for (table, key), (value, named_default) in lines.items():
        param = schemas[table].get(key) if table in schemas else None
        if param is None or isinstance(param.default, type) or param.required:
            continue
        default = _value(copy_default(param.default))
        if named_default is None:
            assert value == default, (table, key, value, default)
        else:
            assert value != default and named_default == default, (table, key, value, named_default)
            marked.add(f"{table}.{key}")
    assert {"training.batch_size", "model.d_model", "data.tokenizer.vocab_size"} <= marked


def test_init_outside_the_repository_points_at_the_shipped_corpus_by_absolute_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["init", "r.toml"]) == 0
    data = tomllib.loads((tmp_path / "r.toml").read_text())
    assert Path(data["data"]["train"]).is_absolute() and Path(data["data"]["train"]).is_file()
    assert "warning" not in capsys.readouterr().err


def test_init_says_when_the_corpus_it_names_is_not_there(tmp_path, monkeypatch, capsys):
    from modulm.cli import init

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(init, "SHIPPED_CORPUS", "data/not-shipped.txt.xz")
    assert main(["init", "r.toml"]) == 0
    text = (tmp_path / "r.toml").read_text()
    assert 'train = "data/not-shipped.txt.xz"\n' + init.MISSING_CORPUS in text
    err = capsys.readouterr().err
    assert err.startswith("modulm: warning: r.toml: data.train names the corpus shipped") and len(err.splitlines()) == 1
