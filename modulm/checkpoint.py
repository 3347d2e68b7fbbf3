"""Checkpoints: atomic writes, ``weights_only`` loads, and the state of every stateful part.

:func:`save_checkpoint` / :func:`load_checkpoint` are the training guide's two functions (model,
optimizer, iteration, plus any extra plain data). A *run* checkpoint, written by the trainer, also
carries the data sampler, every RNG, the best validation loss, the resolved recipe and metadata,
so that resuming continues the run exactly.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import IO, Any, BinaryIO

import torch

from modulm.errors import ModulmError
from modulm.fileio import atomic_write

FORMAT_VERSION = 1


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind torch.compile or DistributedDataParallel wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None or not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def save_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int,
                    out: str | os.PathLike | BinaryIO | IO[bytes], **extra: Any) -> None:
    """Save model and optimizer state and the iteration (plus ``extra`` plain data) to ``out``.

    A path is written atomically; a file-like object is written as it is.
    """
    state = {"format": FORMAT_VERSION, "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
             "iteration": int(iteration), **extra}
    if isinstance(out, (str, os.PathLike)):
        atomic_write(out, lambda fh: torch.save(state, fh))
    else:
        torch.save(state, out)


def read_checkpoint(src: str | os.PathLike | BinaryIO | IO[bytes], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint's dictionary with ``torch.load(weights_only=True)`` (no code runs)."""
    if isinstance(src, (str, os.PathLike)) and Path(src).is_dir():
        raise ModulmError(f"{src}: a sharded (fsdp) checkpoint directory; write it as one file with "
                          f"`modulm checkpoint consolidate {src} OUT.pt`")
    try:
        state = torch.load(src, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ModulmError(f"{src}: checkpoint not found") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        name = src if isinstance(src, (str, os.PathLike)) else "checkpoint stream"
        raise ModulmError(f"{name}: not a readable modulm checkpoint ({str(exc).splitlines()[0]})") from None
    if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
        raise ModulmError(f"{src}: not a modulm checkpoint (no model state or iteration)")
    return state


def load_checkpoint(src: str | os.PathLike | BinaryIO | IO[bytes], model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> int:
    """Restore ``model`` (and ``optimizer``) from ``src``; returns the saved iteration."""
    state = read_checkpoint(src)
    unwrap(model).load_state_dict(state["model"])
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    return int(state["iteration"])


def rng_state() -> dict[str, Any]:
    """Every RNG the trainer touches, as tensors and plain data (``weights_only``-loadable)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
