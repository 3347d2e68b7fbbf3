"""W&B and TensorBoard loggers: scalars from events, offline files read back, missing extras."""

from __future__ import annotations

import json
import math
import struct
import sys
import time

import numpy as np
import pytest
from hypothesis import given, strategies as st

import modulm
from modulm.errors import ModulmError
from modulm_loggers.trackers import EVAL_KEYS, TRAIN_KEYS, TensorBoardLogger, WandbLogger, scalars

numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6), st.none(), st.booleans())


@given(kind=st.sampled_from(["train", "eval", "start", "message", "end"]),
       values=st.dictionaries(st.sampled_from([*TRAIN_KEYS, *EVAL_KEYS, "step", "other"]), numbers))
def test_scalars_keep_the_finite_numbers_of_known_keys(kind, values):
    out = scalars({"event": kind, **values})
    keys = {"train": TRAIN_KEYS, "eval": EVAL_KEYS}.get(kind, {})
    expected = {keys[k]: float(v) for k, v in values.items() if k in keys and isinstance(v, (int, float))
                and not isinstance(v, bool) and math.isfinite(v)}
    assert out == expected


@pytest.mark.parametrize("module, extra, cls", [("wandb", "wandb", WandbLogger), ("tensorboard", "tensorboard", TensorBoardLogger)])
def test_missing_extra_is_one_clear_line(tmp_path, monkeypatch, module, extra, cls):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(ModulmError, match=rf"pip install 'modulm\[{extra}\]'") as info:
        cls(run_dir=tmp_path)
    assert "\n" not in str(info.value)


def run_with_loggers(tmp_path, loggers):
    """A tiny real run logging to ``loggers`` plus jsonl; returns (run_dir, train and eval rows of metrics.jsonl)."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "train.npy", rng.integers(0, 64, 5_000, dtype=np.uint16))
    np.save(tmp_path / "val.npy", rng.integers(0, 64, 1_000, dtype=np.uint16))
    recipe = {
        "data": {"component": "memmap", "train": str(tmp_path / "train.npy"), "val": str(tmp_path / "val.npy"),
                 "vocab_size": 64},
        "model": {"context_length": 8, "d_model": 16, "num_layers": 1, "num_heads": 2, "d_ff": 32},
        "training": {"batch_size": 4, "max_iterations": 6},
        "checkpointing": {"checkpoint_dir": str(tmp_path / "run")},
        "logging": {"log_interval": 2, "eval_interval": 3},
        "loggers": [{"component": "jsonl"}, *loggers],
        "system": {"device": "cpu"},
    }
    modulm.Trainer(modulm.assemble(recipe)).run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return tmp_path / "run", [r for r in rows if r["event"] == "train"], [r for r in rows if r["event"] == "eval"]


# --- TensorBoard ----------------------------------------------------------------------------------------

def read_tensorboard(log_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_event_file_holds_the_logged_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    logger = TensorBoardLogger(run_dir=tmp_path)
    logger.log({"event": "start", "step": 0, "lines": ["hello"]})
    logger.log({"event": "train", "step": 0, "loss": 5.5, "lr": 0.0, "grad_norm": 1.25, "tokens": 32})
    logger.log({"event": "eval", "step": 4, "val_loss": 4.75, "val_perplexity": math.exp(4.75), "val_bpb": None})
    logger.log({"event": "train", "step": 4, "loss": 4.5, "lr": 1e-3, "grad_norm": float("nan"), "tokens": 160})
    logger.close()
    logger.close()  # safe twice
    logger.log({"event": "train", "step": 9, "loss": 1.0})  # ignored after close
    scalars_read = read_tensorboard(tmp_path / "tensorboard")
    assert scalars_read["train/loss"] == [(0, 5.5), (4, 4.5)]
    assert scalars_read["train/grad_norm"] == [(0, 1.25)]  # the NaN was left out
    assert scalars_read["val/loss"] == [(4, 4.75)]
    assert "val/bpb" not in scalars_read


def test_tensorboard_in_a_real_run_matches_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    run_dir, train, evals = run_with_loggers(tmp_path, [{"component": "tensorboard", "subdir": "tb"}])
    read = read_tensorboard(run_dir / "tb")
    assert [s for s, _ in read["train/loss"]] == [r["step"] for r in train]
    assert [v for _, v in read["train/loss"]] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    assert [v for _, v in read["val/loss"]] == pytest.approx([r["val_loss"] for r in evals], rel=1e-6)


# --- Weights & Biases (offline) ------------------------------------------------------------------------

@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for var, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": tmp_path / "wb-config",
                       "WANDB_CACHE_DIR": tmp_path / "wb-cache", "WANDB_DATA_DIR": tmp_path / "wb-data"}.items():
        monkeypatch.setenv(var, str(value))
    return wandb


def wandb_records(run_dir):
    """The records of the one offline run under ``run_dir``: a LevelDB-style log of protobufs."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, block, pos, chunk = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def wandb_finished_records(run_dir, timeout=20.0):
    """The run's records once its ``exit`` record is on disk: wandb's service process writes the
    file asynchronously and may still be flushing when ``finish()`` returns."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(wandb_records(run_dir))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def wandb_history(run_dir):
    rows = []
    for record in wandb_finished_records(run_dir):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def test_wandb_offline_run_records_the_logged_scalars(tmp_path, wandb_offline):
    logger = WandbLogger(project="modulm-test", tags=["t"], mode="offline", run_dir=tmp_path)
    logger.log({"event": "start", "step": 0, "lines": []})
    logger.log({"event": "train", "step": 0, "loss": 5.5, "lr": 0.0, "grad_norm": 1.25, "tokens": 32})
    logger.log({"event": "train", "step": 2, "loss": 5.0, "lr": 1e-3, "grad_norm": 1.0, "tokens": 96})
    logger.log({"event": "eval", "step": 3, "val_loss": 4.75, "val_perplexity": math.exp(4.75)})
    logger.close()
    logger.close()
    history = wandb_history(tmp_path)
    assert [(row["_step"], row.get("train/loss")) for row in history] == [(0, 5.5), (2, 5.0), (3, None)]
    assert history[-1]["val/loss"] == 4.75
    (run,) = [r.run for r in wandb_records(tmp_path) if r.WhichOneof("record_type") == "run"]
    assert run.project == "modulm-test" and run.display_name == tmp_path.name and list(run.tags) == ["t"]


def test_wandb_in_a_real_run_matches_metrics_jsonl_and_gets_the_recipe(tmp_path, wandb_offline):
    run_dir, train, evals = run_with_loggers(tmp_path, [{"component": "wandb", "mode": "offline"}])
    history = wandb_history(run_dir)
    logged = [(row["_step"], row["train/loss"]) for row in history if "train/loss" in row]
    assert logged == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in train]
    assert [row["val/loss"] for row in history if "val/loss" in row] == pytest.approx([r["val_loss"] for r in evals])
    config = {}
    for record in wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        items = record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        config.update({item.key: json.loads(item.value_json) for item in items})
    model = config["model"]
    assert model.get("value", model)["d_model"] == 16  # the resolved recipe is the run config
