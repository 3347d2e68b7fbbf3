"""Files and disks, interrupts and finished runs: what a run leaves behind in every case."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch

from modulm import fileio
from modulm.assemble import assemble
from modulm.checkpoint import read_checkpoint
from modulm.errors import ModulmError
from modulm.trainer import Trainer
from tests.runkit import cli, one_error_line, snapshot, tiny_recipe, write_recipe


def _temp_files(run: Path) -> list[str]:
    return [p.name for p in run.iterdir() if fileio.is_temp_file(p.name)]


def _failing_save(monkeypatch, fail_at: int, error: OSError):
    """Make the ``fail_at``-th checkpoint save write some bytes and then fail with ``error``."""
    import modulm.checkpoint as checkpoint

    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == fail_at:
            f.write(b"PK\x03\x04 partial")
            raise error
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)


@pytest.mark.parametrize("error, cause", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (PermissionError(errno.EACCES, "Permission denied"), "Permission denied"),
    (OSError(errno.EIO, "Input/output error"), "Input/output error"),
])
def test_a_failing_save_stops_with_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, error, cause):
    recipe = tiny_recipe(tmp_path, logging={"eval_interval": 0})
    _failing_save(monkeypatch, 2, error)  # checkpoint_2.pt is written, checkpoint_4.pt fails
    with pytest.raises(ModulmError) as caught:
        Trainer(assemble(recipe)).run()
    run = tmp_path / "run"
    message = str(caught.value)
    assert "\n" not in message and f"{run / 'checkpoint_4.pt'}: cannot save the checkpoint: {cause}" == message
    assert _temp_files(run) == [] and not (run / "checkpoint_4.pt").exists()
    assert read_checkpoint(run / "checkpoint_2.pt")["iteration"] == 2
    assert message in (run / "training.log").read_text()  # the log says why the run stopped


def test_torch_hiding_the_disk_error_still_names_it(tmp_path, monkeypatch):
    """torch.save reports a failed write as a generic RuntimeError; atomic_write finds the OSError."""
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def __getattr__(self, name):
            return getattr(self.fh, name)

    monkeypatch.setattr(fileio.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(OSError) as caught:
        fileio.atomic_write(tmp_path / "a.pt", lambda fh: torch.save({"w": torch.zeros(10)}, fh))
    assert caught.value.errno == errno.ENOSPC and caught.value.strerror == "No space left on device"
    assert caught.value.filename == str(tmp_path / "a.pt") and os.listdir(tmp_path) == []


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def test_a_full_disk_stops_the_run_with_one_line(tmp_path, capsys):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "900k"):
        pytest.skip("needs root and mount -t tmpfs to make a tiny disk")
    try:
        recipe = tiny_recipe(tmp_path, checkpointing={"checkpoint_dir": str(disk / "run"), "checkpoint_interval": 1},
                             training={"max_iterations": 50}, logging={"eval_interval": 0})
        code, _, err = cli(capsys, "run", write_recipe(tmp_path, recipe))
        assert code == 2
        one_error_line(err, "cannot save the checkpoint: No space left on device", str(disk / "run"))
        run = disk / "run"
        assert _temp_files(run) == []
        kept = sorted(run.glob("checkpoint_*.pt"))
        assert kept and read_checkpoint(kept[-1])["iteration"] >= 1
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_checkpoints_and_recipe_get_the_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        Trainer(assemble(tiny_recipe(tmp_path))).run()
    finally:
        os.umask(old)
    run = tmp_path / "run"
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.iterdir() if p.is_file()}
    assert set(modes.values()) == {0o644}, modes


def test_a_temp_file_left_by_a_killed_save_is_removed_at_the_next_start(tmp_path):
    recipe = tiny_recipe(tmp_path)
    Trainer(assemble(recipe)).run(stop_at=2)
    run = tmp_path / "run"
    stale = [run / ".checkpoint_4.pt.k1ll3d9x.tmp", run / ".final_checkpoint.pt.abcdefgh.tmp"]
    for path in stale:
        path.write_bytes(b"PK\x03\x04 half")
    (run / ".tokenizer.abcdefgh.tmp").mkdir()  # a tokenizer save killed half-way
    (run / ".tokenizer.abcdefgh.tmp" / "vocab.json").write_text("{")
    Trainer(assemble(recipe)).run(stop_at=3)
    assert _temp_files(run) == []
    stale[0].write_bytes(b"half")
    recipe["checkpointing"]["overwrite"] = True
    Trainer(assemble(recipe)).run(stop_at=1)
    assert _temp_files(run) == []


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path)
    path = write_recipe(tmp_path, recipe)
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.toml").write_text("# from the killed run\n")
    (run / "training.log").write_text("the killed run's log\n")
    (run / "metrics.jsonl").write_text('{"event": "train", "step": 0}\n')
    code, out, err = cli(capsys, "run", path)
    assert code == 0, err
    assert "stopped before its first checkpoint; starting it again" in out
    assert "the killed run's log" not in (run / "training.log").read_text()
    assert read_checkpoint(run / "final_checkpoint.pt")["iteration"] == 4


def test_resuming_with_an_edited_recipe_keeps_the_old_recipe_and_says_so(tmp_path):
    Trainer(assemble(tiny_recipe(tmp_path))).run(stop_at=2)
    run = tmp_path / "run"
    Trainer(assemble(tiny_recipe(tmp_path, optimizer={"lr": 1e-3}, training={"max_iterations": 6}))).run()
    old, new = (tomllib.loads((run / name).read_text()) for name in ("recipe.2.toml", "recipe.toml"))
    assert old["optimizer"]["lr"] == 3e-3 and new["optimizer"]["lr"] == 1e-3
    assert read_checkpoint(run / "final_checkpoint.pt")["recipe"]["optimizer"]["lr"] == 1e-3
    log = (run / "training.log").read_text()
    assert "with a changed recipe: optimizer.lr 0.003 -> 0.001, training.max_iterations 4 -> 6" in log
    assert f"kept as {run / 'recipe.2.toml'}" in log


def test_resuming_with_the_same_recipe_keeps_no_history(tmp_path):
    recipe = tiny_recipe(tmp_path)
    Trainer(assemble(recipe)).run(stop_at=2)
    Trainer(assemble(recipe)).run()
    assert sorted(p.name for p in (tmp_path / "run").glob("recipe*.toml")) == ["recipe.toml"]


def test_a_finished_run_run_again_is_complete_and_touches_nothing(tmp_path, capsys):
    path = write_recipe(tmp_path, tiny_recipe(tmp_path))
    assert cli(capsys, "run", path)[0] == 0
    before = snapshot(tmp_path)
    code, out, err = cli(capsys, "run", path)
    assert code == 0 and err == []
    assert out.strip() == (f"run {tmp_path / 'run'} is complete (4 of training.max_iterations = 4); nothing to do. "
                           "Extend it with training.max_iterations=N, or start afresh with --overwrite")
    assert snapshot(tmp_path) == before
    assert Trainer(assemble(tiny_recipe(tmp_path))).run().complete  # the Python API agrees
    assert snapshot(tmp_path) == before
    code, out, _ = cli(capsys, "run", path, "training.max_iterations=6")
    assert code == 0 and "Resuming from" in out and "Iter      5/6" in out
    assert read_checkpoint(tmp_path / "run" / "final_checkpoint.pt")["iteration"] == 6


def test_meta_loss_is_the_last_training_loss_in_every_checkpoint(tmp_path):
    result = Trainer(assemble(tiny_recipe(tmp_path))).run()
    run = tmp_path / "run"
    for name in ("checkpoint_2.pt", "checkpoint_4.pt", "best_model.pt", "final_checkpoint.pt"):
        state = read_checkpoint(run / name)
        assert state["meta"]["loss"] == result.train_losses[state["iteration"] - 1], name


def test_the_end_of_a_run_says_where_its_outputs_are_and_what_to_run_next(tmp_path, capsys):
    code, out, _ = cli(capsys, "run", write_recipe(tmp_path, tiny_recipe(tmp_path)))
    run = tmp_path / "run"
    assert code == 0
    assert f"Outputs in {run}: final_checkpoint.pt, best_model.pt, recipe.toml, training.log, metrics.jsonl" in out
    assert f"modulm generate {run / 'final_checkpoint.pt'} --prompt 'Once upon a time'" in out
    assert f"modulm plot {run} --out {run / 'loss.png'}" in out
    assert f"modulm export {run / 'final_checkpoint.pt'} {run / 'export'}" in out


def test_a_divergence_stop_is_in_training_log_too(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, optimizer={"lr": 1e30}, training={"grad_clip": 0.0})
    code, out, err = cli(capsys, "run", write_recipe(tmp_path, recipe))
    assert code == 2
    line = one_error_line(err, "loss became")
    assert line.removeprefix("modulm: error: ") in (tmp_path / "run" / "training.log").read_text()
    assert "loss became" not in out  # once on the terminal: stderr


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_and_exits_128_plus_its_number(tmp_path, sig, status):
    recipe = tiny_recipe(tmp_path, training={"max_iterations": 100000}, logging={"eval_interval": 0})
    path = write_recipe(tmp_path, recipe)
    proc = subprocess.Popen([sys.executable, "-m", "modulm", "run", str(path)], cwd=tmp_path,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    for line in proc.stdout:
        if "Iter      2/100000" in line or time.time() > deadline:
            break
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    assert f"received {sig.name}; saved checkpoint_" in out
    assert list((tmp_path / "run").glob("checkpoint_*.pt"))


def test_a_log_file_on_a_failing_disk_is_one_line(tmp_path, capsys, monkeypatch):
    import modulm_loggers

    def broken(self, event):
        if event.get("event") == "train" and event["step"] == 1:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(modulm_loggers.JsonlLogger, "log", broken)
    code, _, err = cli(capsys, "run", write_recipe(tmp_path, tiny_recipe(tmp_path)))
    assert code == 2
    one_error_line(err, f"{tmp_path / 'run'}: cannot write: No space left on device")


def test_metrics_after_a_record_cut_short_start_on_a_line_of_their_own(tmp_path):
    """A run killed mid-write leaves a partial last record; the resumed run's records stay readable."""
    import json

    from modulm.sweep.runner import read_events
    from modulm_loggers import JsonlLogger

    (tmp_path / "metrics.jsonl").write_text('{"event": "train", "step": 0, "loss": 2.0}\n{"event": "train", "st')
    logger = JsonlLogger(run_dir=tmp_path)
    logger.log({"event": "train", "step": 1, "loss": 1.5})
    logger.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines[1] == '{"event": "train", "st' and json.loads(lines[2]) == {"event": "train", "step": 1, "loss": 1.5}
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write("[1, 2]\n")  # valid JSON, not an event
    assert [e["step"] for e in read_events(tmp_path)] == [0, 1]
    JsonlLogger(run_dir=tmp_path).close()  # a whole last line gets no blank line after it
    assert (tmp_path / "metrics.jsonl").read_text().endswith("[1, 2]\n")
