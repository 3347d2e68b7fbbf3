"""Running out of memory: refused before anything is written where the training state alone cannot
fit, and one line naming the step and the settings to change where an allocation fails later."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modulm import preflight
from modulm.errors import OutOfMemory, allocation_size, human_bytes, is_out_of_memory
from modulm.recipe import recipe_from_dict, validate
from tests.runkit import cli, one_error_line, snapshot, tiny_recipe, write_recipe

UNAVAILABLE = 2**50  # bytes: 1 PiB, more than any address space lets a process map, so it fails at once


def _allocation_failure(allocate) -> BaseException:
    """The error a real 1 PiB request raises (``allocate(nbytes)``)."""
    try:
        allocate(UNAVAILABLE)
    except (RuntimeError, MemoryError) as exc:
        return exc
    raise AssertionError("a 1 PiB allocation succeeded")


def test_real_allocation_failures_are_recognised_with_their_size():
    for exc in (_allocation_failure(lambda n: torch.empty(n, dtype=torch.uint8)),
                _allocation_failure(lambda n: np.empty(n, dtype=np.uint8))):
        assert is_out_of_memory(exc)
        assert allocation_size(exc) == "1.00 PiB"
    cuda = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of 79.19 GiB")
    assert is_out_of_memory(cuda) and allocation_size(cuda) == "2.50 GiB"


@pytest.mark.parametrize("exc", [RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)"),
                                 ValueError("out of memory"), KeyError("memory")])
def test_other_errors_are_not_out_of_memory(exc):
    assert not is_out_of_memory(exc)
    assert allocation_size(exc) is None


@given(st.integers(min_value=0, max_value=2**62))
def test_human_bytes_states_the_size_to_its_three_digits(count):
    text = human_bytes(count)
    if count < 1024:
        assert text == f"{count} bytes"
        return
    value, unit = text.split()
    power = ("KiB", "MiB", "GiB", "TiB", "PiB").index(unit) + 1
    assert 1 <= float(value) < 1024 or unit == "PiB"
    assert math.isclose(float(value) * 1024**power, count, rel_tol=0.006 / max(float(value), 1))


def _fail_at(monkeypatch, iteration: int | None = None, evaluating: bool = False):
    """Make the transformer's forward fail to allocate (a real 1 PiB request) at its ``iteration``-th
    training call, or at its first evaluation call (the preflight's forward pass on fake tensors,
    which sizes the activations, is not counted)."""
    from torch._subclasses.fake_tensor import FakeTensor

    from modulm_transformer.model import TransformerLM

    forward, calls = TransformerLM.forward, {"train": 0}

    def failing(self, *args, **kwargs):
        if isinstance(args[0], FakeTensor):
            return forward(self, *args, **kwargs)
        if self.training and iteration is not None:
            calls["train"] += 1
            if calls["train"] > iteration:
                torch.empty(UNAVAILABLE, dtype=torch.uint8)
        if not self.training and evaluating:
            torch.empty(UNAVAILABLE, dtype=torch.uint8)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(TransformerLM, "forward", failing)


def test_a_failed_allocation_in_a_step_is_one_line_naming_the_iteration_and_the_settings(tmp_path, capsys, monkeypatch):
    _fail_at(monkeypatch, iteration=3)
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, training={"batch_size": 6, "max_iterations": 8},
                                              checkpointing={"checkpoint_interval": 0}, logging={"eval_interval": 0}))
    code, _, err = cli(capsys, "run", path)
    assert code == 2
    line = one_error_line([e for e in err if e.startswith("modulm: error")],
                          "out of memory at iteration 3 (a training step): could not allocate 1.00 PiB on cpu",
                          "a micro-batch is 6 x 16 tokens", "training.grad_accum_steps=2 (micro-batches of 3",
                          "training.batch_size", "model.context_length")
    assert line.removeprefix("modulm: error: ") in (tmp_path / "run" / "training.log").read_text()


def test_the_same_command_with_the_fix_resumes_from_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    _fail_at(monkeypatch, iteration=3)
    path = write_recipe(tmp_path, tiny_recipe(tmp_path))  # a checkpoint every 2 iterations
    code, _, _ = cli(capsys, "run", path)
    assert code == 2 and (tmp_path / "run" / "checkpoint_2.pt").exists()
    monkeypatch.undo()
    code, out, err = cli(capsys, "run", path, "training.grad_accum_steps=2")
    assert code == 0, err
    assert "at iteration 2" in out and (tmp_path / "run" / "final_checkpoint.pt").exists()


def test_the_suggested_accumulation_divides_the_batch(tmp_path, capsys, monkeypatch):
    _fail_at(monkeypatch, iteration=0)
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, training={"batch_size": 9, "grad_accum_steps": 3}))
    code, _, err = cli(capsys, "run", path)
    assert code == 2
    one_error_line([e for e in err if e.startswith("modulm: error")], "a micro-batch is 3 x 16 tokens",
                   "training.grad_accum_steps=9 (micro-batches of 1;")


def test_a_micro_batch_of_one_suggests_no_accumulation(tmp_path, capsys, monkeypatch):
    _fail_at(monkeypatch, iteration=0)
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, training={"batch_size": 1}))
    code, _, err = cli(capsys, "run", path)
    line = one_error_line([e for e in err if e.startswith("modulm: error")], "Try a smaller training.batch_size")
    assert code == 2 and "grad_accum_steps" not in line


def test_a_failed_allocation_in_evaluation_says_so(tmp_path, capsys, monkeypatch):
    _fail_at(monkeypatch, evaluating=True)
    path = write_recipe(tmp_path, tiny_recipe(tmp_path))
    code, _, err = cli(capsys, "run", path)
    assert code == 2
    one_error_line([e for e in err if e.startswith("modulm: error")], "out of memory at iteration 2 (evaluation)")


def test_other_runtime_errors_still_raise(tmp_path, capsys, monkeypatch):
    from modulm_transformer.model import TransformerLM

    def broken(self, *args, **kwargs):
        raise RuntimeError("a bug, not an allocation")

    monkeypatch.setattr(TransformerLM, "forward", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli(capsys, "run", write_recipe(tmp_path, tiny_recipe(tmp_path)))


def test_a_batch_whose_token_ids_cannot_fit_is_refused_before_anything_is_written(tmp_path, capsys):
    """2^47 sequences of 16 int64 inputs and targets: 32 PiB before the model (226.5 KiB with its RoPE
    tables) is counted."""
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, training={"batch_size": 2**47}))
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "run", path)
    assert code == 2
    one_error_line(err, f"training.batch_size: one micro-batch of {2**47} x 16 tokens needs at least",
                   "32.00 PiB of token ids", "of activations kept for the backward pass", "on top of the model's 226.50 KiB",
                   "sequences of 16 tokens fit in a micro-batch", "training.grad_accum_steps")
    assert snapshot(tmp_path) == before


def test_out_of_memory_outside_training_is_one_line(tmp_path, capsys, monkeypatch):
    from modulm.cli import validate as validate_command

    def exhausted(args):
        torch.empty(UNAVAILABLE, dtype=torch.uint8)

    monkeypatch.setattr(validate_command, "run", exhausted)
    code, _, err = cli(capsys, "validate", tmp_path / "x.toml")
    assert code == 2
    one_error_line(err, "validate: out of memory (could not allocate 1.00 PiB)", "troubleshooting.md#out-of-memory")


# -- before the run: the training state -----------------------------------------------------------

def test_a_model_whose_training_state_cannot_fit_is_refused_before_anything_is_written(tmp_path, capsys):
    """d_model 2^20: 4 x 2^40 attention weights in the one layer, 16 TiB of float32 parameters, as much
    again of gradients and twice that of AdamW state: more than any machine's memory."""
    recipe = tiny_recipe(tmp_path, model={"d_model": 2**20, "num_heads": 1})
    path = write_recipe(tmp_path, recipe)
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "run", path)
    assert code == 2
    line = one_error_line(err, "model: training it needs at least", "parameters 16.00 TiB", "gradients 16.00 TiB",
                          "optimizer state 32.00 TiB", "more than cpu with", "model.d_model", "modulm info RECIPE")
    needed = re.search(r"needs at least ([\d.]+) TiB", line).group(1)
    activations = re.search(r"\+ activations ([\d.]+) ([KMGT]i)?B\)", line)
    kept = float(activations.group(1)) * 1024 ** " KMGT".index((activations.group(2) or " ")[0]) / 1024**4
    assert math.isclose(float(needed), 64 + kept, abs_tol=0.015)  # the parts add up (bf16 autocast keeps bf16 copies of the weights)
    assert snapshot(tmp_path) == before


