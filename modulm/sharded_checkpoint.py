"""Sharded checkpoints: directories written by ``torch.distributed.checkpoint`` (DCP).

An fsdp run saves each checkpoint as a directory instead of one file::

    checkpoint_{iter}/
        trainer_state.pt   rank 0, first: iteration, per-rank sampler and RNG states, scaler, best
                           validation loss, resolved recipe, metadata (a single-file checkpoint
                           without "model" and "optimizer")
        __R_0.distcp       rank R's shards of the model and optimizer state
        .metadata          rank 0, last: written (atomically) once every rank's shards are on disk

so a directory without ``.metadata`` is a save that did not finish and is never resumed from.
The state is saved by fully qualified parameter name (``get_model_state_dict`` /
``get_optimizer_state_dict``), which DCP reshards on load: a checkpoint saved by N processes loads
into M processes, or into one process holding the whole model. :func:`consolidate` turns such a
directory into the single-file checkpoint that ``generate``, ``export`` and ``info`` read.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from modulm.errors import ModulmError
from modulm.fileio import atomic_write

METADATA = ".metadata"
TRAINER_STATE = "trainer_state.pt"


def is_complete(path: Path) -> bool:
    """Whether ``path`` is a sharded checkpoint whose save finished (its metadata was written)."""
    return path.is_dir() and (path / METADATA).is_file() and (path / TRAINER_STATE).is_file()


def _states(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}


def save(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, trainer_state: dict[str, Any],
         on_main: Callable[[Callable[[], Any]], Any]) -> Path:
    """Every rank calls this: rank 0 (through ``on_main``, which all ranks wait for) replaces any
    earlier ``path`` and writes the trainer state, then every rank writes its shards."""
    import torch.distributed.checkpoint as dcp

    def start() -> None:
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        path.mkdir(parents=True)
        atomic_write(path / TRAINER_STATE, lambda fh: torch.save(trainer_state, fh))

    on_main(start)
    dcp.save(_states(model, optimizer), checkpoint_id=str(path))
    return path


def read_trainer_state(path: Path) -> dict[str, Any]:
    """The trainer state of a complete sharded checkpoint (``weights_only``: no code runs)."""
    if not is_complete(path):
        raise ModulmError(f"{path}: not a complete sharded checkpoint (no {METADATA} or {TRAINER_STATE}: "
                          "its save was interrupted, or it is not a checkpoint)")
    return torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)


def read_for_resume(path: Path) -> dict[str, Any]:
    """The trainer state plus ``model``: a meta tensor of each saved parameter's (global) shape, read
    from DCP's metadata, so that a resume can check the shapes before loading anything."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    state = read_trainer_state(path)
    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    state["model"] = {key.removeprefix("model."): torch.empty(entry.size, device="meta")
                      for key, entry in saved.items()
                      if key.startswith("model.") and isinstance(entry, TensorStorageMetadata)}
    return state


def read_any(path: Path, **options: Any) -> dict[str, Any]:
    """A checkpoint to resume from, file or sharded directory: :func:`modulm.checkpoint.read_checkpoint`
    (with ``options``) or :func:`read_for_resume`."""
    from modulm.checkpoint import read_checkpoint

    return read_for_resume(path) if is_complete(path) else read_checkpoint(path, **options)


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Restore ``model`` and ``optimizer`` (sharded or whole, any world size) from ``path``; every
    rank calls this."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    read_trainer_state(path)  # a complete checkpoint, or one line saying why not
    states = _states(model, optimizer)
    dcp.load(states, checkpoint_id=str(path))
    set_model_state_dict(model, states["model"])
    set_optimizer_state_dict(model, optimizer, states["optimizer"])


def consolidate(path: Path) -> dict[str, Any]:
    """The single-file checkpoint equivalent to the sharded one at ``path``, read in this process.

    No model is built: DCP's metadata says what the directory holds. The optimizer state comes
    back in ``torch.optim.Optimizer.state_dict`` form (parameters numbered in group order).
    """
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    trainer_state = read_trainer_state(path)
    with tempfile.TemporaryDirectory() as tmp:  # DCP's public way to read a directory without a model
        dcp_to_torch_save(path, Path(tmp) / "states.pt")
        states = torch.load(Path(tmp) / "states.pt", map_location="cpu", weights_only=True)
    return {**trainer_state, "model": states["model"], "optimizer": indexed_optimizer_state(states["optimizer"])}


def indexed_optimizer_state(named: dict[str, Any]) -> dict[str, Any]:
    """A name-keyed optimizer state (``get_optimizer_state_dict``) in ``Optimizer.state_dict`` form:
    parameters numbered 0, 1, ... in the order the groups list them."""
    index: dict[str, int] = {}
    groups = []
    for group in named["param_groups"]:
        ids = [index.setdefault(name, len(index)) for name in group["params"]]
        groups.append({**group, "params": ids})
    state = {index[name]: value for name, value in named["state"].items()}
    return {"state": state, "param_groups": groups}


def named_optimizer_state(indexed: dict[str, Any], optimizer: torch.optim.Optimizer,
                          names: dict[int, str]) -> dict[str, Any]:
    """The inverse of :func:`indexed_optimizer_state` for ``optimizer``, whose parameters are
    named by ``names`` (``id(parameter) -> name``): the saved groups must list as many parameters
    as the optimizer's, in the same order (the optimizer was built the same way)."""
    saved_groups, groups = indexed["param_groups"], optimizer.param_groups
    if len(saved_groups) != len(groups) or any(len(s["params"]) != len(g["params"]) for s, g in zip(saved_groups, groups)):
        raise ModulmError("checkpoint: its optimizer parameter groups do not match this run's optimizer "
                          "(a different model or optimizer recipe?)")
    number_to_name = {}
    for saved, group in zip(saved_groups, groups):
        number_to_name.update({i: names[id(p)] for i, p in zip(saved["params"], group["params"])})
    return {"state": {number_to_name[i]: value for i, value in indexed["state"].items()},
            "param_groups": [{**s, "params": [number_to_name[i] for i in s["params"]]} for s in saved_groups]}
