"""The run directory: what it holds, which checkpoint a run resumes from, and never clobbering it.

A run directory (``checkpointing.checkpoint_dir``) holds ``checkpoint_{iter}.pt``,
``best_model.pt``, ``final_checkpoint.pt``, ``training.log``, ``metrics.jsonl``, ``recipe.toml``
(the resolved recipe of its newest checkpoints; ``recipe.{N}.toml`` keeps the one used up to
iteration N when a resume changed it) and ``tokenizer/``. Under ``distributed.strategy = "fsdp"``
the periodic and best checkpoints are sharded directories ``checkpoint_{iter}/`` and
``best_model/`` (:mod:`modulm.sharded_checkpoint`), counted only once their save finished.

:func:`plan` decides, writing nothing, what a start means: afresh, resuming which checkpoint, or a
one-line refusal; :func:`prepare` then carries the plan out. Starting where a run already is either
resumes it or fails, unless ``overwrite`` is set; a run killed before its first checkpoint holds
nothing to resume, so it simply starts again.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from modulm import runlock
from modulm.errors import ModulmError
from modulm.fileio import remove_stale_temp_files
from modulm.settings import CheckpointSettings

PERIODIC = re.compile(r"^checkpoint_(\d+)(\.pt)?$")  # a file, or a sharded directory without .pt
RECIPE_HISTORY = re.compile(r"^recipe\.(\d+)\.toml$")
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


@dataclass(frozen=True)
class RunPlan:
    """What starting a run in ``run_dir`` means: resume ``resume`` (or start afresh), clearing first or not."""

    run_dir: Path
    resume: Path | None = None
    clear: bool = False
    note: str = ""  # one line for the start of the log, e.g. why a run starts again


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
        candidates.append((int(read_checkpoint(final, mmap=True)["iteration"]), final))
    return max(candidates, key=lambda c: c[0])[1] if candidates else None


def holds_a_run(run_dir: Path) -> bool:
    return bool(periodic_checkpoints(run_dir)) or any((run_dir / name).exists() for name in (*OWNED, BEST_SHARDED))


def check_writable(value: str, key: str = "checkpointing.checkpoint_dir") -> Path:
    """``value`` as a directory this process can create and write in, or a one-line error.

    An existing directory is asked (``os.access``: permissions and read-only file systems); for one
    that does not exist yet, its nearest existing parent is probed with a temporary file removed at
    once (where it would be created): nothing is left.
    """
    if not str(value).strip():
        raise ModulmError(f"{key}: is empty; name a directory for the run, e.g. runs/my-run")
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise ModulmError(f"{key}: {path} exists and is not a directory")
    parent = path
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ModulmError(f"{key}: {path} cannot be created: {parent} is a file, not a directory")
    if parent == path:  # an existing directory: ask, so that not even its modification time changes
        if not os.access(path, os.W_OK | os.X_OK):
            raise ModulmError(f"{key}: cannot write {path}: permission denied or a read-only file system")
        return path
    try:
        fd, probe = tempfile.mkstemp(prefix=".modulm-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ModulmError(f"{key}: cannot write {path} (in {parent}, where it would be created): "
                          f"{exc.strerror or exc}") from None
    return path


def plan(settings: CheckpointSettings) -> RunPlan:
    """Decide where the run lives and what it resumes, writing nothing; a one-line error when it cannot
    start (another process running in the directory is one: :mod:`modulm.runlock`)."""
    run_dir = check_writable(settings.checkpoint_dir)
    if run_dir.is_dir():
        runlock.check_free(run_dir)
    explicit = settings.resume_from or (settings.resume if settings.resume not in ("auto", True, False) else None)
    if explicit:
        key = "resume_from" if settings.resume_from else "resume"
        path = Path(explicit).expanduser()
        if path.is_dir() and not is_checkpoint(path) and holds_a_run(path):
            latest = latest_checkpoint(path)
            if latest is None:
                raise ModulmError(f"checkpointing.{key}: {path} is a run directory without a checkpoint")
            path = latest
        elif not is_checkpoint(path):  # a file, or a complete sharded directory
            what = ("is a directory, not a checkpoint file" if path.is_dir() else
                    "is not a regular file" if path.exists() else "not found")
            raise ModulmError(f"checkpointing.{key}: checkpoint {path} {what}")
        clear = settings.overwrite and path.resolve().parent != run_dir.resolve()
        return RunPlan(run_dir, path, clear=clear)
    if settings.overwrite:
        return RunPlan(run_dir, None, clear=True)
    if holds_a_run(run_dir):
        if settings.resume in ("auto", True):
            latest = latest_checkpoint(run_dir)
            if latest is not None:
                return RunPlan(run_dir, latest)
            return RunPlan(run_dir, None, clear=True,
                           note=f"{run_dir} holds a run that stopped before its first checkpoint; starting it again")
        raise ModulmError(f"run directory {run_dir} already holds a run; resume it (checkpointing.resume=\"auto\") "
                          "or start afresh with checkpointing.overwrite=true (modulm run --overwrite)")
    return RunPlan(run_dir, None)


def prepare(settings: CheckpointSettings | RunPlan) -> tuple[Path, Path | None]:
    """Carry out a plan (made from ``settings`` if given those): create the run directory, remove what
    a previous run or a killed save left that the plan replaces; return it and the checkpoint to resume.

    Takes the directory's lock first (:func:`modulm.runlock.acquire`); the caller releases it."""
    chosen = settings if isinstance(settings, RunPlan) else plan(settings)
    chosen.run_dir.mkdir(parents=True, exist_ok=True)
    runlock.acquire(chosen.run_dir)
    remove_stale_temp_files(chosen.run_dir)
    if chosen.clear:
        clear(chosen.run_dir)
    return chosen.run_dir, chosen.resume


def keep_recipe_history(run_dir: Path, iteration: int) -> Path | None:
    """Rename the run's ``recipe.toml`` to ``recipe.{iteration}.toml`` (the recipe up to that iteration)."""
    current = run_dir / RECIPE
    if not current.is_file():
        return None
    kept = run_dir / f"recipe.{iteration}.toml"
    os.replace(current, kept)
    return kept


def clear(run_dir: Path) -> None:
    """Delete what a previous run wrote (and only that) from ``run_dir``."""
    if not run_dir.is_dir():
        return
    for path in run_dir.iterdir():
        if PERIODIC.match(path.name):  # incomplete sharded directories too
            _remove(path)
    for name in (*OWNED, BEST_SHARDED):
        _remove(run_dir / name)
    for path in run_dir.iterdir():
        if RECIPE_HISTORY.match(path.name):
            path.unlink()
    shutil.rmtree(run_dir / TOKENIZER, ignore_errors=True)


def prune(run_dir: Path, keep_last: int) -> None:
    """Keep only the newest ``keep_last`` periodic checkpoints (0 keeps all)."""
    if keep_last <= 0:
        return
    for _, path in periodic_checkpoints(run_dir)[:-keep_last]:
        _remove(path)
