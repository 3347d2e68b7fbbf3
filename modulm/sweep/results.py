"""Comparing runs: one table of run directories, read from what each run wrote.

Everything comes from the run directories themselves — ``metrics.jsonl`` (losses, tokens, time),
``training.log`` (the parameter count line), ``recipe.toml`` (the resolved recipe) — plus, for the
points of a sweep, the sweep's ``sweep.json`` (a point's overrides and whether it diverged or was
pruned). No database of its own.

Columns: ``run``, the settings that differ between the runs (a sweep's point overrides when every
run is a sweep point, else the resolved recipes' differing keys), ``params``, ``tokens``,
``train_s`` (the trainer's step time, evaluation excluded), ``tokens_per_s``, ``final_val_loss`` /
``final_bpb`` (the last evaluation: the full held-out split for a finished run), ``best_val_loss`` /
``best_bpb`` (the lowest of any evaluation) and ``status`` (finished, diverged@STEP, pruned@STEP,
interrupted, running, failed or incomplete).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from modulm.errors import ModulmError
from modulm.plot import METRICS_FILE, X_AXES, check_plot_path, read_curves, require_matplotlib
from modulm.sweep.runner import STATE_FILE, read_events, recorded_points, run_finished
from modulm.sweep.spec import flatten, format_value, short_names

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

METRIC_COLUMNS = ("params", "tokens", "train_s", "tokens_per_s", "final_val_loss", "final_bpb", "best_val_loss",
                  "best_bpb", "status")
IGNORED_KEYS = ("name", "checkpointing.checkpoint_dir", "checkpointing.resume", "checkpointing.resume_from",
                "checkpointing.overwrite")
_PARAMS = re.compile(r"Model initialized with ([\d,]+) trainable parameters")


@dataclass
class RunRow:
    """One run directory's row; ``settings`` are the values its differing columns are chosen from."""

    run_dir: Path
    label: str
    settings: dict[str, Any]
    from_sweep: bool
    metrics: dict[str, Any] = field(default_factory=dict)


def expand(paths: Sequence[str | Path]) -> list[tuple[Path, dict | None]]:
    """Run directories named by ``paths`` (runs or sweep directories), each with its sweep record if
    any; a run named twice (``a b a``, or a sweep and one of its runs) is listed once."""
    runs: list[tuple[Path, dict | None]] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise ModulmError(f"{path}: not a run or sweep directory")
        if (path / STATE_FILE).is_file():
            points = recorded_points(path)
            runs += [(path / run_id, record) for run_id, record in points.items() if (path / run_id).is_dir()]
        elif (path / METRICS_FILE).is_file():
            parent = recorded_points(path.parent) if (path.parent / STATE_FILE).is_file() else {}
            runs.append((path, parent.get(path.name)))
        else:
            found = sorted(p.parent for p in path.glob(f"*/{METRICS_FILE}"))
            if not found:
                raise ModulmError(f"{path}: holds no {METRICS_FILE} nor sweep directory ({STATE_FILE})")
            runs += [(p, None) for p in found]
    if not runs:
        raise ModulmError("compare: no runs found in " + ", ".join(map(str, paths)))
    unique: dict[Path, tuple[Path, dict | None]] = {}
    for run, record in runs:
        unique.setdefault(run.resolve(), (run, record))  # the first mention wins
    return list(unique.values())


def read_row(run_dir: Path, record: dict | None) -> RunRow:
    """The metrics of one run (see the module docstring for the columns)."""
    from modulm.recipe import parse_override

    events = read_events(run_dir)
    if record is not None and "overrides" in record:
        settings = {".".join(keys): value for keys, value in map(parse_override, record["overrides"])}
    else:
        recipe = run_dir / "recipe.toml"
        settings = flatten(tomllib.loads(recipe.read_text(encoding="utf-8"))) if recipe.is_file() else {}
    settings = {k: v for k, v in settings.items() if k not in IGNORED_KEYS}
    train = [e for e in events if e.get("event") == "train"]
    evals = [e for e in events if e.get("event") == "eval" and _finite(e.get("val_loss"))]
    last = (train or [{}])[-1]
    tokens, seconds = last.get("tokens"), last.get("elapsed")
    row = RunRow(run_dir, run_dir.name, settings, record is not None and "overrides" in record)
    row.metrics = {
        "params": _params(run_dir),
        "tokens": tokens,
        "train_s": round(seconds, 2) if _finite(seconds) else None,
        "tokens_per_s": round(tokens / seconds) if _finite(seconds) and seconds and tokens else None,
        "final_val_loss": evals[-1]["val_loss"] if evals else None,
        "final_bpb": evals[-1].get("val_bpb") if evals else None,
        "best_val_loss": min(e["val_loss"] for e in evals) if evals else None,
        "best_bpb": min((e["val_bpb"] for e in evals if _finite(e.get("val_bpb"))), default=None),
        "status": _status(run_dir, record),
    }
    return row


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _params(run_dir: Path) -> int | None:
    log = run_dir / "training.log"
    if log.is_file():
        match = _PARAMS.search(log.read_text(encoding="utf-8", errors="replace"))
        if match:
            return int(match.group(1).replace(",", ""))
    return None


def _status(run_dir: Path, record: dict | None) -> str:
    status = (record or {}).get("status")
    if status in ("diverged", "pruned") and record.get("step") is not None:
        return f"{status}@{record['step']}"
    if run_finished(run_dir):
        return "finished"
    return status or "incomplete"


