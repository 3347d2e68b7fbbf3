"""Training throughput and per-process memory: 1 process vs N processes with ddp and with fsdp (gloo, CPU).

    flock /tmp/modulm-bench.lock python benchmarks/bench_distributed.py [--nproc 2] [--steps 20]

Every run trains the bench-small model (vocab 10000, d_model 512, 4 layers, 16 heads, d_ff 1344;
context 128 here) on the same samples at the same global batch: one process with batch ``N*B``
(all cores to torch's intra-op threads), and ``torchrun`` N processes with batch ``B`` each (one
thread each, as torchrun sets) with ``distributed.strategy = "ddp"`` and ``"fsdp"``.

Reported: the median of the logged global tokens/s over the steps after the warm-up (median over
``--repeats`` runs), and the memory each process *measured* at the end of its run: the bytes of
its parameters (its local shards under fsdp) and of its optimizer state. Target: fsdp's memory per
process at most 0.6x ddp's at 2 processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MODEL = {"component": "transformer", "context_length": 128, "d_model": 512, "num_layers": 4, "num_heads": 16,
         "d_ff": 1344}
VOCAB = 10000


def recipe(root: Path, run: str, batch: int, steps: int, strategy: str) -> Path:
    from modulm.tomlwrite import dumps

    table = {
        "data": {"component": "memmap", "train": str(root / "train.npy"), "vocab_size": VOCAB},
        "model": MODEL,
        "optimizer": {"component": "adamw", "lr": 1e-3},
        "training": {"batch_size": batch, "max_iterations": steps},
        "checkpointing": {"checkpoint_dir": str(root / run), "checkpoint_interval": 0, "overwrite": True},
        "logging": {"log_interval": 1, "eval_interval": 0},
        "system": {"device": "cpu", "seed": 0},
        "distributed": {"backend": "gloo", "strategy": strategy},
        "generation": {"max_tokens": 0},
        "loggers": [{"component": "jsonl"}],
    }
    path = root / f"{run}.toml"
    path.write_text(dumps(table))
    return path


def local_bytes(tensor) -> int:
    tensor = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # a DTensor shard
    return tensor.numel() * tensor.element_size()


def worker(recipe_path: str, out: str) -> None:
    """Train (in this process, one of torchrun's or alone) and write what this process holds."""
    import torch

    from modulm.assemble import assemble
    from modulm.trainer import Trainer

    trainer = Trainer(assemble(recipe_path))
    trainer.run()
    params = sum(local_bytes(p) for p in trainer.model.parameters())
    state = sum(local_bytes(t) for s in trainer.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor))
    Path(f"{out}.rank{trainer.dist.rank}.json").write_text(json.dumps({"parameters": params, "optimizer": state}))


def tokens_per_second(root: Path, run: str, warmup: int) -> float:
    rows = [json.loads(line) for line in (root / run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_sec"] for r in rows if r["event"] == "train" and r["step"] >= warmup]
    return statistics.median(rates)


def train(root: Path, run: str, batch: int, steps: int, nproc: int, strategy: str, threads: int) -> list[dict]:
    """One run; returns each process's measured memory."""
    path, out = recipe(root, run, batch, steps, strategy), root / run
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    command = [sys.executable, *launcher, __file__, "--worker", str(path), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [json.loads(Path(f"{out}.rank{rank}.json").read_text()) for rank in range(nproc)]


def mib(n: float) -> str:
    return f"{n / 2**20:7.1f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="sequences per process")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--worker", nargs=2, metavar=("RECIPE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return 0
    cores = os.cpu_count() or 1
    runs = {"1 process": (1, "ddp", args.batch * args.nproc, cores),
            f"{args.nproc} processes, ddp": (args.nproc, "ddp", args.batch, max(cores // args.nproc, 1)),
            f"{args.nproc} processes, fsdp": (args.nproc, "fsdp", args.batch, max(cores // args.nproc, 1))}
    rates: dict[str, list[float]] = {name: [] for name in runs}
    memory: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        np.save(root / "train.npy", np.random.default_rng(0).integers(0, VOCAB, 200_000, dtype=np.uint16))
        for _ in range(args.repeats):
            for index, (name, (nproc, strategy, batch, threads)) in enumerate(runs.items()):
                measured = train(root, f"run{index}", batch, args.steps, nproc, strategy, threads)
                memory[name] = max(measured, key=lambda m: m["parameters"] + m["optimizer"])
                rates[name].append(tokens_per_second(root, f"run{index}", args.warmup))
    print(f"bench-small: vocab {VOCAB}, d_model {MODEL['d_model']}, {MODEL['num_layers']} layers, context "
          f"{MODEL['context_length']}; global batch {args.batch * args.nproc}, {cores} cores, {args.steps} steps "
          f"(first {args.warmup} skipped), {args.repeats} run(s) each")
    for name in runs:
        m = memory[name]
        print(f"{name:22s} {statistics.median(rates[name]):9,.0f} tokens/s | per process: parameters "
              f"{mib(m['parameters'])} + optimizer state {mib(m['optimizer'])} = {mib(m['parameters'] + m['optimizer'])}")
    ddp, fsdp = (memory[f"{args.nproc} processes, {s}"] for s in ("ddp", "fsdp"))
    ratio = (fsdp["parameters"] + fsdp["optimizer"]) / (ddp["parameters"] + ddp["optimizer"])
    speed = statistics.median(rates[f"{args.nproc} processes, fsdp"]) / statistics.median(rates[f"{args.nproc} processes, ddp"])
    print(f"fsdp / ddp at {args.nproc} processes: tokens/s {speed:.2f}, memory per process {ratio:.2f} "
          f"(target <= 0.6: {'met' if ratio <= 0.6 else 'NOT met'})")
    return 0 if ratio <= 0.6 else 1


if __name__ == "__main__":
    sys.exit(main())
