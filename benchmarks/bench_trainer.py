"""Trainer overhead: tokens/s of `Trainer.run` against a bare loop over the same parts, same run.

Both sides train the bench-tiny model (vocab 2048, context 128, d_model 128, 2 layers, 4 heads,
d_ff 344, batch 16) on a generated memmap file with modulm's AdamW, cosine schedule,
cross-entropy and clipping. The trainer runs at the training guide's default intervals (log every
10, evaluate 20 batches every 100, checkpoint every 1000) with all three loggers; the bare loop
does only the steps. Runs alternate, and each side's median over the repeats is compared.

Reported: wall-clock tokens/s (evaluation included) and the trainer's logged training tokens/s.
Target: trainer >= 0.95x the bare loop.

    flock /tmp/modulm-bench.lock python benchmarks/bench_trainer.py [--steps 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import modulm
from modulm.functional.grad import clip_gradients
from modulm.functional.loss import cross_entropy
from modulm.trainer import Trainer

MODEL = {"component": "transformer", "context_length": 128, "d_model": 128, "num_layers": 2, "num_heads": 4, "d_ff": 344}


def recipe(workdir: Path, steps: int, run: str) -> dict:
    return {
        "data": {"component": "memmap", "train": str(workdir / "train.npy"), "val": str(workdir / "val.npy"), "vocab_size": 2048},
        "model": MODEL,
        "training": {"batch_size": 16, "max_iterations": steps},
        "checkpointing": {"checkpoint_dir": str(workdir / run), "overwrite": True},
        "logging": {"final_eval": "sampled"},
        "generation": {"max_tokens": 0},
        "system": {"device": "cpu", "dtype": "float32"},  # the bare loop runs float32 too
    }


def trainer_run(workdir: Path, steps: int, registry) -> tuple[float, float]:
    assembly = modulm.assemble(recipe(workdir, steps, "trainer"), registry)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        Trainer(assembly).run()
    wall = time.perf_counter() - start
    logged = [json.loads(line) for line in (workdir / "trainer" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_sec"] for r in logged if r["event"] == "train" and r["step"] > 0]
    return steps * 16 * 128 / wall, statistics.median(rates)


def bare_run(workdir: Path, steps: int, registry) -> float:
    a = modulm.assemble(recipe(workdir, steps, "bare"), registry)
    model, optimizer, schedule, data = a.model, a.optimizer, a.schedule, a.data
    params = [p for g in optimizer.param_groups for p in g["params"]]
    model.train()
    start = time.perf_counter()
    for it in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = schedule(it)
        x, y = data.get_batch("train", 16, 128, torch.device("cpu"))
        loss = cross_entropy(model(x), y)
        loss.backward()
        clip_gradients(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss.detach())
    return steps * 16 * 128 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    registry = modulm.load_plugins().registry
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rng = np.random.default_rng(0)
        np.save(workdir / "train.npy", rng.integers(0, 2048, 2_000_000, dtype=np.uint16))
        np.save(workdir / "val.npy", rng.integers(0, 2048, 200_000, dtype=np.uint16))
        bare_run(workdir, 20, registry)  # warm-up
        walls, logged, bares = [], [], []
        for _ in range(args.repeats):
            bares.append(bare_run(workdir, args.steps, registry))
            wall, rate = trainer_run(workdir, args.steps, registry)
            walls.append(wall)
            logged.append(rate)
    bare, wall, rate = statistics.median(bares), statistics.median(walls), statistics.median(logged)
    print(f"bare loop            {bare:9.0f} tok/s")
    print(f"trainer (wall clock) {wall:9.0f} tok/s  {wall / bare:.3f}x  (evaluation and checkpoint included)")
    print(f"trainer (logged)     {rate:9.0f} tok/s  {rate / bare:.3f}x  (target >= 0.95x)")


if __name__ == "__main__":
    main()
