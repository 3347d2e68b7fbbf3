"""Tiny runs for the preflight, checkpoint-reader and run-file tests: recipes, TOML files, snapshots."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from modulm.cli import main
from modulm.tomlwrite import dumps

TINY_MODEL = {"component": "transformer", "context_length": 16, "d_model": 32, "num_layers": 1, "num_heads": 2, "d_ff": 64}


def tiny_recipe(root: Path, run: str = "run", **tables) -> dict:
    """A 4-iteration memmap run in ``root/run`` (files made once per root); ``tables`` update its tables."""
    rng = np.random.default_rng(0)
    for name, n in (("train.npy", 4000), ("val.npy", 600)):
        if not (root / name).exists():
            np.save(root / name, rng.integers(0, 64, n, dtype=np.uint16))
    recipe = {
        "data": {"component": "memmap", "train": str(root / "train.npy"), "val": str(root / "val.npy"), "vocab_size": 64},
        "model": dict(TINY_MODEL),
        "optimizer": {"component": "adamw", "lr": 3e-3},
        "schedule": {"component": "constant"},
        "training": {"batch_size": 4, "max_iterations": 4},
        "checkpointing": {"checkpoint_dir": str(root / run), "checkpoint_interval": 2},
        "logging": {"log_interval": 1, "eval_interval": 2, "eval_iters": 1},
        "system": {"device": "cpu", "seed": 3},
        "generation": {"max_tokens": 0},
        "loggers": [{"component": "console", "timestamps": False}, "file", "jsonl"],
    }
    for table, values in tables.items():
        recipe[table] = {**recipe.get(table, {}), **values} if isinstance(values, dict) else values
    return recipe


def write_recipe(root: Path, recipe: dict, name: str = "r.toml") -> Path:
    path = root / name
    path.write_text(dumps(recipe))
    return path


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and directory under ``root`` with its size, modification time and mode."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            stat = path.lstat()
            found[str(path.relative_to(root))] = (stat.st_size if path.is_file() else None, stat.st_mtime_ns, stat.st_mode)
    return found


def cli(capsys, *args) -> tuple[int, str, list[str]]:
    """Run ``modulm ARGS`` in this process: (exit status, stdout, stderr lines)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as done:  # argparse's own exits
        code = done.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def one_error_line(err: list[str], *fragments: str) -> str:
    """Assert the one-line error contract and that the line holds every fragment; return it."""
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("modulm: error: "), line
    assert "Traceback" not in line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def refused_before_writing(capsys, root: Path, args: list, *fragments: str) -> str:
    """Run ``modulm ARGS``; assert exit 2, one error line holding every fragment, and ``root``
    exactly as it was (nothing written, moved or half-written); return the line."""
    before = snapshot(root)
    code, _, err = cli(capsys, *args)
    assert code == 2, (code, err)
    line = one_error_line(err, *fragments)
    assert snapshot(root) == before
    return line
