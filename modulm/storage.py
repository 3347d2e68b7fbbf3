"""Disk space for a run's checkpoints, checked before the run starts.

A checkpoint holds the parameters and the optimizer state (not the gradients), so its size is
known from the model built on the meta device. A run keeps up to ``checkpointing.keep_last``
periodic checkpoints, ``best_model.pt`` and ``final_checkpoint.pt``, each written to a temporary
file first and then renamed. A run directory's own checkpoints count as space it can use again:
a resumed run replaces them, ``--overwrite`` removes them.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from modulm import rundir
from modulm.errors import ModulmError, human_bytes
from modulm.fileio import nearest_existing


def free_bytes(path: Path) -> int | None:
    """Free bytes on the file system that holds ``path`` (or would: its nearest existing parent),
    for this user; None where it cannot be read."""
    existing = nearest_existing(path)
    if existing is None:
        return None
    try:
        return shutil.disk_usage(existing).free
    except OSError:
        return None


def kept_periodic(checkpointing: Any, max_iterations: int) -> int:
    """The most periodic checkpoints a run holds at once (at most ``keep_last``); the best and the
    final one come on top."""
    interval = checkpointing.checkpoint_interval
    return min(checkpointing.keep_last, max_iterations // interval) if interval else 0


def _checkpoint_files(run_dir: Path) -> int:
    """Bytes of the checkpoints (files and sharded directories, by :mod:`modulm.rundir`'s names)
    already in ``run_dir``."""
    if not run_dir.is_dir():
        return 0
    total = 0
    for entry in run_dir.iterdir():
        if rundir.PERIODIC.match(entry.name) or entry.name in (rundir.FINAL, rundir.BEST, rundir.BEST_SHARDED):
            for path in (entry.rglob("*") if entry.is_dir() else (entry,)):
                try:
                    total += path.stat().st_size if path.is_file() else 0
                except OSError:
                    pass
    return total


def check_disk_space(run_dir: Path, checkpoint: int, periodic: int) -> list[str]:
    """Refuse a run whose file system cannot hold one ``checkpoint`` (bytes) in ``run_dir``;
    return a warning where it cannot hold all the run may keep at once: ``periodic`` checkpoints,
    the best and the final one."""
    kept = periodic + 2
    free = free_bytes(run_dir)
    if free is None or checkpoint <= 0:
        return []
    usable = free + _checkpoint_files(Path(run_dir))
    if usable < checkpoint:
        raise ModulmError(
            f"checkpointing.checkpoint_dir: {run_dir} is on a file system with {human_bytes(free)} free, and one "
            f"checkpoint of this model takes {human_bytes(checkpoint)} (parameters and optimizer state); free some "
            "space, or choose a checkpointing.checkpoint_dir on another disk")
    if usable < checkpoint * kept:
        return [f"checkpointing.checkpoint_dir: the run may keep {kept} checkpoints of {human_bytes(checkpoint)} "
                f"({human_bytes(checkpoint * kept)}) and {run_dir} has {human_bytes(usable)} for them; it stops with "
                "an error when the disk fills" + (" (fewer with a smaller checkpointing.keep_last)" if periodic else "")]
    return []
