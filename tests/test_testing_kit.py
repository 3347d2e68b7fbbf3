"""modulm.testing: every built-in passes its kind's check, and each check rejects broken mutants.

The first tests are parametrised from the registry, so a new built-in component is checked with
no new test code (a component with required parameters needs a sample config in SAMPLE_CONFIGS,
which a test demands). The mutants below each break one rule of one contract.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from modulm import hookimpl, nested, testing
from modulm.assemble import builder, create
from modulm.testing import (check_attention, check_data_source, check_ffn, check_logger, check_model,
                            check_model_block, check_norm, check_optimizer, check_position, check_schedule,
                            check_tokenizer, strategies)
from modulm.testing.pytest_plugin import BUILTIN_PLUGINS, builtin_plugin_manager, merged

REGISTRY = builtin_plugin_manager().registry
TINY_MODEL = {"context_length": 8, "d_model": 16, "num_layers": 1, "num_heads": 2, "d_ff": 32}
TEXT = ("Once upon a time there was a cat.<|endoftext|>The dog ran home! Héllo wörld 🙂<|endoftext|>\n") * 30


def write_tokens(directory: Path, vocab: int = 50) -> dict[str, str]:
    rng = np.random.default_rng(0)
    for split, size in (("train", 1500), ("val", 400)):
        np.save(directory / f"{split}.npy", rng.integers(0, vocab, size, dtype=np.uint16))
    return {"train": str(directory / "train.npy"), "val": str(directory / "val.npy")}


def sample_config(kind: str, name: str, tmp_path: Path) -> dict | None:
    """The config a built-in is checked with: small sizes, and data files where it needs them."""
    if (kind, name) == ("data", "memmap"):
        return {**write_tokens(tmp_path), "vocab_size": 50}
    if (kind, name) == ("data", "text"):
        (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
        return {"train": str(tmp_path / "a.txt"), "tokenizer": {"component": "bpe", "vocab_size": 280}, "workers": 1}
    if kind == "model":
        return dict(TINY_MODEL)
    if kind == "tokenizer":
        return {"vocab_size": 300}
    if (kind, name) == ("logger", "wandb"):
        pytest.importorskip("wandb", reason="the wandb logger needs the optional wandb package")
        return {"mode": "disabled"}  # offline and quiet: no account, no network
    if (kind, name) == ("logger", "tensorboard"):
        pytest.importorskip("tensorboard", reason="the tensorboard logger needs the optional tensorboard package")
    return None


SAMPLE_CONFIGS = {("data", "memmap"), ("data", "text")}  # components with required parameters
ALL = [pytest.param(c.kind, c.name, id=f"{c.kind}-{c.name}") for c in REGISTRY.components()]


def test_the_builtin_manager_holds_every_builtin_plugin_and_nothing_else():
    pm = builtin_plugin_manager()
    assert {name for name, _ in pm.list_name_plugin()} == set(BUILTIN_PLUGINS)
    assert {c.plugin for c in pm.registry.components()} == set(BUILTIN_PLUGINS)
    assert len(ALL) >= 16


@pytest.mark.parametrize("kind, name", ALL)
def test_every_builtin_passes_the_check_of_its_kind(kind, name, tmp_path, capsys):
    component = REGISTRY.get(kind, name)
    if any(p.required for p in component.schema.params):
        assert (kind, name) in SAMPLE_CONFIGS, f"{kind} {name!r} has required parameters: add a sample config"
    testing.check_component(kind, name, sample_config(kind, name, tmp_path), registry=REGISTRY)


@pytest.mark.parametrize("position", REGISTRY.names("position"))
@pytest.mark.parametrize("impl", ["sdpa", "scratch"])
def test_attention_passes_with_every_position_and_impl(position, impl):
    check_attention("mha", {"impl": impl}, position=position, registry=REGISTRY)


@pytest.mark.parametrize("parts", [{"ffn": "silu", "norm": "none", "position": "nope"},
                                   {"attention": {"component": "mha", "impl": "scratch"}}])
@pytest.mark.parametrize("block", REGISTRY.names("block"))
def test_blocks_pass_with_other_parts(block, parts):
    check_model_block(block, parts=parts, registry=REGISTRY)


@given(seed=st.integers(0, 10_000), num_heads=st.integers(1, 3), half_head=st.integers(1, 3),
       d_ff=st.one_of(st.none(), st.integers(1, 24)), context_length=st.integers(2, 10))
def test_model_side_checks_hold_for_drawn_sizes(seed, num_heads, half_head, d_ff, context_length):
    d_model = num_heads * 2 * half_head
    for name in REGISTRY.names("ffn"):
        check_ffn(name, d_model=d_model, d_ff=d_ff, seed=seed, registry=REGISTRY)
    for name in REGISTRY.names("norm"):
        check_norm(name, d_model=d_model, seed=seed, registry=REGISTRY)
    for name in REGISTRY.names("position"):
        check_position(name, d_k=2 * half_head, context_length=context_length, seed=seed, registry=REGISTRY)
    for name in REGISTRY.names("attention"):
        check_attention(name, d_model=d_model, num_heads=num_heads, context_length=context_length, seed=seed,
                        registry=REGISTRY)
    for name in REGISTRY.names("block"):
        check_model_block(name, d_model=d_model, num_heads=num_heads, d_ff=d_ff, context_length=context_length,
                          seed=seed, registry=REGISTRY)


def model_with_a_nested_norm(norm: nested("norm") = "rmsnorm", *, vocab_size: int):
    """A factory with a nested component: the check resolves it from the registry."""
    assert norm.kind == "norm"
    return create(REGISTRY, "model", {"component": "transformer", **TINY_MODEL, "norm": norm.to_table()},
                  vocab_size=vocab_size)


@pytest.mark.parametrize("norm", ["none", {"component": "rmsnorm", "eps": 1e-3}])
def test_a_factory_with_nested_components_is_checked_with_the_registry(norm):
    check_model(model_with_a_nested_norm, {"norm": norm}, registry=REGISTRY)
    assert ("model", "<checked>-model_with_a_nested_norm") not in REGISTRY  # registered only while binding


def test_check_component_names_the_kinds_it_knows():
    with pytest.raises(ValueError, match="no check for kind 'widget'"):
        testing.check_component("widget", "x")
    assert set(testing.CHECK_FOR_KIND) == set(REGISTRY.kinds)


# -- mutants: one broken rule each -------------------------------------------------------------
class MixingFFN(nn.Module):
    """An ffn that leaks information across positions."""

    def __init__(self, *, d_model: int, d_ff: int | None = None):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x) + x.mean(-2, keepdim=True)


class Float32FFN(MixingFFN):
    """An ffn that always answers in float32."""

    def forward(self, x):
        return self.proj(x).float()


class UnusedWeightFFN(MixingFFN):
    """An ffn holding a parameter its forward never uses."""

    def __init__(self, *, d_model: int, d_ff: int | None = None):
        super().__init__(d_model=d_model)
        self.unused = nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        return self.proj(x)


class UnseededFFN(UnusedWeightFFN):
    """An ffn whose initialisation ignores torch's global seed."""

    def __init__(self, *, d_model: int, d_ff: int | None = None):
        super().__init__(d_model=d_model)
        self.unused = nn.Parameter(torch.randn(d_model, generator=torch.Generator().manual_seed(torch.seed())))

    def forward(self, x):
        return self.proj(x) * self.unused


