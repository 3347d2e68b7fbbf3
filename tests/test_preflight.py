"""Preflight: a mistake found before ``modulm run`` writes anything leaves the file system as it was,
and the command line parses overrides and options the way people type them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from modulm import rundir
from modulm.errors import ModulmError
from modulm.settings import CheckpointSettings
from tests.runkit import cli, one_error_line, snapshot, tiny_recipe, write_recipe


def _refused(tmp_path, capsys, recipe, *args, fragments=()):
    """Run a recipe that must fail preflight: one line, exit 2, nothing under tmp_path changed."""
    path = write_recipe(tmp_path, recipe)
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "run", path, *args)
    assert code == 2, err
    line = one_error_line(err, *fragments)
    assert snapshot(tmp_path) == before
    return line


def test_an_empty_checkpoint_dir_is_refused(tmp_path, capsys):
    _refused(tmp_path, capsys, tiny_recipe(tmp_path, checkpointing={"checkpoint_dir": ""}),
             fragments=("checkpointing.checkpoint_dir", "empty"))  # the declared range or preflight


def test_a_checkpoint_dir_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    line = _refused(tmp_path, capsys, tiny_recipe(tmp_path, checkpointing={"checkpoint_dir": str(tmp_path / "afile/a/run")}),
                    fragments=("checkpointing.checkpoint_dir", "is a file, not a directory"))
    assert str(tmp_path / "afile") in line


def test_a_checkpoint_dir_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    _refused(tmp_path, capsys, tiny_recipe(tmp_path, checkpointing={"checkpoint_dir": str(tmp_path / "afile")}),
             fragments=("exists and is not a directory",))


def test_an_unwritable_checkpoint_dir_is_refused_and_the_probe_leaves_nothing(tmp_path, capsys, monkeypatch):
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)  # root ignores chmod; the probe is what fails
    _refused(tmp_path, capsys, tiny_recipe(tmp_path, checkpointing={"checkpoint_dir": str(tmp_path / "new/run")}),
             fragments=("cannot write", "Permission denied", f"in {tmp_path}, where it would be created"))


def test_the_probe_is_removed(tmp_path):
    before = snapshot(tmp_path)
    assert rundir.check_writable(str(tmp_path / "a" / "b")) == tmp_path / "a" / "b"
    assert snapshot(tmp_path) == before


def test_plan_writes_nothing_and_prepare_does(tmp_path):
    settings = CheckpointSettings(checkpoint_dir=str(tmp_path / "run"))
    plan = rundir.plan(settings)
    assert plan.resume is None and not (tmp_path / "run").exists()
    assert rundir.prepare(plan) == (tmp_path / "run", None) and (tmp_path / "run").is_dir()


def test_a_missing_optional_logger_package_is_found_before_the_run_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    recipe = tiny_recipe(tmp_path, loggers=["console", {"component": "tensorboard"}])
    _refused(tmp_path, capsys, recipe, fragments=("loggers.1", "pip install 'modulm[tensorboard]'"))


@pytest.mark.parametrize("data, fragment", [
    ({"train": "missing.npy"}, "missing.npy: token file not found"),
    ({"vocab_size": 10}, ">= vocab_size 10"),
    ({"train": "short.npy"}, "too few for context_length 16"),
    ({"train": "floats.npy"}, "token files must hold"),
    ({"train": "matrix.npy"}, "must be 1-D"),
    ({"train": "empty.npy"}, "empty"),
])
def test_bad_data_is_refused_before_the_run_directory(tmp_path, capsys, data, fragment):
    np.save(tmp_path / "short.npy", np.arange(10, dtype=np.uint16))
    np.save(tmp_path / "floats.npy", np.zeros(100, dtype=np.float32))
    np.save(tmp_path / "matrix.npy", np.zeros((10, 10), dtype=np.uint16))
    np.save(tmp_path / "empty.npy", np.zeros(0, dtype=np.uint16))
    recipe = tiny_recipe(tmp_path)
    recipe["data"].update({k: str(tmp_path / v) if k == "train" else v for k, v in data.items()})
    _refused(tmp_path, capsys, recipe, fragments=(fragment,))


@pytest.fixture
def stopped_run(tmp_path):
    """A run stopped at iteration 2 (checkpoint_2.pt) in tmp_path/run."""
    from modulm.assemble import assemble
    from modulm.trainer import Trainer

    Trainer(assemble(tiny_recipe(tmp_path))).run(stop_at=2)
    return tmp_path


def test_resuming_with_a_shape_changing_recipe_is_refused_key_by_key(stopped_run, capsys):
    recipe = tiny_recipe(stopped_run, model={"d_model": 48})
    line = _refused(stopped_run, capsys, recipe, fragments=(
        "checkpoint_2.pt: the checkpoint is of a different model",
        "token_embeddings.weight is (64, 32) in the checkpoint, (64, 48) in this model",
        "the recipe changed model.d_model 32 -> 48", "--overwrite"))
    assert "optimizer" not in line


def test_resuming_with_a_different_vocabulary_is_refused(stopped_run, capsys):
    np.save(stopped_run / "big.npy", np.random.default_rng(0).integers(0, 100, 4000, dtype=np.uint16))
    recipe = tiny_recipe(stopped_run, data={"train": str(stopped_run / "big.npy"), "vocab_size": 100})
    _refused(stopped_run, capsys, recipe, fragments=("(64, 32) in the checkpoint, (100, 32)", "data.vocab_size 64 -> 100"))


def test_resuming_a_damaged_latest_checkpoint_names_it(stopped_run, capsys):
    (stopped_run / "run" / "checkpoint_2.pt").write_bytes(b"")
    _refused(stopped_run, capsys, tiny_recipe(stopped_run), fragments=("checkpoint_2.pt: empty file",))


def test_refusing_an_existing_run_without_resume_writes_nothing(stopped_run, capsys):
    recipe = tiny_recipe(stopped_run, checkpointing={"resume": False})
    _refused(stopped_run, capsys, recipe, fragments=("already holds a run", "--overwrite"))


# -- the command line --------------------------------------------------------------------------
def test_overrides_may_follow_options(tmp_path, capsys):
    path = write_recipe(tmp_path, tiny_recipe(tmp_path))
    code, out, err = cli(capsys, "run", path, "--overwrite", "training.max_iterations=2", "logging.eval_interval=0")
    assert code == 0, err
    assert "Iter      1/2" in out and "Iter      2/" not in out


@pytest.mark.parametrize("args, fragments", [
    (["--batch_size", "64"], ("unknown option --batch_size", "write training.batch_size=64")),
    (["--batch-size=64"], ("write training.batch_size=64",)),
    (["--lr", "1e-3"], ("write optimizer.lr=1e-3",)),
    (["--learning_rate", "1e-3"], ("write optimizer.lr=1e-3",)),
    (["--d_model", "128"], ("write model.d_model=128",)),
    (["--warmup_iters", "5"], ("write schedule.warmup_iters=5",)),
    (["--max_iters", "5"], ("write training.max_iterations=5",)),
    (["--frobnicate"], ("unknown option --frobnicate", "modulm run --help")),
    (["stray"], ("override 'stray': expected KEY.PATH=VALUE",)),
    (["--overwrite", "stray"], ("override 'stray': expected KEY.PATH=VALUE",)),
    (["--nproc", "0"], ("--nproc must be >= 1",)),
    (["--nproc", "two"], ("invalid int value: 'two'",)),
    (["--resume"], ("--resume: expected one argument",)),
    (["model.num_layers=10000000000"], ("model.num_layers: 10000000000 is out of range: must be in [1, 4096]",)),
])
def test_command_line_mistakes_are_one_line_and_write_nothing(tmp_path, capsys, args, fragments):
    path = write_recipe(tmp_path, tiny_recipe(tmp_path))
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "run", path, *args)
    assert code == 2
    one_error_line(err, *fragments)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("args, fragment", [
    (["trian", "r.toml"], "invalid choice: 'trian'"),
    (["run"], "the following arguments are required: recipe"),
    (["generate", "a.pt", "b.pt"], "unexpected argument 'b.pt'"),
    (["generate", "a.pt", "--max-tokens", "lots"], "invalid int value"),
    (["export", "--format"], "--format: expected one argument"),
    (["info"], "the following arguments are required: recipe"),
])
def test_argparse_errors_are_one_line_exit_2(capsys, args, fragment):
    code, out, err = cli(capsys, *args)
    assert code == 2 and not out.strip()
    one_error_line(err, fragment)


@pytest.mark.parametrize("args, fragment", [
    (["--temperature", "nan"], "--temperature must be finite and >= 0 (0 is greedy), got nan"),
    (["--temperature", "inf"], "--temperature must be finite and >= 0 (0 is greedy), got inf"),
    (["--temperature", "-1"], "--temperature must be finite and >= 0 (0 is greedy), got -1.0"),
    (["--top-p", "0"], "--top-p must be in (0, 1] (1 is off), got 0.0"),
    (["--top-p", "nan"], "--top-p must be in (0, 1] (1 is off), got nan"),
    (["--max-tokens", "-2"], "--max-tokens must be >= 0, got -2"),
    (["--seed", "-1"], "--seed must be in [0, 2^63), got -1"),
    (["--seed", str(2**64)], f"--seed must be in [0, 2^63), got {2**64}"),
])
def test_generate_settings_out_of_range_are_one_line_before_the_checkpoint_is_read(capsys, args, fragment):
    code, out, err = cli(capsys, "generate", "no-such.pt", *args)
    assert code == 2 and not out.strip()
    one_error_line(err, fragment)


def test_a_disk_error_outside_a_save_is_one_line(tmp_path, capsys, monkeypatch):
    from modulm.cli import validate as validate_command

    def broken(args):
        raise OSError(5, "Input/output error", str(tmp_path / "x.toml"))

    monkeypatch.setattr(validate_command, "run", broken)
    code, _, err = cli(capsys, "validate", tmp_path / "x.toml")
    assert code == 2
    one_error_line(err, "x.toml: Input/output error")


def test_a_torch_file_of_the_wrong_run_is_refused_by_the_early_check(stopped_run, capsys):
    state = torch.load(stopped_run / "run" / "checkpoint_2.pt", weights_only=True)
    state["model"]["token_embeddings.weight"] = torch.zeros(64, 40)
    torch.save(state, stopped_run / "other.pt")
    recipe = tiny_recipe(stopped_run, checkpointing={"checkpoint_dir": str(stopped_run / "fresh")})
    _refused(stopped_run, capsys, recipe, "--resume", stopped_run / "other.pt",
             fragments=("other.pt: the checkpoint is of a different model", "(64, 40) in the checkpoint"))
    with pytest.raises(ModulmError):
        rundir.plan(CheckpointSettings(checkpoint_dir=str(stopped_run / "x"), resume_from=str(stopped_run / "nope.pt")))
    assert not Path(stopped_run / "x").exists()
