"""End-to-end runs of tiny models: learning, outputs, exact resume, interruption, bad input."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from modulm.assemble import assemble
from modulm.checkpoint import read_checkpoint
from modulm.errors import ModulmError
from modulm.trainer import Trainer

TINY_MODEL = {"component": "transformer", "context_length": 16, "d_model": 32, "num_layers": 2, "num_heads": 2, "d_ff": 64}


def token_file(path: Path, n: int = 4000, vocab: int = 64, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    np.save(path, rng.integers(0, vocab, n, dtype=np.uint16))
    return str(path)


def tiny_recipe(tmp_path: Path, **changes) -> dict:
    train = token_file(tmp_path / "train.npy")
    val = token_file(tmp_path / "val.npy", n=1000, seed=1)
    recipe = {
        "data": {"component": "memmap", "train": train, "val": val, "vocab_size": 64},
        "model": dict(TINY_MODEL),
        "optimizer": {"component": "adamw", "lr": 3e-3},
        "schedule": {"component": "cosine-warmup", "warmup_iters": 2, "min_lr": 3e-4},
        "training": {"batch_size": 4, "max_iterations": 8},
        "checkpointing": {"checkpoint_dir": str(tmp_path / "run"), "checkpoint_interval": 4},
        "logging": {"log_interval": 1, "eval_interval": 4, "eval_iters": 2},
        "system": {"device": "cpu", "seed": 7},
        "generation": {"max_tokens": 0},
        "loggers": [{"component": "console", "timestamps": False}, "file", "jsonl"],
    }
    for dotted, value in changes.items():
        table, key = dotted.split("__")
        recipe[table][key] = value
    return recipe


def metrics(run_dir: Path, event: str = "train") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def test_overfits_a_single_repeated_batch(tmp_path):
    pattern = np.tile(np.arange(17, dtype=np.uint16), 40)
    np.save(tmp_path / "repeat.npy", pattern)
    recipe = tiny_recipe(tmp_path, training__max_iterations=120)
    recipe["data"] = {"component": "memmap", "train": str(tmp_path / "repeat.npy"), "vocab_size": 64}
    recipe["schedule"] = {"component": "constant"}
    recipe["optimizer"] = {"component": "adamw", "lr": 1e-2, "weight_decay": 0.0}
    result = Trainer(assemble(recipe)).run()
    assert result.train_losses[0] > 3.0
    assert result.train_losses[119] < 0.05


def test_outputs_and_log_lines(tmp_path, capsys):
    result = Trainer(assemble(tiny_recipe(tmp_path))).run()
    run = tmp_path / "run"
    names = {p.name for p in run.iterdir()}
    assert {"recipe.toml", "training.log", "metrics.jsonl", "best_model.pt", "final_checkpoint.pt",
            "checkpoint_4.pt", "checkpoint_8.pt"} <= names
    log = (run / "training.log").read_text()
    assert "Using device: cpu" in log and "trainable parameters" in log
    assert " - INFO - Iter      0/8 | Loss: " in log and "| LR: 0.00e+00 | Grad: " in log and "| Tok/s: " in log
    out = capsys.readouterr().out
    assert "Iter      7/8 | Loss:" in out and "Val loss:" in out
    train = metrics(run)
    assert [r["step"] for r in train] == list(range(8))
    assert {"step", "loss", "lr", "grad_norm", "tokens", "elapsed", "tokens_per_sec"} <= train[0].keys()
    assert train[-1]["tokens"] == 8 * 4 * 16
    evals = metrics(run, "eval")
    assert [e["step"] for e in evals] == [4, 8] and evals[-1]["scope"] == "full"
    assert math.isclose(evals[-1]["val_perplexity"], math.exp(evals[-1]["val_loss"]), rel_tol=1e-6)
    assert result.final_eval.tokens == 999  # every token after the first, predicted once
    final = read_checkpoint(run / "final_checkpoint.pt")
    assert final["iteration"] == 8 and final["recipe"]["model"]["d_model"] == 32
    assert {"data", "rng", "best_val_loss", "meta"} <= final.keys()


def test_exact_resume_matches_an_uninterrupted_run(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    straight = Trainer(assemble(tiny_recipe(tmp_path / "a"))).run()
    recipe_b = tiny_recipe(tmp_path / "b")
    first = Trainer(assemble(recipe_b)).run(stop_at=5)
    assert first.iterations == 5 and (tmp_path / "b" / "run" / "checkpoint_5.pt").exists()
    second = Trainer(assemble(recipe_b)).run()  # resume = "auto" picks checkpoint_5.pt
    resumed = {**first.train_losses, **second.train_losses}
    assert sorted(second.train_losses) == [5, 6, 7]
    assert resumed == straight.train_losses  # bit-identical, every step
    assert second.final_eval.loss == straight.final_eval.loss


def test_existing_run_directory_is_not_overwritten(tmp_path):
    recipe = tiny_recipe(tmp_path)
    Trainer(assemble(recipe)).run(stop_at=2)
    recipe["checkpointing"]["resume"] = False
    with pytest.raises(ModulmError, match="already holds a run; resume it"):
        Trainer(assemble(recipe)).run()
    recipe["checkpointing"]["overwrite"] = True
    assert Trainer(assemble(recipe)).run().iterations == 8
    assert not (tmp_path / "run" / "checkpoint_2.pt").exists()


def test_non_finite_loss_stops_with_the_step(tmp_path):
    recipe = tiny_recipe(tmp_path, optimizer__lr=1e30, training__grad_clip=0.0)
    recipe["schedule"] = {"component": "constant"}
    with pytest.raises(ModulmError, match=r"loss became (nan|inf) at iteration \d+; .*lower optimizer.lr"):
        Trainer(assemble(recipe)).run()


def modulm_cli(*args, cwd, **kwargs):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "modulm", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def write_toml(tmp_path, recipe) -> Path:
    from modulm.tomlwrite import dumps

    path = tmp_path / "r.toml"
    path.write_text(dumps(recipe))
    return path


def test_sigterm_saves_and_the_same_command_resumes(tmp_path):
    recipe = tiny_recipe(tmp_path, training__max_iterations=100000, logging__eval_interval=0)
    path = write_toml(tmp_path, recipe)
    proc = modulm_cli("run", str(path), cwd=tmp_path)
    deadline = time.time() + 120
    for line in proc.stdout:  # wait until a few steps have run
        if "Iter      3/100000" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err  # 128 + SIGTERM: saved, but not finished
    assert "received SIGTERM; saved checkpoint_" in out
    saved = [p for p in (tmp_path / "run").glob("checkpoint_*.pt")]
    assert saved
    stopped_at = max(int(p.stem.split("_")[1]) for p in saved)
    again = modulm_cli("run", str(path), "training.max_iterations=" + str(stopped_at + 2), cwd=tmp_path)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert f"at iteration {stopped_at}" in out and "Training complete" in out


@pytest.mark.parametrize("change, message", [
    ({"data": {"component": "memmap", "train": "missing.npy", "vocab_size": 64}}, "missing.npy"),
    ({"model": dict(TINY_MODEL, d_modle=3)}, "model.d_modle: unknown key"),
])
def test_bad_recipe_or_data_exits_2_with_one_line_and_writes_nothing(tmp_path, change, message):
    recipe = tiny_recipe(tmp_path)
    recipe.update(change)
    path = write_toml(tmp_path, recipe)
    proc = modulm_cli("run", str(path), cwd=tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("modulm: error: ") and message in err
    assert not (tmp_path / "run").exists()


def test_the_fused_head_and_loss_trains_exactly_as_the_logits_loss(tmp_path, monkeypatch):
    """The trainer passes targets to a model whose forward takes them (the transformer fuses its
    head with the loss); the losses are those of the logits path to float32 rounding."""
    import modulm.trainer
    import modulm_transformer.model
    calls = []
    fused = modulm_transformer.model.linear_cross_entropy
    def counting(*args):  # training steps only (evaluation runs it too, without gradients)
        calls.extend([1] if torch.is_grad_enabled() else [])
        return fused(*args)

    monkeypatch.setattr(modulm_transformer.model, "linear_cross_entropy", counting)
    recipe = tiny_recipe(tmp_path, system__dtype="float32")
    with_targets = Trainer(assemble(recipe)).run().train_losses
    assert len(calls) == 8  # one per step
    monkeypatch.setattr(modulm.trainer, "takes_targets", lambda model: False)
    recipe["checkpointing"]["checkpoint_dir"] = str(tmp_path / "run2")
    with_logits = Trainer(assemble(recipe)).run().train_losses
    assert len(calls) == 8
    assert with_targets.keys() == with_logits.keys()
    for step in with_targets:
        assert with_targets[step] == pytest.approx(with_logits[step], rel=1e-5)
