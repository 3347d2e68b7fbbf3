"""On a CUDA device: autocast dtype, pinned batches, no host sync in a step, exact resume, KV-cache
equivalence and the compile path. Skipped, with the reason, where no CUDA device exists
(benchmarks/device_check.sh runs them on a GPU machine: ``pytest -m cuda``)."""

import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, before CUDA starts

import numpy as np
import pytest
import torch

from modulm import runtime
from modulm.assemble import assemble
from modulm.trainer import Trainer
from test_trainer import tiny_recipe

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]
CUDA = torch.device("cuda")


def cuda_recipe(tmp_path, **changes):
    recipe = tiny_recipe(tmp_path, **changes)
    recipe["system"]["device"] = "cuda"
    return recipe


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(False)


def test_auto_dtype_is_bf16_autocast_on_a_gpu_with_native_bf16(tmp_path):
    native, evidence = runtime.native_bf16(CUDA)
    assert native == (torch.cuda.get_device_capability()[0] >= 8), evidence
    precision = runtime.resolve_precision(CUDA, "auto")
    assert precision.dtype == ("bfloat16" if native else "float32")
    trainer = Trainer(assemble(cuda_recipe(tmp_path)))
    inputs, _ = trainer.data.get_batch("train", 2, 16, trainer.device)
    with trainer._autocast():
        logits = trainer.model(inputs)
    assert logits.device.type == "cuda" and logits.dtype == DTYPE_OF[precision.dtype]
    assert not trainer.scaler.is_enabled()  # bf16 needs no gradient scaler
    assert "TF32 matmuls for float32: on" in trainer.runtime.lines


DTYPE_OF = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def test_batches_are_copied_from_pinned_memory(tmp_path, monkeypatch):
    from modulm_data.batching import get_batch

    pinned = []
    original = torch.Tensor.pin_memory
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a: pinned.append(self.shape) or original(self, *a))
    tokens = np.arange(1000, dtype=np.uint16)
    on_gpu = get_batch(tokens, 4, 8, "cuda", torch.Generator().manual_seed(3))
    on_cpu = get_batch(tokens, 4, 8, "cpu", torch.Generator().manual_seed(3))
    assert pinned == [(4, 9)]
    for gpu, cpu in zip(on_gpu, on_cpu):
        assert gpu.device.type == "cuda" and gpu.dtype == torch.int64 and torch.equal(gpu.cpu(), cpu)
    source = Trainer(assemble(cuda_recipe(tmp_path))).data
    inputs, targets = source.get_batch("train", 4, 16, CUDA)
    assert inputs.is_cuda and targets.is_cuda and len(pinned) == 2


def test_steps_between_boundaries_make_no_host_sync(tmp_path, monkeypatch):
    recipe = cuda_recipe(tmp_path, training__max_iterations=6, logging__log_interval=3, logging__eval_interval=0,
                         checkpointing__checkpoint_interval=0)
    trainer = Trainer(assemble(recipe))
    step, synced = trainer._step, []

    def step_in_sync_error_mode():
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            return step()
        except RuntimeError as exc:
            synced.append(str(exc).splitlines()[0])
            raise
        finally:
            torch.cuda.set_sync_debug_mode("default")

    trainer._step = step_in_sync_error_mode
    result = trainer.run()
    assert synced == [] and sorted(result.train_losses) == list(range(6))


def test_exact_resume_on_cuda(tmp_path, deterministic):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    straight = Trainer(assemble(cuda_recipe(tmp_path / "a"))).run()
    recipe_b = cuda_recipe(tmp_path / "b")
    first = Trainer(assemble(recipe_b)).run(stop_at=5)
    second = Trainer(assemble(recipe_b)).run()
    assert {**first.train_losses, **second.train_losses} == straight.train_losses
    assert second.final_eval.loss == straight.final_eval.loss


def test_kv_cache_decoding_matches_full_recomputation_on_cuda():
    from modulm.sampling import generate_ids
    from modulm_transformer import TransformerLM

    torch.manual_seed(0)
    model = TransformerLM(500, 64, 64, 2, 4, 128).to(CUDA).eval()
    prompt = torch.randint(0, 500, (7,)).tolist()
    runtime.set_tf32(False)
    try:
        cached = list(generate_ids(model, prompt, 40, temperature=0, use_cache=True))
        full = list(generate_ids(model, prompt, 40, temperature=0, use_cache=False))
        ids = torch.tensor([prompt + cached[:-1]], device=CUDA)
        cache = model.new_kv_cache(1)
        with torch.no_grad():
            step_logits = torch.cat([model(ids[:, :7], cache=cache)[:, -1:]] +
                                    [model(ids[:, i:i + 1], cache=cache) for i in range(7, ids.shape[1])], dim=1)
            full_logits = model(ids)[:, 6:]
    finally:
        runtime.set_tf32(True)
    assert cached == full
    torch.testing.assert_close(step_logits, full_logits, rtol=1e-4, atol=1e-4)


def test_compile_path_trains_like_eager_on_cuda(tmp_path):
    (tmp_path / "eager").mkdir(), (tmp_path / "compiled").mkdir()
    eager = Trainer(assemble(cuda_recipe(tmp_path / "eager", system__dtype="float32", system__tf32=False,
                                         training__max_iterations=4))).run()
    compiled = Trainer(assemble(cuda_recipe(tmp_path / "compiled", system__dtype="float32", system__tf32=False,
                                            system__compile=True, training__max_iterations=4))).run()
    assert sorted(compiled.train_losses) == [0, 1, 2, 3]
    for step, loss in eager.train_losses.items():
        assert compiled.train_losses[step] == pytest.approx(loss, rel=1e-3)
    assert compiled.final_eval.loss == pytest.approx(eager.final_eval.loss, rel=1e-3)
