"""``modulm sweep FILE [--jobs N] [--dry-run] [--out DIR] [overrides]``: run every point of a sweep file.

Every point is validated before the first run starts. Points run as ``modulm run`` child processes
into ``<out>/<name>/<run-id>/``; running the same command again skips finished points and resumes
interrupted ones. At the end the sweep directory gets ``results.md`` and ``results.csv``.
Exit status: 0 when every point ended (finished, diverged or pruned), 1 when a point failed,
130/143 when stopped by SIGINT/SIGTERM (the running points saved a checkpoint).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from modulm.cli._common import plugin_manager
from modulm.errors import ModulmError
from modulm.machine import cpu_budget


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="run every point of a sweep file (grid, variants or Optuna search)")
    p.add_argument("sweep", metavar="FILE", help="sweep file (TOML)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides applied to every point")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run N points at a time, each with cores // N threads (default 1)")
    p.add_argument("--dry-run", action="store_true", help="validate and list the points; run nothing")
    p.add_argument("--out", default="runs/sweeps", metavar="DIR",
                   help="sweeps directory: runs go to DIR/<name>/<run-id>/ (default runs/sweeps)")
    p.set_defaults(func=run)


def run(args) -> int:
    from modulm import runlock
    from modulm.sweep.runner import Runner, SweepState
    from modulm.sweep.spec import load_sweep, validate_points

    spec = load_sweep(args.sweep, args.overrides)
    if spec.search is not None:
        from modulm.sweep.search import require_optuna

        require_optuna()
        if args.jobs != 1:
            raise ModulmError("--jobs: a [search] runs its trials one at a time; drop --jobs")
    pm = plugin_manager(args)
    runner = Runner(spec, Path(args.out) / spec.name, args.jobs, plugins=args.plugins)
    validate_points(spec, pm.registry, runner.run_overrides)
    runner.check_recorded(spec.points)
    if args.jobs > (cpus := cpu_budget()):
        print(f"modulm: warning: --jobs {args.jobs}: more points at a time than the {cpus} CPUs this process can "
              "keep busy; CPU runs share them, each slower", file=sys.stderr)
    if args.dry_run:
        return _list(runner)
    runner.sweep_dir.mkdir(parents=True, exist_ok=True)
    runlock.acquire(runner.sweep_dir, ("another modulm sweep", "--out DIR"))  # refused while one runs here
    runner.state = SweepState(runner.sweep_dir, spec)  # as the last sweep here left it
    try:
        return _run(args, spec, runner)
    finally:
        runlock.release(runner.sweep_dir)


def _run(args, spec, runner) -> int:
    from modulm.sweep.results import write_sweep_results
    from modulm.sweep.runner import format_seconds, run_finished

    where = f"{len(spec.points)} points" if spec.search is None else f"Optuna search of {spec.search.trials} trials"
    done = sum(runner.is_done(p) for p in spec.points)
    print(f"sweep {spec.name}: {where}{f' ({done} done)' if done else ''} -> {runner.sweep_dir}; "
          f"{args.jobs} at a time, {runner.threads} threads each", flush=True)
    start = time.perf_counter()
    if spec.search is None:
        runner.run(spec.points)
    else:
        from modulm.sweep.search import best_line, run_search

        run_search(runner)
    seconds = time.perf_counter() - start
    statuses = [v.get("status") for v in runner.state.data["points"].values()]
    if runner.sweep_dir.is_dir() and any(run_finished(runner.sweep_dir / r) or s in ("diverged", "pruned")
                                         for r, s in zip(runner.state.data["points"], statuses)):
        written = write_sweep_results(runner.sweep_dir)
        print((written[0].read_text(encoding="utf-8")).rstrip())
        print("wrote " + ", ".join(map(str, written)))
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
    print(f"sweep {spec.name}: {counts} in {format_seconds(seconds)}")
    if spec.search is not None and (line := best_line(runner)):
        print(line)
    if runner.stop_signal is not None:
        return 128 + int(runner.stop_signal)
    return 1 if "failed" in statuses else 0


def _list(runner) -> int:
    spec = runner.spec
    if spec.search is not None:
        space = ", ".join(f"{d.key} {d.kind} {list(d.values)}" for d in spec.search.space.values())
        print(f"sweep {spec.name}: Optuna {spec.search.sampler} search, {spec.search.trials} trials over {space}; "
              f"pruner {spec.search.pruner}; bounds validated")
        return 0
    print(f"sweep {spec.name}: {len(spec.points)} points, all valid; runs go to {runner.sweep_dir}/")
    for point in spec.points:
        state = "done" if runner.is_done(point) else "to run"
        print(f"  {point.run_id}  [{state}]  modulm run {spec.base} {' '.join(spec.override_strings(point))}")
    return 0