def collect(paths: Sequence[str | Path]) -> tuple[list[RunRow], list[str]]:
    """Rows for every run under ``paths`` and the setting keys that differ between them."""
    runs = expand(paths)
    rows = [read_row(run_dir, record) for run_dir, record in runs]
    if not all(r.from_sweep for r in rows):  # mixed: compare resolved recipes throughout
        for row, (run_dir, _) in zip(rows, runs):
            recipe = run_dir / "recipe.toml"
            if row.from_sweep and recipe.is_file():
                row.settings = {k: v for k, v in flatten(tomllib.loads(recipe.read_text(encoding="utf-8"))).items()
                                if k not in IGNORED_KEYS}
    labels = [r.label for r in rows]
    for row in rows:
        if labels.count(row.label) > 1:
            row.label = f"{row.run_dir.parent.name}/{row.label}"
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row.settings if k not in keys]
    differing = [k for k in keys if len({json.dumps(r.settings.get(k), sort_keys=True) for r in rows}) > 1]
    for row in rows:  # a sweep point that leaves a key alone shows the value its recipe resolved to
        missing = [k for k in differing if k not in row.settings]
        if missing and (row.run_dir / "recipe.toml").is_file():
            resolved = flatten(tomllib.loads((row.run_dir / "recipe.toml").read_text(encoding="utf-8")))
            for key in missing:  # "model.norm" = "none" overrides what the recipe resolves as model.norm.component
                value = resolved.get(key, resolved.get(f"{key}.component"))
                if value is not None:
                    row.settings[key] = value
    differing = [k for k in differing if len({json.dumps(r.settings.get(k), sort_keys=True) for r in rows}) > 1]
    return rows, differing


def table(rows: list[RunRow], differing: list[str], sort: str | None = None) -> tuple[list[str], list[list[Any]]]:
    """Header and value rows; ``sort`` is a column name (numbers ascending, missing values last)."""
    names = short_names(differing)
    header = ["run"] + [names[k] for k in differing] + list(METRIC_COLUMNS)
    body = [[r.label] + [r.settings.get(k) for k in differing] + [r.metrics[c] for c in METRIC_COLUMNS] for r in rows]
    if sort:
        if sort not in header:
            raise ModulmError(f"--sort {sort!r}: choose one of {', '.join(header)}")
        i = header.index(sort)
        numeric = all(isinstance(row[i], (int, float)) or row[i] is None for row in body)
        body.sort(key=lambda row: (row[i] is None, row[i] if numeric else str(row[i] or "")))
    return header, body


def _cell(value: Any, column: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and column == "train_s":
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}" if value >= 10_000 else str(value)
    return format_value(value)


def render(header: list[str], body: list[list[Any]], fmt: str = "md") -> str:
    """The table as markdown (rounded, for reading) or CSV/JSON (full precision, for scripts)."""
    if fmt == "md":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(_cell(v, h) if h in METRIC_COLUMNS or i == 0 else ("-" if v is None else format_value(v))
                                    for i, (h, v) in enumerate(zip(header, row))) + " |" for row in body]
        return "\n".join(lines) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in body])
        return out.getvalue()
    if fmt == "json":
        return json.dumps([dict(zip(header, row)) for row in body], indent=2) + "\n"
    raise ModulmError(f"--format {fmt!r}: choose md, csv or json")


def legend(row: RunRow, differing: list[str]) -> str:
    names = short_names(differing)
    parts = [f"{names[k]}={format_value(row.settings[k])}" for k in differing if k in row.settings]
    return ",".join(parts) if parts and len(parts) <= 3 else row.label


def plot(rows: list[RunRow], differing: list[str], out: str | Path, x: str = "steps", log: bool = False,
         log_x: bool = False, title: str | None = None) -> Path:
    """Write :func:`figure` to ``out`` (checked by :func:`modulm.plot.check_plot_path`)."""
    out = check_plot_path(out, "--plot")
    figure(rows, differing, x, log, log_x, title).savefig(out, dpi=120)
    return out


def figure(rows: list[RunRow], differing: list[str], x: str = "steps", log: bool = False, log_x: bool = False,
           title: str | None = None):
    """Validation loss of every run that evaluated, one line each (legend: its differing settings)."""
    require_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), layout="constrained")
    axes = fig.add_subplot()
    drawn = 0
    for index, row in enumerate(rows):
        try:
            curve = read_curves(row.run_dir, x, row.label).val
        except ModulmError:
            continue
        if not curve:
            continue
        name = legend(row, differing) + ("" if row.metrics["status"] == "finished" else f" ({row.metrics['status']})")
        axes.plot(list(curve), list(curve.values()), color=f"C{index % 10}", marker="o", markersize=3, label=name)
        drawn += 1
    if not drawn:
        raise ModulmError("--plot: none of the runs logged a validation loss")
    axes.set_xlabel(X_AXES[x][1])
    axes.set_ylabel("validation loss (nats/token)")
    if log:
        axes.set_yscale("log")
    if log_x:
        axes.set_xscale("log")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    axes.set_title(title or f"validation loss of {drawn} runs")
    return fig


def write_sweep_results(sweep_dir: Path) -> list[Path]:
    """``results.md`` and ``results.csv`` in a sweep directory (what ``modulm compare`` prints for it)."""
    rows, differing = collect([sweep_dir])
    header, body = table(rows, differing)
    written = []
    for name, fmt in (("results.md", "md"), ("results.csv", "csv")):
        path = Path(sweep_dir) / name
        path.write_text(render(header, body, fmt), encoding="utf-8")
        written.append(path)
    return written