@pytest.mark.parametrize("mutant, rule", [(MixingFFN, "not processed independently"),
                                           (Float32FFN, "dtype not preserved"),
                                           (UnusedWeightFFN, "unused received no gradient"),
                                           (UnseededFFN, "not seeded")])
def test_ffn_check_rejects(mutant, rule):
    with pytest.raises(AssertionError, match=rule):
        check_ffn(mutant)


class BatchNorm(nn.Module):
    """A 'norm' that normalises over the positions too."""

    def __init__(self, *, d_model: int):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        return self.gain * (x - x.mean(-2, keepdim=True))


def test_norm_check_rejects_mixing_positions():
    with pytest.raises(AssertionError, match="not processed independently"):
        check_norm(BatchNorm)


class AbsolutePosition(nn.Module):
    """Adds a fixed vector per position: not relative, and its table is a persistent buffer."""

    def __init__(self, *, d_k: int, context_length: int, theta: float = 10000.0, persistent: bool = False):
        super().__init__()
        self.register_buffer("table", torch.randn(context_length + 1, d_k, generator=torch.Generator().manual_seed(0)),
                             persistent=persistent)

    def forward(self, x, token_positions):
        return x + self.table[token_positions].to(x.dtype)


def persistent_table(*, d_k: int, context_length: int, theta: float = 10000.0):
    return AbsolutePosition(d_k=d_k, context_length=context_length, persistent=True)


