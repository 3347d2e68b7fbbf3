"""Data-parallel training on torch.distributed (gloo, CPU).

The multi-process tests are marked ``distributed`` (run them with ``python -m pytest -m
distributed``); the single-process properties of the sampling and evaluation split run by default.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modulm.assemble import assemble
from modulm.checkpoint import read_checkpoint
from modulm.cli import main
from modulm.distributed import SINGLE, Context
from modulm.tomlwrite import dumps
from modulm.trainer import Trainer
from modulm_data import TokenSource

TINY_MODEL = {"component": "transformer", "context_length": 16, "d_model": 32, "num_layers": 2, "num_heads": 2, "d_ff": 64}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def token_file(path: Path, n: int, seed: int, vocab: int = 64) -> Path:
    np.save(path, np.random.default_rng(seed).integers(0, vocab, n, dtype=np.uint16))
    return path


def tiny_recipe(root: Path, run: str, batch_size: int, **changes) -> dict:
    train, val = root / "train.npy", root / "val.npy"
    if not train.exists():
        token_file(train, 4000, seed=0), token_file(val, 1000, seed=1)
    recipe = {
        "data": {"component": "memmap", "train": str(train), "val": str(val), "vocab_size": 64},
        "model": dict(TINY_MODEL),
        "optimizer": {"component": "adamw", "lr": 3e-3},
        "schedule": {"component": "cosine-warmup", "warmup_iters": 2, "min_lr": 3e-4},
        "training": {"batch_size": batch_size, "max_iterations": 8, "grad_accum_steps": 2},
        "checkpointing": {"checkpoint_dir": str(root / run), "checkpoint_interval": 4, "keep_last": 1000},
        "logging": {"log_interval": 1, "eval_interval": 4, "eval_iters": 2},
        "system": {"device": "cpu", "dtype": "float32", "seed": 7},
        "distributed": {"backend": "gloo", "timeout_seconds": 20},
        "generation": {"max_tokens": 0},
        "loggers": [{"component": "console", "timestamps": False}, {"component": "file"}, {"component": "jsonl"}],
    }
    for dotted, value in changes.items():
        table, key = dotted.split("__")
        recipe[table][key] = value
    return recipe


def write_recipe(root: Path, recipe: dict, name: str) -> Path:
    path = root / f"{name}.toml"
    path.write_text(dumps(recipe))
    return path


def launch_two(recipe_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``modulm run RECIPE --nproc 2`` (torch.distributed.run, standalone) to completion."""
    command = [sys.executable, "-m", "modulm", "run", str(recipe_path), "--nproc", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV)


def events(run_dir: Path, kind: str) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == kind]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in events(run_dir, "train")}


# -- single process: how the global batch and the evaluation windows are split ------------------

@pytest.fixture(scope="module")
def tokens_path(tmp_path_factory) -> Path:
    return token_file(tmp_path_factory.mktemp("tokens") / "t.npy", 3000, seed=3)


@given(world=st.integers(1, 4), batch=st.integers(1, 5), context=st.integers(1, 24), seed=st.integers(0, 2**31),
       draws=st.integers(1, 3))
def test_shards_together_read_the_single_process_global_batch(tokens_path, world, batch, context, seed, draws):
    whole = TokenSource({"train": tokens_path}, vocab_size=64, seed=seed)
    shards = [TokenSource({"train": tokens_path}, vocab_size=64, seed=seed) for _ in range(world)]
    for rank, source in enumerate(shards):
        source.shard(rank, world)
    for _ in range(draws):
        inputs, targets = whole.get_batch("train", batch * world, context)
        parts = [source.get_batch("train", batch, context) for source in shards]
        assert all(p[0].shape == (batch, context) for p in parts)
        assert torch.equal(torch.cat([p[0] for p in parts]), inputs)
        assert torch.equal(torch.cat([p[1] for p in parts]), targets)
    states = [source.state_dict()["generators"]["train"] for source in shards]
    assert all(torch.equal(s, whole.state_dict()["generators"]["train"]) for s in states)


def test_shard_rejects_a_rank_outside_the_world(tokens_path):
    with pytest.raises(Exception, match="rank 2 is outside a world of 2"):
        TokenSource({"train": tokens_path}, vocab_size=64).shard(2, 2)


