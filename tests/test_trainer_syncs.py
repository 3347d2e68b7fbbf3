"""The loop reads the device only at boundaries; divergence is caught there; the logs stay honest."""

import json
from pathlib import Path

import pytest
import torch

from modulm import runlines, runtime
from modulm.assemble import assemble
from modulm.cli import main
from modulm.errors import ModulmError
from modulm.tomlwrite import dumps
from modulm.trainer import Trainer
from test_trainer import metrics, tiny_recipe

SYNCS = ("item", "tolist", "__float__", "__int__", "__bool__")
BOUNDARIES = ("_read_back", "_check_finite_model", "_evaluate", "_save", "_log")
# The CPU-only shortcuts that read a value on purpose (each guarded by a device check; on CUDA the
# same functions stay on the device): the loss's backward skips multiplying by a gradient of 1, and
# clipping skips scaling when the norm is under the limit.
CPU_SHORTCUTS = ("functional/loss.py", "functional/grad.py")


@pytest.fixture
def sync_counter(monkeypatch):
    """Records every host read of a tensor (item, tolist, float(), int(), bool()) made inside the
    training loop but outside a boundary method, with the file that asked for it."""
    calls: list[tuple[str, str]] = []
    where = ["before the loop"]

    def counted(name, original):
        def wrapper(self, *args, **kwargs):
            if where[-1] == "loop":
                import sys
                calls.append((name, sys._getframe(1).f_code.co_filename))
            return original(self, *args, **kwargs)
        return wrapper

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))

    def boundary(name, original):
        def wrapper(self, *args, **kwargs):
            where.append(name)
            try:
                return original(self, *args, **kwargs)
            finally:
                where.pop()
        return wrapper

    for name in BOUNDARIES:
        monkeypatch.setattr(Trainer, name, boundary(name, getattr(Trainer, name)))
    step = Trainer._step

    def first_step_opens_the_loop(self):
        if where == ["before the loop"]:
            where[0] = "loop"
        return step(self)

    monkeypatch.setattr(Trainer, "_step", first_step_opens_the_loop)
    return calls


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_steps_between_boundaries_never_read_the_device(tmp_path, sync_counter, monkeypatch, grad_clip):
    recipe = tiny_recipe(tmp_path, training__max_iterations=12, training__grad_clip=grad_clip,
                         logging__log_interval=5, logging__eval_interval=0, checkpointing__checkpoint_interval=0,
                         system__dtype="float32")
    read_backs = []
    original = Trainer._read_back
    monkeypatch.setattr(Trainer, "_read_back", lambda self, result: read_backs.append(len(self._pending)) or original(self, result))
    result = Trainer(assemble(recipe)).run()
    unexpected = [(name, path) for name, path in sync_counter if not path.endswith(CPU_SHORTCUTS)]
    assert unexpected == []
    assert sorted(result.train_losses) == list(range(12))  # every step's loss still recorded
    assert read_backs == [1, 5, 5, 1]  # at the log steps 0, 5, 10 and the last, 11: one read for each window


def test_a_divergence_is_caught_at_the_next_boundary_and_never_saved(tmp_path):
    recipe = tiny_recipe(tmp_path, optimizer__lr=1e30, training__grad_clip=0.0, training__max_iterations=50,
                         logging__log_interval=10, logging__eval_interval=0, checkpointing__checkpoint_interval=3,
                         system__dtype="float32")
    recipe["schedule"] = {"component": "constant"}
    with pytest.raises(ModulmError, match=r"loss became (nan|inf) at iteration [12]; no checkpoint was written"):
        Trainer(assemble(recipe)).run()
    assert not list((tmp_path / "run").glob("checkpoint_*.pt"))


