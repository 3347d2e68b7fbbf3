"""modulm built-in plugin: console, file and JSON-lines loggers."""

from __future__ import annotations

import json
import math
import numbers
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from annotated_types import MinLen

from modulm import hookimpl
from modulm.lazy import lazy_attributes
from modulm_loggers.format import event_text, stamped

__all__ = ["ConsoleLogger", "FileLogger", "JsonlLogger", "TensorBoardLogger", "WandbLogger"]
__getattr__ = lazy_attributes(__name__, {"TensorBoardLogger": "modulm_loggers.trackers", "WandbLogger": "modulm_loggers.trackers"})


class ConsoleLogger:
    """Print the training guide's log lines to the terminal (not ``error`` events: the CLI prints those).

    timestamps: prefix each line with the time and level, as the training guide shows
    stream: "stdout" or "stderr"
    """

    def __init__(self, timestamps: bool = True, stream: Literal["stdout", "stderr"] = "stdout", *, run_dir: Path | None = None):
        self.timestamps = timestamps
        self.stream = stream

    def log(self, event: Mapping[str, Any]) -> None:
        if event.get("event") == "error":  # the command line prints errors itself, on stderr
            return
        out = sys.stdout if self.stream == "stdout" else sys.stderr
        level = str(event.get("level", "INFO"))
        for line in event_text(event):
            print(stamped(line, level) if self.timestamps else line, file=out, flush=True)

    def close(self) -> None:
        pass


class FileLogger:
    """Append the same lines as the console, time-stamped, to a file in the run directory.

    filename: file name inside the run directory
    """

    def __init__(self, filename: Annotated[str, MinLen(1)] = "training.log", *, run_dir: Path):
        self.path = Path(run_dir) / filename
        self._file = self.path.open("a", encoding="utf-8")

    def log(self, event: Mapping[str, Any]) -> None:
        if self._file.closed:
            return
        level = str(event.get("level", "INFO"))
        for line in event_text(event):
            self._file.write(stamped(line, level) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity: they are written as null, so every number stays a number."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # numpy and 0-dim tensor scalars
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


class JsonlLogger:
    """Write one JSON object per training-log and evaluation event to a file in the run directory.

    filename: file name inside the run directory
    """

    EVENTS = ("train", "eval")

    def __init__(self, filename: Annotated[str, MinLen(1)] = "metrics.jsonl", *, run_dir: Path):
        self.path = Path(run_dir) / filename
        self._file = self.path.open("a", encoding="utf-8")
        if self._file.tell() and not _ends_with_newline(self.path):
            self._file.write("\n")  # a record cut short by a kill keeps to its own line

    def log(self, event: Mapping[str, Any]) -> None:
        if self._file.closed or event.get("event") not in self.EVENTS:
            return
        record = {k: _json_safe(v) for k, v in event.items()
                  if v is None or isinstance(v, (numbers.Real, str)) or getattr(v, "ndim", None) == 0}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(-1, 2)
        return fh.read(1) == b"\n"


@hookimpl
def modulm_register_components(registry):
    registry.logger("console", ConsoleLogger)
    registry.logger("file", FileLogger)
    registry.logger("jsonl", JsonlLogger)
    registry.logger("wandb", "modulm_loggers.trackers:WandbLogger")
    registry.logger("tensorboard", "modulm_loggers.trackers:TensorBoardLogger")
