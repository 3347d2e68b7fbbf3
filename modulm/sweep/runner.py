"""Running sweep points: each one a ``modulm run`` child process with its own run directory.

Why child processes, even one at a time: a point is then exactly a normal run (the same command a
user would type, its own logs), a crash or leak in one cannot touch the next, ``--jobs N`` is the same
code with N children, and the parent can watch each child's ``metrics.jsonl`` (for Optuna pruning)
and stop it with SIGTERM, on which the trainer saves a checkpoint. The cost is about two seconds of
start-up per point.

The outcome of a child is read from its run directory and stderr, not from its exit status: a
finished run logged an ``end`` event; a diverged one printed ``loss became ... at iteration N``; a
stopped one left a checkpoint to resume. The parent records every point in ``<sweep_dir>/sweep.json``
(status, step, seconds, its overrides) and re-running the same sweep skips finished, diverged and
pruned points and resumes the rest (``checkpointing.resume = "auto"``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from modulm import rundir
from modulm.errors import ModulmError
from modulm.fileio import atomic_write_text
from modulm.machine import cpu_budget
from modulm.plot import METRICS_FILE
from modulm.sweep.spec import Point, SweepSpec
from modulm.tomlwrite import _value as toml_literal

STATE_FILE = "sweep.json"
LOGS = "logs"
DONE = ("finished", "diverged", "pruned")
_DIVERGED = re.compile(r"loss became (\S+) at iteration (\d+)")


def run_finished(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` got to its end: its final checkpoint is written, its last
    training step is its last one, and (if it evaluates at all) the final evaluation is logged."""
    if not (Path(run_dir) / rundir.FINAL).is_file():
        return False
    events = read_events(run_dir)
    train = [e for e in events if e.get("event") == "train"]
    if not train or train[-1].get("step", -1) + 1 != train[-1].get("max_steps"):
        return False
    evals = [e for e in events if e.get("event") == "eval"]
    return not evals or any(e.get("step") == train[-1]["max_steps"] for e in evals)


def read_events(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(event, dict):
            events.append(event)
    return events


def system_has_threads_setting() -> bool:
    from modulm.settings import SystemSettings

    return any(f.name == "threads" for f in dataclasses.fields(SystemSettings))


def recorded_points(sweep_dir: Path, hint: str = "") -> dict[str, dict]:
    """The points ``sweep_dir``'s ``sweep.json`` records; a :class:`ModulmError` (ending in ``hint``)
    when it is not a sweep's state."""
    path = sweep_dir / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModulmError(f"{path}: not valid JSON{hint}") from None
    if not isinstance(state, dict) or not isinstance(state.get("points", {}), dict):
        raise ModulmError(f"{path}: not a sweep's state (a JSON object with a \"points\" object){hint}")
    return state.get("points", {})


class SweepState:
    """``sweep.json``: what the sweep is and every point's status; written atomically after each change."""

    def __init__(self, sweep_dir: Path, spec: SweepSpec) -> None:
        self.sweep_dir, self.path = sweep_dir, sweep_dir / STATE_FILE
        self.data: dict[str, Any] = {"name": spec.name, "sweep_file": str(spec.path), "base": str(spec.base), "points": {}}
        if self.path.is_file():
            self.data["points"] = recorded_points(self.sweep_dir, "; delete it to forget the sweep's statuses")

    def point(self, run_id: str) -> dict[str, Any]:
        return self.data["points"].get(run_id, {})

    def update(self, run_id: str, **values: Any) -> None:
        self.data["points"].setdefault(run_id, {}).update(values)
        atomic_write_text(self.path, json.dumps(self.data, indent=2, sort_keys=False) + "\n")


@dataclass
class Child:
    """One point's ``modulm run`` process; ``monitor(step, val_loss)`` returning True stops it (pruning)."""

    point: Point
    run_dir: Path
    command: list[str]
    log_path: Path
    env: dict[str, str]
    monitor: Callable[[int, float], bool] | None = None
    process: subprocess.Popen | None = None
    started: float = 0.0
    pruned: bool = False
    _offset: int = 0
    _lines: str = ""
    outcome: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            stdin=subprocess.DEVNULL)
        self.started = time.perf_counter()

    def poll(self) -> int | None:
        if self.monitor is not None and not self.pruned:
            for step, loss in self._new_evals():
                if self.monitor(step, loss):
                    self.pruned = True
                    self.signal(signal.SIGTERM)
                    break
        return self.process.poll()

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def _new_evals(self):
        path = self.run_dir / METRICS_FILE
        if not path.is_file():
            return
        with path.open("rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        self._offset += len(chunk)
        self._lines += chunk.decode("utf-8", errors="replace")
        *complete, self._lines = self._lines.split("\n")
        for line in complete:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (isinstance(event, dict) and event.get("event") == "eval" and event.get("scope") == "sampled"
                    and "val_loss" in event):
                yield int(event["step"]), float(event["val_loss"])

    def finish(self, returncode: int) -> dict[str, Any]:
        """The outcome, read from the run directory and the child's log."""
        seconds = time.perf_counter() - self.started
        tail = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-20:]
        errors = [line for line in tail if line.startswith("modulm: error: ")]
        diverged = next((m for line in errors if (m := _DIVERGED.search(line))), None)
        if run_finished(self.run_dir):
            status, extra = "finished", {}
        elif diverged:
            status, extra = "diverged", {"step": int(diverged.group(2)), "message": errors[-1].removeprefix("modulm: error: ")}
        elif self.pruned:
            status, extra = "pruned", {"step": _last_step(self.run_dir)}
        elif rundir.periodic_checkpoints(self.run_dir) and returncode in (0, 130, 143, -2, -15):
            status, extra = "interrupted", {"step": _last_step(self.run_dir)}
        else:
            message = errors[-1].removeprefix("modulm: error: ") if errors else (tail[-1] if tail else "")
            status, extra = "failed", {"exit": returncode, "message": message}
        self.outcome = {"status": status, "seconds": round(seconds, 2), **extra}
        return self.outcome


