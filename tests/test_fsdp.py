"""``distributed.strategy = "fsdp"``: FSDP2 sharding, DCP checkpoints that reshard, multi-node launch.

The multi-process tests are marked ``distributed``: ``python -m pytest -q -m distributed
tests/test_fsdp.py``. The single-process parts (checkpoint directories, optimizer-state keys,
memory accounting) run by default.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modulm import rundir, sharded_checkpoint
from modulm.assemble import assemble
from modulm.checkpoint import read_checkpoint
from modulm.cli import main
from modulm.strategy import bf16_native
from modulm.trainer import Trainer
from test_distributed import ENV, events, free_port, losses, stall_one_rank, tiny_recipe, worker_pids, write_recipe

HERE = Path(__file__).resolve().parent
STEPS = {"training__max_iterations": 10, "checkpointing__checkpoint_interval": 5, "logging__eval_interval": 5}
FSDP = {**STEPS, "distributed__strategy": "fsdp"}


def launch(recipe_path: Path, nproc: int, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "modulm", "run", str(recipe_path), "--nproc", str(nproc), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def close(a: dict[int, float], b: dict[int, float], rel: float = 1e-5) -> bool:
    return sorted(a) == sorted(b) and all(abs(a[k] - b[k]) <= rel * abs(b[k]) for k in b)


def weights_close(a: dict, b: dict, atol: float = 1e-5) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """10 steps (checkpoints at 5 and 10) at global batch 8: fsdp and ddp on 2 processes, and 1 process."""
    root = tmp_path_factory.mktemp("fsdp")
    fsdp = launch(write_recipe(root, tiny_recipe(root, "fsdp2", 4, **FSDP), "fsdp2"), 2)
    launch(write_recipe(root, tiny_recipe(root, "ddp2", 4, **STEPS), "ddp2"), 2)
    single = Trainer(assemble(tiny_recipe(root, "one", 8, **STEPS))).run()
    return {"root": root, "fsdp_stdout": fsdp.stdout, "single": single.train_losses}


# -- single process: what a sharded checkpoint directory is -------------------------------------

def test_an_incomplete_sharded_directory_is_never_the_latest_checkpoint(tmp_path):
    (tmp_path / "checkpoint_4.pt").write_bytes(b"")
    for name, files in (("checkpoint_6", (sharded_checkpoint.TRAINER_STATE, sharded_checkpoint.METADATA)),
                        ("checkpoint_8", (sharded_checkpoint.TRAINER_STATE, "__0_0.distcp"))):  # 8: save cut short
        (tmp_path / name).mkdir()
        for file in files:
            (tmp_path / name / file).write_bytes(b"")
    assert [it for it, _ in rundir.periodic_checkpoints(tmp_path)] == [4, 6]
    assert rundir.latest_checkpoint(tmp_path) == tmp_path / "checkpoint_6"
    rundir.prune(tmp_path, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_6", "checkpoint_8"]
    rundir.clear(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_single_file_readers_point_a_sharded_directory_at_consolidate(tmp_path, capsys):
    sharded = tmp_path / "checkpoint_5"
    sharded.mkdir()
    (sharded / sharded_checkpoint.METADATA).write_bytes(b"")
    with pytest.raises(Exception, match="sharded .* directory.*modulm checkpoint consolidate"):
        read_checkpoint(sharded)
    assert main(["checkpoint", "consolidate", str(sharded), str(tmp_path / "out.pt")]) == 2  # no trainer state
    assert "not a complete sharded checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists()


@given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3), seed=st.integers(0, 1000))
def test_optimizer_state_keys_round_trip_between_numbers_and_names(sizes, seed):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(sum(sizes))]
    groups, start = [], 0
    for size in sizes:
        groups.append({"params": params[start:start + size], "lr": 0.1 * size})
        start += size
    optimizer = torch.optim.SGD(groups, lr=1.0, momentum=0.9)
    for p in params:
        p.grad = torch.randn(1, generator=torch.Generator().manual_seed(seed))
    optimizer.step()
    names = {id(p): f"layer{i}.weight" for i, p in enumerate(params)}
    indexed = optimizer.state_dict()
    named = sharded_checkpoint.named_optimizer_state(indexed, optimizer, names)
    assert [g["params"] for g in named["param_groups"]] == [[names[id(p)] for p in g["params"]] for g in groups]
    back = sharded_checkpoint.indexed_optimizer_state(named)
    assert back["param_groups"] == indexed["param_groups"]
    assert back["state"].keys() == indexed["state"].keys()
    assert all(torch.equal(back["state"][i]["momentum_buffer"], s["momentum_buffer"]) for i, s in indexed["state"].items())


def test_bf16_counts_as_native_only_on_cpus_that_compute_it():
    probe = "import torch; from modulm.strategy import bf16_native; print(bf16_native(torch.device('cpu')))"
    avx2 = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=avx2).stdout.strip() == "False"
    native = torch.backends.cpu.get_cpu_capability() == "AVX512" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert bf16_native(torch.device("cpu")) == native


def test_info_reports_memory_per_process_that_fsdp_divides(tmp_path, capsys):
    recipe = write_recipe(tmp_path, tiny_recipe(tmp_path, "run", 4), "r")
    totals = {}
    for strategy, nproc in (("ddp", 1), ("ddp", 2), ("fsdp", 2), ("fsdp", 4)):
        assert main(["info", "--nproc", str(nproc), str(recipe), f"distributed.strategy={strategy!r}"]) == 0
        *_, line, ids, activations = capsys.readouterr().out.splitlines()
        # batch_size 4 in 2 micro-batches, context 16: 2 x 8 bytes x 2 x 16 (per process, whatever the strategy)
        assert ids == "Token ids per micro-batch: 2 x 16 inputs and targets (int64) = 512 bytes"
        assert activations.startswith("Activations per micro-batch: at least ")
        assert line.startswith("Memory per process (") and f"{nproc} process" in line
        totals[strategy, nproc] = float(line.rsplit("= ", 1)[1].split()[0])  # KiB for this model
        buffers = line.split(" + buffers ")[1].split(" = ")[0]
        assert buffers == "2.00 KiB"  # RoPE's tables, 16 x 8 cos and sin per layer in float32: never sharded
    params = 24_736  # the tiny model: 4 bytes each for weights and gradients, 8 for AdamW's two moments
    assert totals["ddp", 1] == totals["ddp", 2] == pytest.approx(params * 16 / 1024 + 2, abs=0.1)
    assert totals["fsdp", 2] - 2 == pytest.approx((totals["ddp", 1] - 2) / 2, rel=0.02)
    assert totals["fsdp", 4] - 2 == pytest.approx((totals["ddp", 1] - 2) / 4, rel=0.05)


# -- two processes -------------------------------------------------------------------------------

@pytest.mark.distributed
def test_sharded_clipping_adamw_and_memory_match_one_process(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(HERE / "fsdp_checks.py"), str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for result in ranks:
        assert result["param_type"] == "DTensor" and result["norm_type"] == "Tensor"
        assert result["sharded_norm"] == pytest.approx(result["whole_norm"], rel=1e-6)  # over all shards
        assert result["grad_error"] < 1e-7 and result["param_error"] < 1e-5
    first = ranks[0]
    assert first["predicted_params"] == first["local_params"] and first["predicted_state"] == first["local_state"]
    assert first["local_params"] <= 0.55 * first["whole_params"]


@pytest.mark.distributed
def test_fsdp_on_two_processes_matches_one_process_and_ddp(runs):
    root = runs["root"]
    fsdp, ddp = losses(root / "fsdp2"), losses(root / "ddp2")
    assert sorted(fsdp) == list(range(10))
    assert close(fsdp, runs["single"]) and close(fsdp, ddp)
    for a, b in zip(events(root / "fsdp2", "eval"), events(root / "one", "eval"), strict=True):
        assert abs(a["val_loss"] - b["val_loss"]) <= 1e-5 * b["val_loss"]
    assert "FSDP2 (fully_shard per block and at the root" in runs["fsdp_stdout"]
    assert "Memory per process (fsdp, 2 processes)" in runs["fsdp_stdout"]
    assert (root / "fsdp2" / "checkpoint_5" / sharded_checkpoint.METADATA).is_file()
    assert len(list((root / "fsdp2" / "checkpoint_5").glob("*.distcp"))) == 2  # one file of shards per rank
    final = read_checkpoint(root / "fsdp2" / "final_checkpoint.pt")  # consolidated at the end of the run
    assert final["iteration"] == 10
    assert weights_close(final["model"], read_checkpoint(root / "one" / "final_checkpoint.pt")["model"])
    assert weights_close(final["model"], read_checkpoint(root / "ddp2" / "final_checkpoint.pt")["model"])


@pytest.mark.distributed
def test_a_sharded_checkpoint_resumes_on_one_two_and_four_processes(runs):
    root = runs["root"]
    checkpoint, original = root / "fsdp2" / "checkpoint_5", losses(root / "fsdp2")
    after = {step: loss for step, loss in original.items() if step >= 5}
    one = Trainer(assemble(tiny_recipe(root, "fsdp_to_one", 8, **FSDP, checkpointing__resume_from=str(checkpoint)))).run()
    assert close(one.train_losses, after)
    for nproc in (2, 4):
        recipe = write_recipe(root, tiny_recipe(root, f"fsdp_to_{nproc}", 8 // nproc, **FSDP), f"fsdp_to_{nproc}")
        done = launch(recipe, nproc, "--resume", str(checkpoint))
        assert f"Resuming from {checkpoint} at iteration 5" in done.stdout
        assert close(losses(root / f"fsdp_to_{nproc}"), after), nproc


@pytest.mark.distributed
def test_ddp_checkpoints_resume_under_fsdp_and_back(runs):
    root = runs["root"]
    launch(write_recipe(root, tiny_recipe(root, "ddp_to_fsdp", 4, **FSDP), "ddp_to_fsdp"), 2,
           "--resume", str(root / "ddp2" / "checkpoint_5.pt"))
    launch(write_recipe(root, tiny_recipe(root, "fsdp_to_ddp", 4, **STEPS), "fsdp_to_ddp"), 2,
           "--resume", str(root / "fsdp2" / "checkpoint_5"))
    ddp, fsdp = losses(root / "ddp2"), losses(root / "fsdp2")
    assert close(losses(root / "ddp_to_fsdp"), {s: v for s, v in ddp.items() if s >= 5})
    assert close(losses(root / "fsdp_to_ddp"), {s: v for s, v in fsdp.items() if s >= 5})


@pytest.mark.distributed
def test_consolidated_weights_load_in_generate(runs, capsys):
    from modulm_bpe.tokenizer import Tokenizer

    root = runs["root"]
    out = root / "consolidated.pt"
    assert main(["checkpoint", "consolidate", str(root / "fsdp2" / "checkpoint_5"), str(out)]) == 0
    assert "iteration 5" in capsys.readouterr().out
    state = read_checkpoint(out)
    assert weights_close(state["model"], read_checkpoint(root / "ddp2" / "checkpoint_5.pt")["model"])
    assert len(state["distributed"]["data"]) == 2 and state["optimizer"]["state"]
    # single bytes only, numbered so that the model's 64 ids are the letters from "A" on
    Tokenizer({i: bytes([(i + ord("A")) % 256]) for i in range(256)}, []).save(root / "tokenizer")
    assert main(["generate", str(out), "--tokenizer", str(root / "tokenizer"), "--prompt", "AB",
                 "--max-tokens", "6", "--temperature", "0", "--device", "cpu"]) == 0
    text = capsys.readouterr().out.strip()
    assert text.startswith("AB") and len(text) == 8 and all(0 <= ord(c) - ord("A") < 64 for c in text), text


# -- faults --------------------------------------------------------------------------------------

@pytest.mark.distributed
def test_a_rank_killed_during_a_sharded_save_resumes_from_the_last_complete_checkpoint(tmp_path):
    recipe = write_recipe(tmp_path, tiny_recipe(tmp_path, "run", 4, **{**FSDP, "checkpointing__checkpoint_interval": 4,
                                                                       "logging__eval_interval": 0,
                                                                       "system__dtype": "bfloat16"}), "r")
    partial = tmp_path / "run" / "checkpoint_8"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(HERE / "fsdp_stall_save.py"), "run", str(recipe)]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env={**ENV, "STALL_SAVE": str(partial)})
    try:
        deadline = time.monotonic() + 120
        while not partial.with_name("checkpoint_8.stalled").exists():
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()[1][-3000:]
            time.sleep(0.2)
        os.kill(worker_pids(job.pid)[1], signal.SIGKILL)
        _, err = job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode != 0 and "Signal 9 (SIGKILL)" in err
    assert partial.is_dir() and not sharded_checkpoint.is_complete(partial)
    assert rundir.latest_checkpoint(tmp_path / "run") == tmp_path / "run" / "checkpoint_4"
    done = launch(recipe, 2)
    assert f"Resuming from {tmp_path / 'run' / 'checkpoint_4'} at iteration 4" in done.stdout
    mixed = "bfloat16 compute with float32 gradient reduction" in done.stdout
    assert mixed == bf16_native(torch.device("cpu"))  # the policy only where bf16 is not emulated
    assert (tmp_path / "run" / "final_checkpoint.pt").is_file() and sharded_checkpoint.is_complete(partial)


@pytest.mark.distributed
def test_a_stalled_fsdp_rank_fails_the_others_within_the_timeout(tmp_path):
    returncode, err, waited = stall_one_rank(tmp_path, timeout=4, distributed__strategy="fsdp")
    assert returncode == 2
    assert len([line for line in err.splitlines() if line.startswith("modulm: error:")]) == 1
    assert "modulm: error: rank 0/2: lost contact with the other ranks" in err
    assert 3 < waited < 24


# -- two "nodes" on one host ---------------------------------------------------------------------

def launch_nodes(recipe_path: Path, *overrides: str) -> list[subprocess.CompletedProcess]:
    """Two torchrun agents of one process each, joined by a c10d rendezvous on 127.0.0.1."""
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "test-nodes",
         "--local-addr", "127.0.0.1", "-m", "modulm", "run", str(recipe_path), *overrides],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**ENV, "GLOO_SOCKET_IFNAME": "lo"})
        for node in range(2)]
    try:
        outputs = [node.communicate(timeout=180) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    return [subprocess.CompletedProcess(n.args, n.returncode, out, err) for n, (out, err) in zip(nodes, outputs)]


@pytest.mark.distributed
def test_two_nodes_on_one_host_finish_and_resume(tmp_path):
    recipe = write_recipe(tmp_path, tiny_recipe(tmp_path, "run", 4, **{**FSDP, "training__max_iterations": 6,
                                                                       "checkpointing__checkpoint_interval": 3}), "r")
    first = launch_nodes(recipe)
    assert "Distributed: 2 processes (gloo), FSDP2" in "".join(done.stdout for done in first)
    assert sorted(losses(tmp_path / "run")) == list(range(6))
    assert read_checkpoint(tmp_path / "run" / "final_checkpoint.pt")["iteration"] == 6
    again = launch_nodes(recipe, "training.max_iterations=8")  # resumes the finished run and trains on
    assert "Resuming from" in "".join(done.stdout for done in again)
    assert sorted(losses(tmp_path / "run")) == list(range(8))
    assert read_checkpoint(tmp_path / "run" / "final_checkpoint.pt")["iteration"] == 8