@given(world=st.integers(1, 5), sizes=st.lists(st.integers(1, 9), min_size=1, max_size=6))
def test_evaluation_rows_are_split_without_loss_or_overlap(world, sizes):
    windows = [np.arange(n * 3).reshape(n, 3) + 100 * i for i, n in enumerate(sizes)]
    ranks = [list(Context(rank=r, world_size=world).shard_rows(iter(windows))) for r in range(world)]
    rows = sorted(tuple(row) for shard in ranks for window in shard for row in window)
    assert rows == sorted(tuple(row) for window in windows for row in window)
    assert all(len(window) for shard in ranks for window in shard)  # no empty batches reach the model


def test_single_process_context_changes_nothing():
    assert SINGLE.mean(2.5) == 2.5 and SINGLE.any(False) is False and SINGLE.gather("x") == ["x"]
    assert SINGLE.on_main(lambda: 3) == 3 and SINGLE.wrap(torch.nn.Linear(2, 2)) is None
    assert SINGLE.own_state({"data": 1, "distributed": {"world_size": 2, "data": [5, 6]}}, "data") == 1
    assert Context(rank=1, world_size=2).own_state({"data": 1, "distributed": {"world_size": 2, "data": [5, 6]}}, "data") == 6


def test_nproc_must_be_positive(tmp_path, capsys):
    recipe = write_recipe(tmp_path, tiny_recipe(tmp_path, "run", 4), "r")
    assert main(["run", str(recipe), "--nproc", "0"]) == 2
    assert "--nproc must be >= 1" in capsys.readouterr().err


