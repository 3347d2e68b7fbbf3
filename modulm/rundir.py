"""The run directory: what it holds, which checkpoint a run resumes from, and never clobbering it.

A run directory (``checkpointing.checkpoint_dir``) holds ``checkpoint_{iter}.pt``,
``best_model.pt``, ``final_checkpoint.pt``, ``training.log``, ``metrics.jsonl``, ``recipe.toml``
(the resolved recipe) and ``tokenizer/``; under ``distributed.strategy = "fsdp"`` the periodic
and best checkpoints are sharded directories ``checkpoint_{iter}/`` and ``best_model/``
(:mod:`modulm.sharded_checkpoint`), counted only once their save finished. Starting a run in a directory that already holds one
either resumes it or fails, unless ``overwrite`` is set.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from modulm.errors import ModulmError
from modulm.settings import CheckpointSettings

PERIODIC = re.compile(r"^checkpoint_(\d+)(\.pt)?$")  # a file, or a sharded directory without .pt
FINAL = "final_checkpoint.pt"
BEST = "best_model.pt"
RECIPE = "recipe.toml"
TOKENIZER = "tokenizer"
OWNED = ("training.log", "metrics.jsonl", RECIPE, BEST, FINAL)
BEST_SHARDED = "best_model"


def is_checkpoint(path: Path) -> bool:
    """A checkpoint file, or a sharded checkpoint directory whose save finished."""
    from modulm.sharded_checkpoint import is_complete

    return path.is_file() or is_complete(path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def periodic_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``checkpoint_{iter}.pt`` files and complete ``checkpoint_{iter}/`` directories, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := PERIODIC.match(p.name)) and is_checkpoint(p)]
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint with the highest iteration: the newest periodic one, or the final one."""
    from modulm.checkpoint import read_checkpoint

    periodic = periodic_checkpoints(run_dir)
    candidates = [(it, path) for it, path in periodic[-1:]]
    final = run_dir / FINAL
    if final.exists():
        candidates.append((int(read_checkpoint(final)["iteration"]), final))
    return max(candidates, key=lambda c: c[0])[1] if candidates else None


def holds_a_run(run_dir: Path) -> bool:
    return bool(periodic_checkpoints(run_dir)) or any((run_dir / name).exists() for name in (*OWNED, BEST_SHARDED))


def prepare(settings: CheckpointSettings) -> tuple[Path, Path | None]:
    """Create the run directory if needed; return it and the checkpoint to resume from (or None)."""
    run_dir = Path(settings.checkpoint_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ModulmError(f"checkpointing.checkpoint_dir: {run_dir} exists and is not a directory")
    explicit = settings.resume_from or (settings.resume if settings.resume not in ("auto", True, False) else None)
    if explicit:
        path = Path(explicit)
        if not is_checkpoint(path):
            key = "resume_from" if settings.resume_from else "resume"
            raise ModulmError(f"checkpointing.{key}: checkpoint {path} not found")
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir, path
    if settings.overwrite:
        clear(run_dir)
    elif holds_a_run(run_dir):
        if settings.resume in ("auto", True):
            latest = latest_checkpoint(run_dir)
            if latest is not None:
                return run_dir, latest
            raise ModulmError(f"run directory {run_dir} already holds a run but no checkpoint to resume; "
                              "start afresh with checkpointing.overwrite=true")
        raise ModulmError(f"run directory {run_dir} already holds a run; resume it (checkpointing.resume=\"auto\") "
                          "or start afresh with checkpointing.overwrite=true")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, None


def clear(run_dir: Path) -> None:
    """Delete what a previous run wrote (and only that) from ``run_dir``."""
    if not run_dir.is_dir():
        return
    for path in run_dir.iterdir():
        if PERIODIC.match(path.name):  # incomplete sharded directories too
            _remove(path)
    for name in (*OWNED, BEST_SHARDED):
        _remove(run_dir / name)
    shutil.rmtree(run_dir / TOKENIZER, ignore_errors=True)


def prune(run_dir: Path, keep_last: int) -> None:
    """Keep only the newest ``keep_last`` periodic checkpoints (0 keeps all)."""
    if keep_last <= 0:
        return
    for _, path in periodic_checkpoints(run_dir)[:-keep_last]:
        _remove(path)
