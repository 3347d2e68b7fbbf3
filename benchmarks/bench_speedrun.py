"""recipes/speedrun.toml against recipes/base.toml: same data, tokenizer and wall-clock budget.

    flock /tmp/modulm-bench.lock python benchmarks/bench_speedrun.py [--seeds 42 43] [--out /tmp/speedrun-bench]

Runs each recipe once per seed (``modulm run``, a fresh run directory under ``--out``; set
``MODULM_CACHE_DIR`` so the tokenizer is trained once) and reads each run's ``metrics.jsonl``:

* final: the held-out bits per byte of the final full evaluation;
* train_s: training seconds (the trainer's ``elapsed``: evaluations excluded);
* to_base_s: the training seconds at which the run's evaluations first reach base's final bits per
  byte (median over base's seeds), interpolated linearly between evaluations; None if never.

It prints one line per run and the medians per recipe, and checks the goal: speedrun reaches base's
final value in at most 60% of base's training time, and ends at least 0.03 bits/byte lower.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

RECIPES = {"base": "recipes/base.toml", "speedrun": "recipes/speedrun.toml"}


def run(recipe: str, seed: int, run_dir: Path, extra: list[str]) -> list[dict]:
    """Train ``recipe`` with ``seed`` into ``run_dir``; return its metric events."""
    command = [sys.executable, "-m", "modulm", "run", recipe, f"system.seed={seed}",
               f"checkpointing.checkpoint_dir={run_dir}", "generation.max_tokens=0", "--overwrite", *extra]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def evaluations(events: list[dict]) -> list[tuple[float, float]]:
    """``(training seconds, val bits per byte)`` of each evaluation, in order."""
    return [(e["elapsed"], e["val_bpb"]) for e in events if e["event"] == "eval" and "val_bpb" in e]


def time_to_reach(points: list[tuple[float, float]], target: float) -> float | None:
    """First training time at which bits per byte reach ``target`` (linear between evaluations)."""
    previous = (0.0, float("inf"))
    for elapsed, bpb in points:
        if bpb <= target:
            if previous[1] == float("inf"):
                return elapsed
            fraction = (previous[1] - target) / (previous[1] - bpb)
            return previous[0] + fraction * (elapsed - previous[0])
        previous = (elapsed, bpb)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--out", type=Path, default=Path("/tmp/speedrun-bench"))
    parser.add_argument("--eval-interval", type=int, default=50, help="evaluations along the way (both recipes)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    os.environ.setdefault("MODULM_CACHE_DIR", str(args.out / "cache"))
    extra = [f"logging.eval_interval={args.eval_interval}"]
    results: dict[str, list[dict]] = {name: [] for name in RECIPES}
    for name, recipe in RECIPES.items():
        for seed in args.seeds:
            events = run(recipe, seed, args.out / f"{name}-{seed}", extra)
            points = evaluations(events)
            train_s = max(e["elapsed"] for e in events if "elapsed" in e)
            results[name].append({"seed": seed, "final": points[-1][1], "train_s": train_s, "points": points})
    base_final = statistics.median(r["final"] for r in results["base"])
    base_time = statistics.median(r["train_s"] for r in results["base"])
    summary = {}
    for name, runs in results.items():
        for r in runs:
            r["to_base_s"] = time_to_reach(r["points"], base_final)
            print(f"{name:<9} seed {r['seed']}: final {r['final']:.4f} bpb, train {r['train_s']:.1f} s, "
                  f"reaches base's {base_final:.4f} at {r['to_base_s'] if r['to_base_s'] is None else round(r['to_base_s'], 1)} s")
        reach = [r["to_base_s"] for r in runs]
        summary[name] = {"final": statistics.median(r["final"] for r in runs),
                         "train_s": statistics.median(r["train_s"] for r in runs),
                         "to_base_s": statistics.median(reach) if None not in reach else None}
        print(f"{name:<9} median: final {summary[name]['final']:.4f} bpb, train {summary[name]['train_s']:.1f} s, "
              f"to base's final {summary[name]['to_base_s']}")
    speed = summary["speedrun"]
    fraction = None if speed["to_base_s"] is None else speed["to_base_s"] / base_time
    gain = base_final - speed["final"]
    print(f"speedrun reaches base's final bpb in {fraction if fraction is None else f'{100 * fraction:.0f}%'} of base's "
          f"training time (goal <= 60%); ends {gain:.4f} bpb lower (goal >= 0.03)")
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "summary": summary, "fraction": fraction, "gain": gain},
                                        indent=2))


if __name__ == "__main__":
    main()
