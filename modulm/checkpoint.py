"""Checkpoints: atomic writes, ``weights_only`` loads, and the state of every stateful part.

:func:`save_checkpoint` / :func:`load_checkpoint` are the training guide's two functions (model,
optimizer, iteration, plus any extra plain data). A *run* checkpoint, written by the trainer, also
carries the data sampler, every RNG, the best validation loss, the resolved recipe and metadata,
so that resuming continues the run exactly. Its ``meta.loss`` is always the training loss of the
last optimizer step before the save (mean over micro-batches and ranks), never a validation loss.

:func:`read_checkpoint` is the one reader every command uses; a bad file is a one-line error.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import warnings
import zipfile
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


def read_checkpoint(src: str | os.PathLike | BinaryIO | IO[bytes], map_location: Any = "cpu",
                    mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint's dictionary with ``torch.load(weights_only=True)`` (no code runs).

    The one reader of checkpoints (``run`` resuming, ``generate``, ``export``, ``info``): any file
    that is not a readable modulm checkpoint raises a one-line :class:`ModulmError` naming it and
    saying what it is instead (missing, empty, a directory, text, truncated, another format, a
    torch file of something else, a pickle refused as unsafe). ``mmap`` maps the tensors lazily
    (a path only), for a cheap look at a large file.
    """
    name = str(src) if isinstance(src, (str, os.PathLike)) else "checkpoint stream"
    zipped = _sniff(Path(src)) if isinstance(src, (str, os.PathLike)) else False
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            state = torch.load(src, map_location=map_location, weights_only=True,
                               mmap=mmap and zipped)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"it would import {found.group(1)}" if found else "it is not only tensors and plain data"
        raise ModulmError(f"{name}: refused as unsafe: loading it would run code ({what}); a modulm "
                          "checkpoint holds only tensors and plain data") from None
    except PermissionError:
        raise ModulmError(f"{name}: cannot read the checkpoint (permission denied)") from None
    except Exception as exc:  # torch reports damage as RuntimeError, EOFError, KeyError, ValueError, ...
        detail = str(exc).splitlines()[0].split(". ")[0][:160] if str(exc) else type(exc).__name__
        raise ModulmError(f"{name}: damaged or not a torch checkpoint ({detail})") from None
    if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
        what = ("a bare state dict (tensors only)" if isinstance(state, dict) and state
                and all(isinstance(v, torch.Tensor) for v in state.values()) else f"a {type(state).__name__}")
        raise ModulmError(f"{name}: a torch file but not a modulm checkpoint: it holds {what}, not the model "
                          "state and iteration that modulm run saves")
    if not isinstance(state["model"], dict) or not isinstance(state["iteration"], int):
        raise ModulmError(f"{name}: not a modulm checkpoint (its model state or iteration has the wrong type)")
    if int(state.get("format", FORMAT_VERSION)) > FORMAT_VERSION:
        raise ModulmError(f"{name}: written by a newer modulm (checkpoint format {state['format']}, this "
                          f"modulm reads {FORMAT_VERSION}); upgrade modulm")
    return state


def _sniff(path: Path) -> bool:
    """Name what ``path`` is when it cannot be a torch checkpoint, before torch tries to read it.

    Returns whether it is in torch's zip format (the one that can be memory-mapped)."""
    if not path.exists():
        raise ModulmError(f"{path}: checkpoint not found")
    if path.is_dir():
        if (path / ".metadata").is_file():  # see modulm.sharded_checkpoint
            raise ModulmError(f"{path}: a sharded (fsdp) checkpoint directory; write it as one file with "
                              f"`modulm checkpoint consolidate {path} OUT.pt`")
        hint = f"; did you mean {path / 'final_checkpoint.pt'}?" if (path / "final_checkpoint.pt").is_file() else ""
        raise ModulmError(f"{path}: is a directory, not a checkpoint file{hint}")
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise ModulmError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None
    if not head:
        raise ModulmError(f"{path}: empty file (0 bytes), not a checkpoint; was its save interrupted?")
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            raise ModulmError(f"{path}: truncated or damaged checkpoint (its zip directory is unreadable; "
                              "was the file cut short or its save interrupted?)") from None
        if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            raise ModulmError(f"{path}: a zip archive but not a torch checkpoint")
        return True
    if head[:1] == b"\x80":  # a pickle: torch's legacy format or a plain pickle; torch.load decides
        return False
    if len(head) >= 9 and head[8:9] == b"{" and b'"dtype"' in head:
        raise ModulmError(f"{path}: a safetensors file (weights only), not a modulm checkpoint; "
                          "pass a checkpoint_*.pt or final_checkpoint.pt from a run directory")
    if b"\0" not in head:
        try:
            head.decode("utf-8")
            text = True
        except UnicodeDecodeError as exc:
            text = exc.start > len(head) - 4  # a character cut by the 4 KiB read
        if text:
            raise ModulmError(f"{path}: a text file, not a checkpoint (checkpoints are the .pt files modulm run "
                              "writes)")
    raise ModulmError(f"{path}: not a torch checkpoint (unknown binary format)")


def check_model_state(state_dict: dict[str, Any], model: torch.nn.Module, source: str | os.PathLike) -> None:
    """Raise a one-line error naming the first tensors whose names or shapes differ from ``model``'s."""
    expected = {k: tuple(v.shape) for k, v in unwrap(model).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    differ = [f"{k} is {_shape(got[k])} in the checkpoint, {_shape(v)} in this model"
              for k, v in expected.items() if k in got and got[k] != v]
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    if not (differ or missing or extra):
        return
    parts = differ[:2]
    if missing:
        parts.append(f"missing {', '.join(missing[:2])}" + (f" (+{len(missing) - 2} more)" if len(missing) > 2 else ""))
    if extra:
        parts.append(f"unexpected {', '.join(extra[:2])}" + (f" (+{len(extra) - 2} more)" if len(extra) > 2 else ""))
    more = f" (+{len(differ) - 2} more differing tensors)" if len(differ) > 2 else ""
    raise ModulmError(f"{source}: the checkpoint is of a different model: {'; '.join(parts)}{more}")


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def run_model_spec(state: dict[str, Any], source: str | os.PathLike) -> tuple[dict[str, Any], int]:
    """``(resolved recipe, vocab_size)`` stored in a checkpoint written by ``modulm run``."""
    recipe = state.get("recipe")
    vocab_size = (state.get("meta") or {}).get("vocab_size")
    if not isinstance(recipe, dict) or "model" not in recipe or not isinstance(vocab_size, int):
        raise ModulmError(f"{source}: has no resolved recipe or vocab size, so its model cannot be rebuilt: "
                          "it was not written by modulm run (save_checkpoint() stores neither)")
    return recipe, vocab_size


def load_checkpoint(src: str | os.PathLike | BinaryIO | IO[bytes], model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> int:
    """Restore ``model`` (and ``optimizer``) from ``src``; returns the saved iteration."""
    state = read_checkpoint(src)
    check_model_state(state["model"], model, src if isinstance(src, (str, os.PathLike)) else "checkpoint stream")
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
