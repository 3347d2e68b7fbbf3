"""One process at a time in a run or sweep directory: peers refused in one line, crashes never lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from modulm import runlock
from modulm.errors import ModulmError
from tests.runkit import cli, one_error_line, refused_before_writing, snapshot, tiny_recipe, write_recipe

pytestmark = pytest.mark.skipif(runlock.fcntl is None, reason="advisory locks need fcntl (POSIX)")


def hold(directory: Path, holder: tuple[str, str] = runlock.RUN) -> subprocess.Popen:
    """Another process that takes ``directory``'s lock and sleeps until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from modulm import runlock
        runlock.acquire({str(directory)!r}, {holder!r})
        print("held", flush=True)
        time.sleep(600)
    """)
    peer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert peer.stdout.readline().strip() == "held"
    return peer


def test_a_run_directory_in_use_is_refused_before_anything_is_written(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    peer = hold(run_dir)
    try:
        path = write_recipe(tmp_path, tiny_recipe(tmp_path))
        refused_before_writing(capsys, tmp_path, ["run", path],
                               f"{run_dir}: another modulm run (pid {peer.pid}) is using this directory",
                               "checkpointing.checkpoint_dir")
        with pytest.raises(ModulmError, match="is using this directory"):
            runlock.acquire(run_dir)
    finally:
        peer.kill()
        peer.wait()
    # kill -9 leaves the file but not the lock: the next run takes it over, and a clean end removes it
    assert (run_dir / runlock.LOCK_FILE).exists()
    code, _, _ = cli(capsys, "run", path)
    assert code == 0 and (run_dir / "final_checkpoint.pt").exists()
    assert not (run_dir / runlock.LOCK_FILE).exists()


def test_a_second_real_run_waits_its_turn_and_then_resumes(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, training={"batch_size": 4, "max_iterations": 100_000},
                         checkpointing={"checkpoint_interval": 50})
    path = write_recipe(tmp_path, recipe)
    first = subprocess.Popen([sys.executable, "-m", "modulm", "run", str(path)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    lock, deadline = tmp_path / "run" / runlock.LOCK_FILE, time.monotonic() + 120
    try:
        while not (lock.exists() and list((tmp_path / "run").glob("checkpoint_*.pt"))):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.05)
        code, _, err = cli(capsys, "run", path)
        assert code == 2
        one_error_line(err, f"another modulm run (pid {first.pid}) is using this directory")
    finally:
        first.send_signal(signal.SIGTERM)  # saves a checkpoint, then ends
        first.wait(timeout=120)
    assert not lock.exists()
    code, _, _ = cli(capsys, "run", path, "training.max_iterations=4")  # resumes: no longer refused
    assert code == 0


def test_a_sweep_directory_in_use_is_refused(tmp_path, capsys):
    write_recipe(tmp_path, tiny_recipe(tmp_path))
    (tmp_path / "s.toml").write_text('name = "s"\nbase = "r.toml"\n[grid]\n"optimizer.lr" = [1e-3]\n')
    sweep_dir = tmp_path / "sweeps" / "s"
    sweep_dir.mkdir(parents=True)
    peer = hold(sweep_dir, ("another modulm sweep", "--out DIR"))
    try:
        before = snapshot(tmp_path)
        code, _, err = cli(capsys, "sweep", tmp_path / "s.toml", "--out", tmp_path / "sweeps")
        assert code == 2
        one_error_line(err, f"{sweep_dir}: another modulm sweep (pid {peer.pid}) is using this directory", "--out DIR")
        assert snapshot(tmp_path) == before
    finally:
        peer.kill()
        peer.wait()


def test_the_lock_is_per_process_and_released_cleanly(tmp_path):
    runlock.check_free(tmp_path)  # no lock file: free, and nothing written
    assert list(tmp_path.iterdir()) == []
    runlock.acquire(tmp_path)
    try:
        runlock.acquire(tmp_path)  # again in the same process: nothing changes
        runlock.check_free(tmp_path)  # this process's own lock does not refuse it
        assert (tmp_path / runlock.LOCK_FILE).read_text() == f"{os.getpid()}\n"
    finally:
        runlock.release(tmp_path)
    assert list(tmp_path.iterdir()) == []
    runlock.release(tmp_path)  # not held: nothing happens