def _bound(tmp_path):
    recipe = recipe_from_dict(tiny_recipe(tmp_path))
    from modulm import plugins

    bound = validate(recipe, plugins.load().registry)
    return bound, preflight.meta_model(bound, 64)


TOKEN_IDS = 2 * 8 * 4 * 16  # the tiny recipe's micro-batch: int64 inputs and targets, 4 x 16 of each


def _training_state_bytes(model) -> int:
    elements = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())  # RoPE's tables
    # float32 parameters, gradients and AdamW's two moments; the buffers; the batch
    return elements * 4 * 4 + buffers + TOKEN_IDS


def test_the_limit_is_the_training_state_and_processes_on_one_cpu_share_it(tmp_path, monkeypatch):
    from modulm import runtime

    bound, model = _bound(tmp_path)
    state = _training_state_bytes(model)
    monkeypatch.setattr(runtime, "device_memory_bytes", lambda device: state)
    preflight.check_training_memory(bound, model)  # exactly fits
    with pytest.raises(OutOfMemory, match=r"x 2 processes\), more than cpu"):
        preflight.check_training_memory(bound, model, nproc=2)
    monkeypatch.setattr(runtime, "device_memory_bytes", lambda device: state - 1)
    with pytest.raises(OutOfMemory, match="model: training it needs"):
        preflight.check_training_memory(bound, model)