# -- two processes (gloo) ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """8 steps of 2 processes with batch 4 each (2 micro-batches of 2), checkpoints at 4 and 8."""
    root = tmp_path_factory.mktemp("ddp")
    done = launch_two(write_recipe(root, tiny_recipe(root, "two", 4), "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done


@pytest.fixture(scope="module")
def one_process_run(two_process_run):
    """The same 8 steps in this process with the global batch, 8 (2 micro-batches of 4)."""
    root, _ = two_process_run
    return Trainer(assemble(tiny_recipe(root, "one", 8))).run()


@pytest.mark.distributed
def test_two_processes_match_one_process_with_twice_the_batch(two_process_run, one_process_run):
    root, done = two_process_run
    single = one_process_run
    two = losses(root / "two")
    assert sorted(two) == list(range(8))  # rank 0 alone logged: every step exactly once
    for step, loss in single.train_losses.items():
        assert abs(two[step] - loss) < 1e-5, (step, two[step], loss)
    evals_two, evals_one = events(root / "two", "eval"), events(root / "one", "eval")
    assert [e["step"] for e in evals_two] == [4, 8] and evals_two[-1]["eval_tokens"] == evals_one[-1]["eval_tokens"]
    for a, b in zip(evals_two, evals_one):
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-5
    assert all(r["tokens"] == (r["step"] + 1) * 8 * 16 for r in events(root / "two", "train"))  # global tokens
    assert "global batch = 8" in done.stdout and "4 sequences per process x 2 processes" in done.stdout
    final_two = read_checkpoint(root / "two" / "final_checkpoint.pt")["model"]
    final_one = read_checkpoint(root / "one" / "final_checkpoint.pt")["model"]
    assert final_two.keys() == final_one.keys() and not any(k.startswith("module.") for k in final_two)
    assert all(torch.allclose(final_two[k], final_one[k], atol=1e-5) for k in final_one)


@pytest.mark.distributed
def test_resume_of_a_two_process_run_continues_exactly(two_process_run):
    root, _ = two_process_run
    checkpoint = root / "two" / "checkpoint_4.pt"
    state = read_checkpoint(checkpoint)
    assert state["distributed"]["world_size"] == 2 and len(state["distributed"]["data"]) == 2
    resumed = launch_two(write_recipe(root, tiny_recipe(root, "two_resumed", 4), "two_resumed"), "--resume", str(checkpoint))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout
    original, again = losses(root / "two"), losses(root / "two_resumed")
    assert sorted(again) == [4, 5, 6, 7]
    assert all(again[step] == original[step] for step in again)  # bit for bit
    # the same checkpoint continues in one process with the global batch
    one = Trainer(assemble(tiny_recipe(root, "one_resumed", 8, checkpointing__resume_from=str(checkpoint)))).run()
    assert sorted(one.train_losses) == [4, 5, 6, 7]
    assert all(abs(one.train_losses[step] - original[step]) < 1e-5 for step in one.train_losses)


@pytest.mark.distributed
def test_a_single_process_checkpoint_continues_in_two_processes(two_process_run, one_process_run):
    root, _ = two_process_run
    checkpoint = root / "one" / "checkpoint_4.pt"
    resumed = launch_two(write_recipe(root, tiny_recipe(root, "two_from_one", 4), "two_from_one"), "--resume", str(checkpoint))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = losses(root / "two_from_one")
    assert sorted(again) == [4, 5, 6, 7]
    assert all(abs(again[step] - one_process_run.train_losses[step]) < 1e-5 for step in again)


def worker_pids(launcher: int) -> dict[int, int]:
    """rank -> pid of the processes torch.distributed.run started."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next((int(v[5:]) for v in environ if v.startswith(b"RANK=")), None)
        if rank is not None:
            ranks[rank] = pid
    return ranks


def wait_for_training(run_dir: Path, process: subprocess.Popen, limit: float = 90) -> None:
    deadline = time.monotonic() + limit
    while not events(run_dir, "train"):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.2)


@pytest.mark.distributed
def test_killing_one_rank_ends_the_job_with_an_error(tmp_path):
    recipe = tiny_recipe(tmp_path, "run", 4, training__max_iterations=10**6, logging__eval_interval=0,
                         checkpointing__checkpoint_interval=0, distributed__timeout_seconds=15)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "modulm", "run", str(write_recipe(tmp_path, recipe, "r"))]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        wait_for_training(tmp_path / "run", job)
        os.kill(worker_pids(job.pid)[1], signal.SIGKILL)
        killed = time.monotonic()
        _, err = job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode != 0
    assert time.monotonic() - killed < 15
    assert "Signal 9 (SIGKILL)" in err and "rank      : 1" in err  # torchrun names the dead rank


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stall_one_rank(tmp_path: Path, timeout: int, **changes) -> tuple[int, str, float]:
    """Two ranks started by hand (no torchrun watching, as across nodes); rank 1 is stopped with
    SIGSTOP once training runs. Returns rank 0's exit status, its stderr and how long it lasted."""
    recipe = tiny_recipe(tmp_path, "run", 4, training__max_iterations=10**6, logging__eval_interval=0,
                         checkpointing__checkpoint_interval=0, distributed__timeout_seconds=timeout, **changes)
    path = write_recipe(tmp_path, recipe, "r")
    env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    ranks = [subprocess.Popen([sys.executable, "-m", "modulm", "run", str(path)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
             for r in range(2)]
    try:
        wait_for_training(tmp_path / "run", ranks[0])
        os.kill(ranks[1].pid, signal.SIGSTOP)
        stalled = time.monotonic()
        _, err = ranks[0].communicate(timeout=timeout + 40)
        waited = time.monotonic() - stalled
    finally:
        for process in ranks:
            process.kill()
            process.communicate()
    return ranks[0].returncode, err, waited


@pytest.mark.distributed
def test_a_stalled_rank_fails_the_others_within_the_timeout(tmp_path):
    """Without torchrun watching (as across nodes), the collective timeout ends the survivor."""
    timeout = 4
    returncode, err, waited = stall_one_rank(tmp_path, timeout)
    assert returncode == 2
    assert "modulm: error: rank 0/2: lost contact with the other ranks" in err
    assert f"distributed.timeout_seconds = {timeout}" in err
    assert timeout - 1 < waited < timeout + 20


@pytest.mark.distributed
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    recipe = tiny_recipe(tmp_path, "run", 4, training__max_iterations=10**6, logging__eval_interval=0,
                         checkpointing__checkpoint_interval=0)
    path = write_recipe(tmp_path, recipe, "r")
    env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    ranks = [subprocess.Popen([sys.executable, "-m", "modulm", "run", str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
             for r in range(2)]
    try:
        wait_for_training(tmp_path / "run", ranks[0])
        os.kill(ranks[1].pid, signal.SIGTERM)
        outputs = [process.communicate(timeout=60) for process in ranks]
    finally:
        for process in ranks:
            process.kill()
    # 143 on both: rank 1 received SIGTERM, rank 0 stopped for it (a saved but unfinished run)
    assert [process.returncode for process in ranks] == [143, 143], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    saved = rundir_checkpoints(tmp_path / "run")
    assert len(saved) == 1
    assert f"received a stop signal on another rank; saved {saved[0].name}" in outputs[0][0]
    assert read_checkpoint(saved[0])["iteration"] == max(losses(tmp_path / "run")) + 1


def rundir_checkpoints(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("checkpoint_*.pt"))
