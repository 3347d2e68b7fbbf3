"""Loss curves of one or several runs on one figure, from each run's ``metrics.jsonl``.

``read_curves(run_dir)`` returns the training and validation curves of a run;
``plot_runs(run_dirs, x=..., log=...)`` draws them (training: solid line; validation: dashed
with markers, same colour) on one matplotlib ``Figure`` with a legend from the run names;
``save_plot`` writes it as an image.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from modulm.errors import ModulmError

METRICS_FILE = "metrics.jsonl"
X_AXES = {"steps": ("step", "step"), "time": ("elapsed", "wall-clock time (s)"), "tokens": ("tokens", "tokens")}


@dataclass
class Curves:
    """One run's curves: ``train`` and ``val`` map an x value to a loss, in x order."""

    name: str
    train: dict[float, float] = field(default_factory=dict)
    val: dict[float, float] = field(default_factory=dict)


def metrics_path(run: str | Path) -> Path:
    """``run``'s metrics file: ``run`` is a run directory or a ``metrics.jsonl`` file."""
    run = Path(run)
    path = run / METRICS_FILE if run.is_dir() else run
    if not path.is_file():
        raise ModulmError(f"{run}: no {METRICS_FILE} (was the run logged with the jsonl logger?)")
    return path


def read_curves(run: str | Path, x: str = "steps", name: str | None = None) -> Curves:
    """The train and validation loss of a run against ``x`` (steps, time or tokens).

    A step logged twice (a resumed run repeats the steps after its last checkpoint) keeps its
    latest value; non-finite losses are dropped, and so is a last line cut short (no newline: a run
    killed mid-write). Any other line that is not a JSON object is a :class:`ModulmError`.
    """
    if x not in X_AXES:
        raise ModulmError(f"x axis {x!r}: choose one of {', '.join(X_AXES)}")
    path = metrics_path(run)
    key = X_AXES[x][0]
    by_step: dict[str, dict[int, tuple[float, float]]] = {"train": {}, "eval": {}}
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise ModulmError(f"{path}: not UTF-8 text (byte offset {exc.start})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the unfinished last line
                continue
            raise ModulmError(f"{path}:{number}: not a JSON object") from None
        if not isinstance(record, dict):
            raise ModulmError(f"{path}:{number}: not a JSON object")
        kind = record.get("event")
        loss = record.get("loss" if kind == "train" else "val_loss")
        if kind not in by_step or not _finite(loss) or not _finite(record.get(key)) or not _finite(record.get("step")):
            continue
        by_step[kind][int(record["step"])] = (float(record[key]), float(loss))
    curves = Curves(name or run_names([run])[0])
    curves.train = dict(sorted(by_step["train"].values()))
    curves.val = dict(sorted(by_step["eval"].values()))
    if not curves.train and not curves.val:
        raise ModulmError(f"{path}: no train or eval events with a loss")
    return curves


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def run_names(runs: Sequence[str | Path]) -> list[str]:
    """Legend names: each run directory's name, or its full path where two names collide."""
    names = [Path(r).name if Path(r).is_dir() else Path(r).parent.name for r in runs]
    return [str(r) if names.count(n) > 1 else n for r, n in zip(runs, names)]


def require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise ModulmError("plotting needs matplotlib: pip install 'modulm[plot]'") from None
    return matplotlib


def plot_runs(runs: Sequence[str | Path], x: str = "steps", log: bool = False, title: str | None = None):
    """A matplotlib ``Figure`` with every run's train and validation loss on one axes.

    Lines: per run, one for training (if it logged any) and one for validation (if it evaluated).
    ``log`` puts the loss axis on a log scale.
    """
    require_matplotlib()
    from matplotlib.figure import Figure

    if not runs:
        raise ModulmError("plot needs at least one run directory")
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    for index, (run, name) in enumerate(zip(runs, run_names(runs))):
        curves = read_curves(run, x, name)
        colour = f"C{index % 10}"
        if curves.train:
            axes.plot(list(curves.train), list(curves.train.values()), color=colour, linewidth=1.2,
                      label=f"{name} train")
        if curves.val:
            axes.plot(list(curves.val), list(curves.val.values()), color=colour, linestyle="--", marker="o",
                      markersize=3, label=f"{name} val")
    axes.set_xlabel(X_AXES[x][1])
    axes.set_ylabel("loss (nats/token)")
    if log:
        axes.set_yscale("log")
    axes.grid(True, alpha=0.3)
    axes.legend()
    axes.set_title(title or ("loss" if len(runs) == 1 else f"loss of {len(runs)} runs"))
    return figure


def check_plot_path(out: str | Path, option: str = "--out") -> Path:
    """``out`` as a path a figure can be written to: in an existing directory, not a directory
    itself, with a suffix matplotlib writes (.png, .pdf, .svg, ...); else a :class:`ModulmError`."""
    require_matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase

    out = Path(out)
    if out.is_dir():
        raise ModulmError(f"{option} {out}: is a directory; give an image file such as {out / 'loss.png'}")
    if not out.parent.is_dir():
        raise ModulmError(f"{option} {out}: directory {out.parent} does not exist")
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    if out.suffix.lower().lstrip(".") not in formats:
        raise ModulmError(f"{option} {out}: the suffix names the image format; choose one of "
                          f"{', '.join('.' + f for f in formats)}")
    return out


def save_plot(figure, out: str | Path) -> Path:
    """Write ``figure`` to ``out`` (checked by :func:`check_plot_path`)."""
    out = check_plot_path(out)
    figure.savefig(out, dpi=120)
    return out