def test_position_check_rejects_absolute_encodings_and_persistent_tables():
    with pytest.raises(AssertionError, match="not relative"):
        check_position(AbsolutePosition)
    with pytest.raises(AssertionError, match="derived tables"):
        check_position(persistent_table)


def non_causal_mha(*, d_model: int, num_heads: int, context_length: int, position=None):
    """mha whose attention looks at every position (the causal mask dropped)."""
    attention = create(REGISTRY, "attention", "mha", d_model=d_model, num_heads=num_heads,
                       context_length=context_length, position=position)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    attention._attend = lambda q, k, v: sdpa(q, k, v)
    return attention


def test_attention_check_rejects_a_non_causal_attention():
    with pytest.raises(AssertionError, match="not causal"):
        check_attention(non_causal_mha)


def test_block_check_rejects_a_block_with_a_non_causal_attention():
    with pytest.raises(AssertionError, match="not causal"):
        check_model_block("prenorm", parts={"attention": non_causal_mha}, registry=REGISTRY)


class MutantPlugin:
    """Registers the mutants a recipe refers to by name."""

    @hookimpl
    def modulm_register_components(self, registry):
        registry.attention("mutant-non-causal", non_causal_mha)


def test_model_check_rejects_a_model_built_with_a_non_causal_attention(modulm_pm, register_plugin):
    register_plugin(MutantPlugin(), "mutants")
    with pytest.raises(AssertionError, match="not causal"):
        check_model("transformer", {**TINY_MODEL, "attention": "mutant-non-causal"}, registry=modulm_pm.registry)


class MeanOverBatchModel(nn.Module):
    """A causal model whose logits see the other batch elements, with a derived table in its state."""

    def __init__(self, context_length: int = 8, derived_in_state: bool = False, *, vocab_size: int):
        super().__init__()
        self.vocab_size, self.context_length = vocab_size, context_length
        self.embedding = nn.Embedding(vocab_size, vocab_size)
        self.register_buffer("scale", torch.ones(1), persistent=derived_in_state)

    def forward(self, token_ids):
        h = self.embedding(token_ids) * self.scale
        return h + h.flatten(0, -3).mean(0) if h.dim() > 2 else h


def test_model_check_rejects_mixing_batch_elements_and_derived_state():
    with pytest.raises(AssertionError, match="element 1 changed the logits of element 0"):
        check_model(MeanOverBatchModel)
    with pytest.raises(AssertionError, match="more than learnable weights"):
        check_model(MeanOverBatchModel, {"derived_in_state": True})


def adamw_ignoring_weight_decay(lr: float = 3e-4, weight_decay: float = 0.1, *, params):
    """AdamW whose weight_decay setting never reaches the update."""
    return create(REGISTRY, "optimizer", {"component": "adamw", "lr": lr, "weight_decay": 0.0}, params=params)


class ForgetfulSGD(torch.optim.SGD):
    """SGD with momentum whose state_dict drops the momentum buffers."""

    def __init__(self, lr: float = 0.01, *, params):
        super().__init__([p for _, p in params], lr=lr, momentum=0.9)

    def load_state_dict(self, state):
        pass