def test_the_token_ids_counted_are_one_micro_batch(tmp_path, monkeypatch):
    from modulm import plugins, runtime

    registry = plugins.load().registry
    bound = validate(recipe_from_dict(tiny_recipe(tmp_path, training={"batch_size": 4, "grad_accum_steps": 2})), registry)
    model = preflight.meta_model(bound, 64)
    fits = _training_state_bytes(model) - TOKEN_IDS // 2  # half the batch per micro-batch
    monkeypatch.setattr(runtime, "device_memory_bytes", lambda device: fits)
    preflight.check_training_memory(bound, model)
    monkeypatch.setattr(runtime, "device_memory_bytes", lambda device: fits - 1)
    with pytest.raises(OutOfMemory, match=r"token ids 512 bytes\)"):
        preflight.check_training_memory(bound, model)


def test_an_optimizer_that_cannot_be_sized_still_leaves_parameters_and_gradients_checked(tmp_path, monkeypatch):
    from modulm import runtime
    from modulm.strategy import training_state_memory

    def unsized(params):
        raise NotImplementedError("this optimizer cannot be built on the meta device")

    bound, model = _bound(tmp_path)
    bound = {**bound, "optimizer": unsized}
    use = training_state_memory(model, unsized, sharded=False, world_size=1)
    weights = sum(p.numel() for p in model.parameters()) * 4
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    state = 2 * weights + buffers
    assert (use.parameters, use.gradients, use.optimizer, use.buffers, use.total) == (weights, weights, None, buffers, state)
    assert use.line("single process", 1).endswith(f"optimizer state unknown + buffers {human_bytes(buffers)} = "
                                                  f"{human_bytes(state)}")
    monkeypatch.setattr(runtime, "device_memory_bytes", lambda device: state + TOKEN_IDS)
    preflight.check_training_memory(bound, model)
    monkeypatch.setattr(runtime, "device_memory_bytes", lambda device: state + TOKEN_IDS - 1)
    with pytest.raises(OutOfMemory, match=r"\(parameters [^)+]* \+ gradients [^)+]* \+ optimizer state unknown \+ "
                                          r"buffers [^)+]* \+ a micro-batch's token ids 1.00 KiB\), more than cpu"):
        preflight.check_training_memory(bound, model)


def test_an_unknown_device_memory_skips_the_check(tmp_path, monkeypatch):
    from modulm import runtime

    bound, model = _bound(tmp_path)
    monkeypatch.setattr(runtime, "device_memory_bytes", lambda device: None)
    preflight.check_training_memory(bound, model)


def test_the_cpu_memory_is_read():
    from modulm.runtime import cpu_memory, device_memory, device_memory_bytes

    ram, swap = cpu_memory()
    assert ram > 2**28 and swap >= 0
    assert device_memory_bytes(torch.device("cpu")) == ram + swap
    assert device_memory(torch.device("cpu")).startswith(f"cpu with {human_bytes(ram)} of RAM")