def test_a_non_finite_update_with_a_finite_loss_is_not_saved(tmp_path, monkeypatch):
    recipe = tiny_recipe(tmp_path, training__max_iterations=20, logging__log_interval=100,
                         logging__eval_interval=0, checkpointing__checkpoint_interval=2, system__dtype="float32")
    trainer = Trainer(assemble(recipe))
    step, calls = trainer.optimizer.step, []

    def poison_the_fourth_update(*args, **kwargs):
        out = step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 4:
            next(trainer.model.parameters()).data.fill_(float("nan"))
        return out

    trainer.optimizer.step = poison_the_fourth_update
    with pytest.raises(ModulmError, match=r"parameters became non-finite by iteration 4; the last good "
                                          r"checkpoint is .*checkpoint_2\.pt"):
        trainer.run()
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint_*.pt")) == ["checkpoint_2.pt"]


def test_logs_without_clipping_show_no_grad_and_json_holds_numbers_or_null(tmp_path):
    Trainer(assemble(tiny_recipe(tmp_path, training__grad_clip=0.0, system__dtype="float32"))).run()
    log = (tmp_path / "run" / "training.log").read_text()
    assert "Grad:" not in log and "nan" not in log
    for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert not any(isinstance(v, str) for k, v in record.items() if k not in ("event", "scope"))
    assert all(r["grad_norm"] is None and isinstance(r["loss"], float) for r in metrics(tmp_path / "run"))


def test_run_log_and_info_agree_on_non_embedding_parameters(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, training__max_iterations=1, system__dtype="float32")
    Trainer(assemble(recipe)).run()
    run_line = next(line for line in capsys.readouterr().out.splitlines() if "trainable parameters" in line)
    path = tmp_path / "r.toml"
    path.write_text(dumps(recipe))
    assert main(["info", str(path)]) == 0
    info = {}
    for line in capsys.readouterr().out.splitlines():  # the parameter table comes first (memory has a total too)
        if line.strip().startswith(("non_embedding", "total")):
            info[line.split()[0]] = int(line.split()[1].replace(",", ""))
        if "total" in info:
            break
    assert f"with {info['total']:,} trainable parameters ({info['non_embedding']:,} non-embedding" in run_line


def test_explicit_bf16_on_a_cpu_without_it_warns_once_in_the_log(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "_mkldnn_bf16", lambda: False)
    Trainer(assemble(tiny_recipe(tmp_path, training__max_iterations=2, system__dtype="bfloat16"))).run()
    log = (tmp_path / "run" / "training.log").read_text()
    assert log.count("WARNING - Warning: system.dtype = \"bfloat16\" on a CPU without native bf16") == 1
    assert "Precision: bfloat16 autocast, as set" in log


def test_start_lines_name_the_precision_and_the_compile_pause(tmp_path):
    trainer = Trainer(assemble(tiny_recipe(tmp_path, system__compile=True)))
    trainer.run_dir = Path(tmp_path / "run")
    lines = runlines.start_lines(trainer, None)
    assert any(line.startswith("Precision: auto: ") for line in lines)
    assert any(line.startswith("torch.compile: the first step") for line in lines)
    assert lines.index("Starting training loop") == len(lines) - 1


def test_jsonl_writes_non_finite_numbers_as_null_and_scalars_as_numbers(tmp_path):
    import numpy as np
    from modulm_loggers import JsonlLogger
    from modulm_loggers.format import event_text

    logger = JsonlLogger(run_dir=tmp_path)
    logger.log({"event": "train", "step": np.int64(3), "loss": float("nan"), "lr": torch.tensor(0.5),
                "grad_norm": float("inf"), "tokens_per_sec": np.float32(2.5), "scope": "sampled", "x": None})
    logger.close()
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record == {"event": "train", "step": 3, "loss": None, "lr": 0.5, "grad_norm": None,
                      "tokens_per_sec": 2.5, "scope": "sampled", "x": None}
    line = event_text({"event": "train", "step": 1, "max_steps": 2, "loss": 1.0, "lr": 1e-3, "grad_norm": None})[0]
    assert "Grad" not in line and "| LR: 1.00e-03 | Time:" in line