class AscendingSGD(torch.optim.SGD):
    """Steps up the gradient."""

    def __init__(self, lr: float = 0.01, *, params):
        super().__init__([p for _, p in params], lr=lr, maximize=True)


class DecayEverything(torch.optim.SGD):
    """Decays every parameter, those without a gradient too."""

    def __init__(self, lr: float = 0.01, *, params):
        super().__init__([p for _, p in params], lr=lr)

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.mul_(0.999)


@pytest.mark.parametrize("mutant, rule", [(adamw_ignoring_weight_decay, "weight decay is ignored"),
                                           (ForgetfulSGD, "does not round-trip"),
                                           (AscendingSGD, "expected a decrease"),
                                           (DecayEverything, "whose .grad is None was changed")])
def test_optimizer_check_rejects(mutant, rule):
    with pytest.raises(AssertionError, match=rule):
        check_optimizer(mutant)


def cosine_with_a_jump(*, base_lr: float, max_iterations: int):
    """Cosine warm-up whose value drops to min_lr halfway through the run."""
    cosine = create(REGISTRY, "schedule", "cosine-warmup", base_lr=base_lr, max_iterations=max_iterations)
    return lambda t: cosine(t) if t < max_iterations // 2 else 3e-5


def overshooting_warmup(*, base_lr: float, max_iterations: int):
    return lambda t: base_lr * min(t, 110) / 100


@dataclass
class CountingSchedule:
    """Depends on how often it was called, not only on the iteration."""

    base_lr: float
    calls: int = 0

    def __call__(self, t):
        self.calls += 1
        return self.base_lr / (1 + 1e-3 * self.calls)


def counting(*, base_lr: float, max_iterations: int):
    return CountingSchedule(base_lr)


@pytest.mark.parametrize("mutant, rule", [(cosine_with_a_jump, "a discontinuity"),
                                           (overshooting_warmup, "outside \\[0, base_lr"),
                                           (counting, "not a pure function")])
def test_schedule_check_rejects(mutant, rule):
    with pytest.raises(AssertionError, match=rule):
        check_schedule(mutant)


def test_schedule_check_allows_jumps_when_asked():
    check_schedule(cosine_with_a_jump, max_jump=None)


MemmapSource = REGISTRY.get("data", "memmap").factory


class OffByOneTargets(MemmapSource):
    """Targets shifted by two instead of one."""

    def get_batch(self, split, batch_size, context_length, device="cpu"):
        x, _ = super().get_batch(split, batch_size, context_length + 1, device)
        return x[:, :-1], x[:, 1:].roll(-1, dims=1)


class TargetsFromAnotherWindow(MemmapSource):
    """Targets shifted by one but the last one drawn from elsewhere."""

    def get_batch(self, split, batch_size, context_length, device="cpu"):
        x, y = super().get_batch(split, batch_size, context_length, device)
        y[:, -1] = (y[:, -1] + 1) % self.vocab_size
        return x, y


class Int32Batches(MemmapSource):
    def get_batch(self, split, batch_size, context_length, device="cpu"):
        return tuple(t.int() for t in super().get_batch(split, batch_size, context_length, device))


