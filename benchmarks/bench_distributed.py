"""Training throughput of 1 process vs N data-parallel processes (gloo, CPU) on the same global batch.

    flock /tmp/modulm-bench.lock python benchmarks/bench_distributed.py [--nproc 2] [--steps 30]

Both runs train the same model on the same samples: one process with batch ``N*B`` (all cores to
torch's intra-op threads) and ``modulm run --nproc N`` with batch ``B`` per process (one thread
each, as torchrun sets). Reported: the median of the logged global tokens/s over the steps after
the warm-up, for ``--repeats`` runs each, and the ratio N-process / 1-process.
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

MODEL = {"component": "transformer", "context_length": 128, "d_model": 256, "num_layers": 4, "num_heads": 4, "d_ff": 1024}


def recipe(root: Path, run: str, batch: int, steps: int) -> Path:
    from modulm.tomlwrite import dumps

    table = {
        "data": {"component": "memmap", "train": str(root / "train.npy"), "vocab_size": 1024},
        "model": MODEL,
        "optimizer": {"component": "adamw", "lr": 1e-3},
        "training": {"batch_size": batch, "max_iterations": steps},
        "checkpointing": {"checkpoint_dir": str(root / run), "checkpoint_interval": 0, "overwrite": True},
        "logging": {"log_interval": 1, "eval_interval": 0},
        "system": {"device": "cpu", "dtype": "float32", "seed": 0},
        "distributed": {"backend": "gloo"},
        "generation": {"max_tokens": 0},
        "loggers": [{"component": "jsonl"}],
    }
    path = root / f"{run}.toml"
    path.write_text(dumps(table))
    return path


def tokens_per_second(root: Path, run: str, warmup: int) -> float:
    rows = [json.loads(line) for line in (root / run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_sec"] for r in rows if r["event"] == "train" and r["step"] >= warmup]
    return statistics.median(rates)


def train(root: Path, run: str, batch: int, steps: int, nproc: int, threads: int) -> None:
    command = [sys.executable, "-m", "modulm", "run", str(recipe(root, run, batch, steps)), "--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="sequences per process")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        np.save(root / "train.npy", np.random.default_rng(0).integers(0, 1024, 200_000, dtype=np.uint16))
        single, multi = [], []
        for _ in range(args.repeats):
            train(root, "one", args.batch * args.nproc, args.steps, 1, cores)
            single.append(tokens_per_second(root, "one", args.warmup))
            train(root, "many", args.batch, args.steps, args.nproc, max(cores // args.nproc, 1))
            multi.append(tokens_per_second(root, "many", args.warmup))
    one, many = statistics.median(single), statistics.median(multi)
    print(f"model d_model={MODEL['d_model']} layers={MODEL['num_layers']} context={MODEL['context_length']}, "
          f"global batch {args.batch * args.nproc}, {cores} cores, {args.steps} steps (first {args.warmup} skipped)")
    print(f"1 process ({cores} threads):          {one:10,.0f} tokens/s  (runs: {', '.join(f'{x:,.0f}' for x in single)})")
    print(f"{args.nproc} processes (gloo, DDP):      {many:10,.0f} tokens/s  (runs: {', '.join(f'{x:,.0f}' for x in multi)})")
    print(f"ratio {args.nproc}-process / 1-process: {many / one:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
