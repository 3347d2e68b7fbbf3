"""Experiment-tracker loggers: Weights & Biases and TensorBoard, each behind an optional extra.

Both send the same scalars: ``train/loss, train/lr, train/grad_norm, train/tokens_per_sec,
train/tokens`` at each training-log event and ``val/loss, val/perplexity, val/bpb`` at each
evaluation, indexed by the optimizer step.
"""

from __future__ import annotations

import importlib
import math
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from annotated_types import MinLen

from modulm.errors import ModulmError

TRAIN_KEYS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm",
              "tokens_per_sec": "train/tokens_per_sec", "tokens": "train/tokens"}
EVAL_KEYS = {"val_loss": "val/loss", "val_perplexity": "val/perplexity", "val_bpb": "val/bpb"}


def require(module: str, extra: str):
    """Import ``module`` or raise a one-line ModulmError naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModulmError(f"the {extra} logger needs the {extra} package: pip install 'modulm[{extra}]'") from None


def missing(module: str, extra: str) -> list[str]:
    """The one-line problem when ``module`` cannot be imported (a component ``preflight`` hook's answer)."""
    try:
        require(module, extra)
    except ModulmError as exc:
        return [str(exc)]
    return []


def scalars(event: Mapping[str, Any]) -> dict[str, float]:
    """The tracker scalars of a ``train`` or ``eval`` event (finite numbers only; others: empty)."""
    keys = {"train": TRAIN_KEYS, "eval": EVAL_KEYS}.get(event.get("event"), {})
    out = {}
    for key, name in keys.items():
        value = event.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def _recipe(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "recipe.toml"
    try:
        return tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, tomllib.TOMLDecodeError):
        return {}


class WandbLogger:
    """Send training and evaluation scalars to Weights & Biases (pip install 'modulm[wandb]').

    project: W&B project name
    name: run name; None -> the run directory's name
    entity: W&B team or user; None -> your default
    mode: "online", "offline" (sync later with `wandb sync`) or "disabled"; None -> WANDB_MODE or online
    tags: tags for the run
    """

    def __init__(self, project: Annotated[str, MinLen(1)] = "modulm", name: str | None = None, entity: str | None = None,
                 mode: Literal["online", "offline", "disabled"] | None = None, tags: list[str] | None = None,
                 *, run_dir: Path):
        self._wandb = require("wandb", "wandb")
        self.run_dir = Path(run_dir)
        self._settings = dict(project=project, name=name or self.run_dir.name, entity=entity, mode=mode,
                              tags=list(tags or []), dir=str(self.run_dir))
        self.run = None

    @staticmethod
    def preflight(params: Mapping[str, Any]) -> list[str]:
        """Before the run directory is written: is wandb installed?"""
        return missing("wandb", "wandb")

    def _start(self) -> None:
        # Started on the first event, once the trainer has written recipe.toml, so the run's
        # config is the resolved recipe.
        self.run = self._wandb.init(config=_recipe(self.run_dir), reinit="create_new", **self._settings)

    def log(self, event: Mapping[str, Any]) -> None:
        if self.run is None:
            if event.get("event") == "end":
                return
            self._start()
        values = scalars(event)
        if values:
            self.run.log(values, step=int(event["step"]))

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class TensorBoardLogger:
    """Write training and evaluation scalars as TensorBoard event files (pip install 'modulm[tensorboard]').

    subdir: directory inside the run directory for the event files (point `tensorboard --logdir` at it)
    """

    def __init__(self, subdir: Annotated[str, MinLen(1)] = "tensorboard", *, run_dir: Path):
        require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / subdir
        self._writer = SummaryWriter(log_dir=str(self.log_dir))
        self._closed = False

    @staticmethod
    def preflight(params: Mapping[str, Any]) -> list[str]:
        """Before the run directory is written: is tensorboard installed?"""
        return missing("tensorboard", "tensorboard")

    def log(self, event: Mapping[str, Any]) -> None:
        if self._closed:
            return
        for name, value in scalars(event).items():
            self._writer.add_scalar(name, value, global_step=int(event["step"]))
        if event.get("event") == "eval":
            self._writer.flush()

    def close(self) -> None:
        if not self._closed:
            self._writer.close()
            self._closed = True
