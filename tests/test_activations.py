"""The activation floor: what a forward pass keeps for backward, sized on fake tensors, against the
same count on real tensors, and the preflight that refuses a micro-batch whose activations cannot fit."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modulm import preflight
from modulm.activations import DIRECT_SEQUENCES, saved_activation_bytes
from modulm.errors import OutOfMemory
from modulm.evaluate import model_loss
from modulm.recipe import recipe_from_dict, validate
from modulm.runtime import autocast
from modulm_transformer.model import TransformerLM
from tests.runkit import cli, refused_before_writing, tiny_recipe, write_recipe

CPU = torch.device("cpu")


def _meta(vocab=64, context=16, d_model=32, layers=1, heads=2, d_ff=64) -> TransformerLM:
    with torch.device("meta"):
        return TransformerLM(vocab, context, d_model, layers, heads, d_ff)


def _real_saved_bytes(model: torch.nn.Module, sequences: int, context: int, dtype: str) -> int:
    """The same count on real tensors: distinct storages autograd saves, less weights and token ids."""
    state = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    ids = torch.randint(0, model.vocab_size, (sequences, context))
    state.add(ids.untyped_storage().data_ptr())
    saved: dict[int, torch.Tensor] = {}

    def pack(tensor):
        key = tensor.untyped_storage().data_ptr()
        if key not in state:
            saved.setdefault(key, tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model_loss(model, ids, ids, lambda: autocast(CPU, dtype), True)
    return sum(t.untyped_storage().nbytes() for t in saved.values())


@settings(max_examples=12)
@given(sequences=st.integers(1, 2 * DIRECT_SEQUENCES + 5), context=st.integers(1, 16),
       layers=st.integers(1, 4), dtype=st.sampled_from(["float32", "bfloat16"]))
def test_the_fake_count_is_the_real_count(sequences, context, layers, dtype):
    """Fake tensors keep what real ones keep, run whole or extrapolated past DIRECT_SEQUENCES
    sequences and past two identical blocks."""
    shape = dict(context=16, layers=layers)
    torch.manual_seed(0)
    real = TransformerLM(64, 16, 32, layers, 2, 64)
    fake = saved_activation_bytes(_meta(**shape), sequences, context, CPU, lambda: autocast(CPU, dtype))
    assert fake == _real_saved_bytes(real, sequences, context, dtype)


def test_blocks_that_differ_are_each_run_and_a_pass_past_the_time_limit_claims_nothing(monkeypatch):
    from modulm import activations

    model = _meta(layers=3)
    with torch.device("meta"):
        model.layers[2] = TransformerLM(64, 16, 32, 1, 2, 128).layers[0]  # a wider FFN: not identical
    assert activations._identical_blocks(model) is None
    assert activations._identical_blocks(_meta(layers=3)) is not None
    torch.manual_seed(0)
    real = TransformerLM(64, 16, 32, 3, 2, 64)
    real.layers[2] = TransformerLM(64, 16, 32, 1, 2, 128).layers[0]
    sized = saved_activation_bytes(model, 3, 16, CPU, lambda: autocast(CPU, "float32"))
    assert sized == _real_saved_bytes(real, 3, 16, "float32")
    monkeypatch.setattr(activations, "TIME_LIMIT_S", 0.0)
    assert saved_activation_bytes(_meta(), 3, 16, CPU, lambda: autocast(CPU, "float32")) is None


def test_activations_grow_with_the_batch_and_dominate_a_large_one():
    at = {n: saved_activation_bytes(_meta(), n, 16, CPU, lambda: autocast(CPU, "float32")) for n in (1, 4, 64)}
    assert 0 < at[1] < at[4] < at[64]
    assert at[64] == pytest.approx(at[4] + (at[4] - at[1]) / 3 * 60, rel=1e-6)  # linear in the sequences


def test_a_model_that_reads_its_values_still_sizes_and_one_that_cannot_run_fake_is_none():
    class Branches(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(8, 8))
            self.context_length = 4

        def forward(self, ids):
            x = self.weight[ids]
            if (x > 1e9).any():  # a value read: answered False on fake tensors
                x = x * 0
            return x @ self.weight

    class NeedsData(Branches):
        def forward(self, ids):
            return torch.from_numpy(self.weight.detach().numpy())[ids]

    with torch.device("meta"):
        branches, needs_data = Branches(), NeedsData()
    assert saved_activation_bytes(branches, 2, 4, CPU, lambda: autocast(CPU, "float32")) == 2 * (2 * 4 * 8 * 4)  # x, and the logits for the loss
    assert saved_activation_bytes(needs_data, 2, 4, CPU, lambda: autocast(CPU, "float32")) is None


def _bound(tmp_path, **tables):
    from modulm import plugins

    return validate(recipe_from_dict(tiny_recipe(tmp_path, **tables)), plugins.load().registry)


def test_the_floor_is_not_claimed_under_compile(tmp_path):
    assert preflight.activation_floor(_bound(tmp_path), 64) > 0
    assert preflight.activation_floor(_bound(tmp_path, system={"device": "cpu", "compile": True}), 64) is None
    assert preflight.activation_floor(_bound(tmp_path), None) is None  # vocabulary unknown


def test_a_micro_batch_whose_activations_cannot_fit_is_refused_naming_the_batch(tmp_path, monkeypatch):
    from modulm import runtime
    from modulm.strategy import micro_batch_token_bytes, training_state_memory

    bound = _bound(tmp_path, training={"batch_size": 32, "grad_accum_steps": 2})
    model = preflight.meta_model(bound, 64)
    kept = preflight.activation_floor(bound, 64)
    state = training_state_memory(model, bound["optimizer"], False, 1).total
    _, ids = micro_batch_token_bytes(bound["training"], 16)
    assert kept > state  # the tiny model: a micro-batch's activations outweigh its weights
    monkeypatch.setattr(runtime, "device_memory_bytes", lambda device: state + ids + kept)
    warning, = preflight.check_training_memory(bound, model, activations=kept)  # the floor exactly fits
    assert warning.startswith("training.batch_size: a step needs at least ") and "grad_accum_steps" in warning
    assert preflight.check_training_memory(bound, model) == []  # activations unknown: not counted, nothing to say
    likely = state + ids + round(kept * preflight.PEAK_OVER_KEPT)
    monkeypatch.setattr(runtime, "device_memory_bytes", lambda device: likely)
    assert preflight.check_training_memory(bound, model, activations=kept) == []  # room for the temporaries too
    monkeypatch.setattr(runtime, "device_memory_bytes", lambda device: state + ids + kept - 1)
    with pytest.raises(OutOfMemory, match=r"training.batch_size: one micro-batch of 16 x 16 tokens needs at least .* "
                                          r"of activations kept for the backward pass.*at most about 15 sequences"):
        preflight.check_training_memory(bound, model, activations=kept)


def test_modulm_run_refuses_a_batch_of_too_many_activations_before_writing(tmp_path, capsys, monkeypatch):
    """Token ids of 2^30 sequences of 16 take 256 GiB; their activations many times that."""
    from modulm import runtime

    monkeypatch.setattr(runtime, "device_memory_bytes", lambda device: 2**39)  # 512 GiB: the ids alone fit
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, training={"batch_size": 2**30}))
    refused_before_writing(capsys, tmp_path, ["run", path], f"one micro-batch of {2**30} x 16 tokens needs at least",
                           "256.00 GiB of token ids", "of activations kept for the backward pass",
                           "training.grad_accum_steps")


def test_info_prints_the_activations(tmp_path, capsys):
    path = write_recipe(tmp_path, tiny_recipe(tmp_path))
    code, out, _ = cli(capsys, "info", path)
    assert code == 0
    kept = preflight.activation_floor(_bound(tmp_path), 64)
    from modulm.errors import human_bytes

    assert f"Activations per micro-batch: at least {human_bytes(kept)} kept for the backward pass" in out


def test_sizing_leaves_no_fake_tensor_in_the_kernels_scratch_buffers():
    """The fused loss keeps scratch buffers between calls: one made fake would poison the real run."""
    from torch._subclasses.fake_tensor import FakeTensor

    from modulm.functional.workspace import workspace

    assert saved_activation_bytes(_meta(vocab=4096), 4, 16, CPU, lambda: autocast(CPU, "float32")) > 0
    for purpose in ("linear_cross_entropy", "linear_cross_entropy:wide"):
        assert not isinstance(workspace(purpose, (1, 8), torch.float32, CPU), FakeTensor)


def test_a_long_context_sizes_in_one_chunk_and_grows_with_the_context():
    """The losses' chunk loops run as one chunk on fake tensors: a context of millions sizes at once."""
    cpu32 = lambda: autocast(CPU, "float32")  # noqa: E731
    short = saved_activation_bytes(_meta(context=2**10), 2, 2**10, CPU, cpu32)
    long = saved_activation_bytes(_meta(context=2**22), 2, 2**22, CPU, cpu32)
    assert long == pytest.approx(short * 2**12, rel=0.01)  # flash attention keeps O(T) a head; a few fixed tensors