def _last_step(run_dir: Path) -> int | None:
    """The iteration a stopped run saved (its newest checkpoint), else the last one it logged."""
    saved = rundir.periodic_checkpoints(run_dir)
    if saved:
        return saved[-1][0]
    steps = [e["step"] for e in read_events(run_dir) if e.get("event") == "train"]
    return steps[-1] + 1 if steps else None


def final_eval(run_dir: Path) -> dict[str, Any] | None:
    evals = [e for e in read_events(run_dir) if e.get("event") == "eval"]
    return evals[-1] if evals else None


class Runner:
    """Runs points of one sweep into ``sweep_dir``, ``jobs`` at a time, printing a line per point."""

    def __init__(self, spec: SweepSpec, sweep_dir: Path, jobs: int = 1, plugins: list[str] | None = None,
                 out: TextIO | None = None) -> None:
        if jobs < 1:
            raise ModulmError(f"--jobs must be >= 1, got {jobs}")
        self.spec, self.sweep_dir, self.jobs = spec, Path(sweep_dir), jobs
        self.plugins = plugins or []
        self.out = out or sys.stdout
        self.threads = max(1, cpu_budget() // jobs) if jobs > 1 else int(os.environ.get("OMP_NUM_THREADS") or cpu_budget())
        self.stop_signal: int | None = None
        self.state = SweepState(self.sweep_dir, spec)

    # -- what a point's run gets -------------------------------------------------------------
    def run_dir(self, point: Point) -> Path:
        return self.sweep_dir / point.run_id

    def run_overrides(self, point: Point) -> list[str]:
        """Everything the child's ``modulm run`` gets after the base recipe (validated up front)."""
        overrides = self.spec.override_strings(point)
        overrides += [f"checkpointing.checkpoint_dir={toml_literal(str(self.run_dir(point)))}", 'checkpointing.resume="auto"']
        if self.jobs > 1 and system_has_threads_setting() and not any(o.startswith("system.threads=") for o in overrides):
            overrides.append(f"system.threads={self.threads}")
        return overrides

    def check_recorded(self, points: list[Point]) -> None:
        """A point already recorded with other overrides would resume into a different run: refuse."""
        for point in points:
            recorded = self.state.point(point.run_id).get("overrides")
            if recorded is not None and recorded != self.spec.override_strings(point):
                raise ModulmError(f"{self.sweep_dir / point.run_id}: this point was started with other overrides "
                                  f"({', '.join(recorded)}); delete that directory or use another --out")

    def is_done(self, point: Point) -> bool:
        status = self.state.point(point.run_id).get("status")
        if status in ("diverged", "pruned"):
            return True
        return run_finished(self.run_dir(point))

    def child(self, point: Point, monitor=None) -> Child:
        run_dir = self.run_dir(point)
        overrides = self.run_overrides(point)
        if rundir.holds_a_run(run_dir) and rundir.latest_checkpoint(run_dir) is None:
            overrides.append("checkpointing.overwrite=true")  # killed before its first checkpoint: start afresh
        command = [sys.executable, "-m", "modulm"]
        for plugin in self.plugins:
            command += ["-p", plugin]
        command += ["run", str(self.spec.base), *overrides]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.jobs > 1:
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        return Child(point, run_dir, command, self.sweep_dir / LOGS / f"{point.run_id}.log", env, monitor)

    # -- the loop ----------------------------------------------------------------------------
    def run(self, points: list[Point], monitors: dict[str, Callable] | None = None,
            total: int | None = None, done_before: int = 0) -> dict[str, dict]:
        """Run ``points`` (skipping done ones); return each run id's outcome. Stops early on SIGINT/SIGTERM."""
        self.check_recorded(points)
        pending = [p for p in points if not self.is_done(p)]
        for point in points:
            if point not in pending and self.state.point(point.run_id).get("status") not in DONE:
                self.state.update(point.run_id, status="finished", overrides=self.spec.override_strings(point))
        total = total or len(points)
        count = done_before + len(points) - len(pending)
        running: list[Child] = []
        self._running = running
        outcomes: dict[str, dict] = {}
        spent: list[float] = []
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while (pending and self.stop_signal is None) or running:
                while pending and len(running) < self.jobs and self.stop_signal is None:
                    point = pending.pop(0)
                    child = self.child(point, (monitors or {}).get(point.run_id))
                    resuming = rundir.latest_checkpoint(child.run_dir) if "checkpointing.overwrite=true" not in child.command else None
                    self.state.update(point.run_id, status="running", overrides=self.spec.override_strings(point))
                    child.start()
                    print(f"[{count + len(running) + 1}/{total}] {point.run_id}: "
                          + (f"resuming from {resuming.name}" if resuming else "started"), file=self.out, flush=True)
                    running.append(child)
                time.sleep(0.05)
                for child in list(running):
                    code = child.poll()
                    if code is None:
                        continue
                    running.remove(child)
                    outcome = child.finish(code)
                    self.state.update(child.point.run_id, **{k: outcome.get(k) for k in ("status", "seconds", "step", "message")})
                    outcomes[child.point.run_id] = outcome
                    if outcome["status"] != "interrupted":
                        count += 1
                        spent.append(outcome["seconds"])
                    shown = count if outcome["status"] != "interrupted" else count + 1  # its slot, not yet done
                    print(self._progress(child, outcome, shown, total, len(pending) + len(running), spent),
                          file=self.out, flush=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return outcomes

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_signal is None:
            print(f"received {signal.Signals(signum).name}: stopping after the running points save a checkpoint",
                  file=self.out, flush=True)
        self.stop_signal = signum
        # children in our process group got a terminal's Ctrl-C already; a kill reaches only us
        for child in getattr(self, "_running", []):
            child.signal(signum)

    def _progress(self, child: Child, outcome: dict, count: int, total: int, left: int, spent: list[float]) -> str:
        status = outcome["status"]
        head = f"[{count}/{total}] {child.point.run_id}: {status}"
        if status == "finished":
            ev = final_eval(child.run_dir) or {}
            head += f" in {outcome['seconds']:.1f}s"
            if isinstance(ev.get("val_loss"), float):
                head += f" | val loss {ev['val_loss']:.4f}"
            if isinstance(ev.get("val_bpb"), float):
                head += f", {ev['val_bpb']:.4f} bits/byte"
        elif status in ("diverged", "pruned", "interrupted"):
            head += f" at step {outcome.get('step')}" + (f" after {outcome['seconds']:.1f}s" if status != "interrupted" else "")
        else:
            head += f" (exit {outcome.get('exit')}): {outcome.get('message', '')}; log: {child.log_path}"
        if self.stop_signal is None and left and spent:
            eta = sum(spent) / len(spent) * left / min(self.jobs, left)
            head += f" | {left} left, ETA {format_seconds(eta)}"
        return head


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"