class NoResume(MemmapSource):
    """Its state_dict is empty, so a resumed source draws from its own seed."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@pytest.mark.parametrize("mutant, rule", [(OffByOneTargets, "not the inputs shifted by one"),
                                           (TargetsFromAnotherWindow, "not a contiguous window"),
                                           (Int32Batches, "not int64"),
                                           (NoResume, "no exact resume")])
def test_data_source_check_rejects(mutant, rule, tmp_path):
    with pytest.raises(AssertionError, match=rule):
        check_data_source(mutant, {**write_tokens(tmp_path), "vocab_size": 50})


def test_data_source_check_rejects_ids_beyond_the_vocabulary(tmp_path):
    class IdsPastTheVocabulary(MemmapSource):
        def get_batch(self, split, batch_size, context_length, device="cpu"):
            return tuple(t + self.vocab_size for t in super().get_batch(split, batch_size, context_length, device))

    with pytest.raises(AssertionError, match="ids outside"):
        check_data_source(IdsPastTheVocabulary, {**write_tokens(tmp_path), "vocab_size": 50})


class StrictLogger:
    """Fails on events it does not know, and on a second close."""

    def __init__(self, *, run_dir):
        self.closed = False

    def log(self, event):
        if event["event"] not in ("start", "train", "eval", "message", "end"):
            raise KeyError(event["event"])

    def close(self):
        assert not self.closed
        self.closed = True


class ClosingTwiceLogger(StrictLogger):
    def log(self, event):
        pass


class OutsideLogger(ClosingTwiceLogger):
    def __init__(self, *, run_dir):
        super().__init__(run_dir=run_dir)
        (Path(run_dir).parent / "stray.log").write_text("x")

    def close(self):
        pass


@pytest.mark.parametrize("mutant, rule", [(StrictLogger, "raised KeyError"),
                                           (ClosingTwiceLogger, "second close"),
                                           (OutsideLogger, "outside its run_dir")])
def test_logger_check_rejects(mutant, rule):
    with pytest.raises(AssertionError, match=rule):
        check_logger(mutant)


BPETokenizer = REGISTRY.get("tokenizer", "bpe").factory


class DropsCarriageReturns(BPETokenizer):
    def decode(self, ids):
        return super().decode(ids).replace("\r", "")


class SplitsSpecialTokens(BPETokenizer):
    def encode(self, text):
        out = []
        for piece in text.split("<|endoftext|>"):
            out += super().encode(piece) + [ord("<")]
        return out[:-1] if out else out


class LosesMergesOnLoad(BPETokenizer):
    """Its load drops the last merges it saved."""

    @classmethod
    def load(cls, directory):
        saved = super().load(directory).tokenizer
        return cls.from_tokenizer(type(saved)(saved._vocab, saved._merges[:-5], saved.special_tokens))


@pytest.mark.parametrize("mutant, rule", [(DropsCarriageReturns, "decode\\(encode"),
                                           (SplitsSpecialTokens, "decode\\(encode|encode_iterable|not one id"),
                                           (LosesMergesOnLoad, "after save/load")])
def test_tokenizer_check_rejects(mutant, rule):
    with pytest.raises(AssertionError, match=rule):
        check_tokenizer(mutant, {"vocab_size": 300})


# -- strategies --------------------------------------------------------------------------------
@settings(max_examples=5)
@given(config=strategies.model_configs(), seed=strategies.seeds)
def test_drawn_model_configs_build_models_that_pass_the_model_check(config, seed):
    check_model(config["component"], config, vocab_size=20, seed=seed % 1000, registry=REGISTRY)


@given(data=st.data(), vocab=st.integers(1, 40))
def test_token_batches_are_int64_ids_below_the_vocabulary(data, vocab):
    ids = data.draw(strategies.token_batches(vocab))
    assert ids.dtype == torch.int64 and ids.dim() == 2 and 0 <= int(ids.min()) and int(ids.max()) < vocab


@given(texts=st.lists(strategies.unicode_text(), min_size=1, max_size=4))
def test_bpe_round_trips_drawn_unicode_text(texts):
    check_tokenizer("bpe", {"vocab_size": 280}, texts=texts, registry=REGISTRY)


@given(text=strategies.unicode_text(("<|a|>", "<b>")))
def test_unicode_text_has_no_lone_surrogates(text):
    text.encode("utf-8")


@pytest.mark.parametrize("kind, name", ALL)
@given(data=st.data())
def test_drawn_recipe_tables_validate(kind, name, data):
    fixed = {"train": "t.npy", "vocab_size": 10} if (kind, name) == ("data", "memmap") else None
    if (kind, name) == ("data", "text"):
        fixed = {"train": "t.txt"}
    table = data.draw(strategies.recipe_tables(kind, name, REGISTRY, fixed=fixed))
    assert table["component"] == name
    bound = builder(REGISTRY, kind, table)
    for key, value in table.items():
        if key != "component":
            assert bound.params[key] == value


def test_recipe_tables_of_a_factory_feed_its_check():
    @given(table=strategies.recipe_tables("norm", REGISTRY.get("norm", "rmsnorm").factory,
                                          eps=st.floats(1e-6, 1e-3)))
    @settings(max_examples=3)
    def check(table):
        assert "component" not in table
        check_norm(REGISTRY.get("norm", "rmsnorm").factory, table, dtypes=(torch.float32,))

    check()


# -- fixtures ----------------------------------------------------------------------------------
class ExtraFFNPlugin:
    @hookimpl
    def modulm_register_components(self, registry):
        registry.ffn("test-mixing", UnusedWeightFFN)


def test_modulm_pm_ignores_the_environment(monkeypatch, modulm_pm):
    assert {name for name, _ in modulm_pm.list_name_plugin()} == set(BUILTIN_PLUGINS)


def test_register_plugin_adds_components_until_the_test_ends(modulm_pm, register_plugin):
    assert register_plugin(ExtraFFNPlugin(), "extra") == "extra"
    assert modulm_pm.registry.get("ffn", "test-mixing").plugin == "extra"


def test_registered_plugins_are_removed_on_exit():
    from modulm.testing.pytest_plugin import registered_plugins

    pm = builtin_plugin_manager()
    with registered_plugins(pm) as register:
        register(ExtraFFNPlugin(), "extra")
        assert ("ffn", "test-mixing") in pm.registry
    assert ("ffn", "test-mixing") not in pm.registry and not pm.has_plugin("extra")


def test_run_recipe_trains_a_tiny_model_with_a_registered_component(run_recipe, register_plugin):
    register_plugin(sys.modules[__name__], "kit-tests")  # this module: MutantPlugin is not a hook here
    register_plugin(ExtraFFNPlugin(), "extra")
    result = run_recipe({"model": {"ffn": "test-mixing"}, "optimizer": {"lr": 1e-2}}, steps=3)
    assert result.iterations == 3 and sorted(result.train_losses) == [0, 1, 2]
    assert all(np.isfinite(v) for v in result.train_losses.values())
    assert (result.run_dir / "recipe.toml").exists()


def test_merged_replaces_a_table_naming_another_component():
    base = {"schedule": {"component": "constant"}, "model": {"d_model": 16, "num_layers": 1}}
    out = merged(base, {"schedule": {"component": "wsd", "warmup_iters": 1}, "model": {"d_model": 8}})
    assert out == {"schedule": {"component": "wsd", "warmup_iters": 1}, "model": {"d_model": 8, "num_layers": 1}}


# -- the guide ---------------------------------------------------------------------------------
def test_the_testing_guide_examples_run_in_order(tmp_path, monkeypatch, capsys, register_plugin, run_recipe):
    import re

    monkeypatch.chdir(tmp_path)
    guide = Path(__file__).resolve().parents[1] / "docs" / "testing-plugins.md"
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"testing-plugins.md[block {i}]", "exec"), namespace)
    assert "changed the outputs at other positions" in capsys.readouterr().out
    namespace["test_my_ffn_trains_in_a_recipe"](register_plugin, run_recipe)  # the fixture example, with the real fixtures


def test_the_testing_guide_names_every_check():
    text = (Path(__file__).resolve().parents[1] / "docs" / "testing-plugins.md").read_text()
    for check in testing.CHECK_FOR_KIND.values():
        assert f"| `{check}` |" in text, check


def test_the_checks_work_without_the_testing_extra(tmp_path):
    """Plain `pip install modulm`: no pytest, no hypothesis (both shadowed here by modules that fail)."""
    import os
    import subprocess

    for missing in ("pytest", "hypothesis"):
        (tmp_path / f"{missing}.py").write_text(f"raise ImportError('{missing} is not installed')\n")
    code = ("import sys, modulm.testing as t; t.check_schedule('constant'); t.check_norm('rmsnorm'); "
            "assert not [m for m in sys.modules if m.startswith(('pytest', 'hypothesis'))]")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