def test_a_context_too_long_for_even_one_sequence_says_so(tmp_path, monkeypatch):
    from modulm import runtime

    bound = _bound(tmp_path, model={"context_length": 2**24}, training={"batch_size": 1})
    model = preflight.meta_model(bound, 64)
    monkeypatch.setattr(runtime, "device_memory_bytes", lambda device: 2**33)
    with pytest.raises(OutOfMemory, match=r"one micro-batch of 1 x 16777216 tokens .* not even one sequence of "
                                          r"16777216 tokens fits; shorten model.context_length$"):
        preflight.check_training_memory(bound, model, activations=preflight.activation_floor(bound, 64))
    with pytest.raises(OutOfMemory, match=r"buffers 1.00 GiB .*make it smaller \(model.context_length, whose buffers "
                                          r"take 1.00 GiB;"):
        monkeypatch.setattr(runtime, "device_memory_bytes", lambda device: 2**29)
        preflight.check_training_memory(bound, model)  # RoPE's tables: 2^24 x 8 cos and sin, float32


@pytest.mark.parametrize("vendor", ["AuthenticAMD", "GenuineIntel"])
def test_sizing_on_either_attention_path_counts_as_real_and_leaves_the_real_run_real(monkeypatch, vendor):
    """A context long enough for the query-block attention (every CPU but Intel's): its cached
    masks are made on the first call, here the fake pass, and a fake one would break the real
    backward after it."""
    from torch._subclasses.fake_tensor import FakeTensor

    from modulm_transformer import cpu_attention

    monkeypatch.setattr(cpu_attention, "cpu_vendor", lambda: vendor)
    cpu_attention._mask.cache_clear()
    cpu32 = lambda: autocast(CPU, "float32")  # noqa: E731
    torch.manual_seed(0)
    real = TransformerLM(64, 128, 32, 2, 2, 64)
    fake = saved_activation_bytes(_meta(context=128, layers=2), 3, 128, CPU, cpu32)
    assert cpu_attention._mask.cache_info().currsize == 0  # the fake pass keeps no mask
    assert fake == _real_saved_bytes(real, 3, 128, "float32")
    ids = torch.randint(0, 64, (2, 128))
    real(ids, targets=ids).backward()
    assert all(torch.isfinite(p.grad).all() for p in real.parameters())
    assert (cpu_attention._mask.cache_info().currsize > 0) is (vendor != "GenuineIntel")  # the real pass keeps its masks
    bounds = cpu_attention._bounds(128)
    assert not any(isinstance(cpu_attention._mask(lo, hi, torch.float32), FakeTensor) for lo, hi in zip(bounds[1:], bounds[2:]))


def test_a_probe_cached_under_fake_tensors_answers_as_a_real_one():
    from modulm import activations
    from modulm.functional import cpu_matmul

    cpu_matmul.onednn_available.cache_clear()
    want = cpu_matmul.onednn_available()
    cpu_matmul.onednn_available.cache_clear()
    fake, no_data = activations._fake_modes()
    with fake, no_data:
        assert cpu_matmul.onednn_available() == want
    assert cpu_matmul.onednn_available() == want


def test_modulm_run_trains_after_sizing_on_the_query_block_attention(tmp_path, capsys, monkeypatch):
    """The whole job on an AMD CPU's path: the preflight sizes on fake tensors, then training runs."""
    from modulm_transformer import cpu_attention

    monkeypatch.setattr(cpu_attention, "cpu_vendor", lambda: "AuthenticAMD")
    cpu_attention._mask.cache_clear()
    recipe = tiny_recipe(tmp_path, model={"component": "transformer", "context_length": 128, "d_model": 32,
                                          "num_layers": 2, "num_heads": 2, "d_ff": 64})
    code, _, err = cli(capsys, "run", write_recipe(tmp_path, recipe))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint_*.pt"))[-1:] == ["checkpoint_4.pt"]
