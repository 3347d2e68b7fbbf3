"""modulm.testing's checks reject broken components: each mutant here breaks one rule of one contract.

Each test names the rule the check must report (``match=``), so a mutant caught for the wrong
reason fails too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from modulm import hookimpl
from modulm.assemble import create
from modulm.testing import (check_attention, check_data_source, check_ffn, check_logger, check_model,
                            check_model_block, check_norm, check_optimizer, check_orthogonalising_optimizer,
                            check_position, check_schedule, check_tokenizer)
from tests.kit_support import REGISTRY, TINY_MODEL, write_tokens


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
        pass  # the mutation: the saved momentum buffers are dropped


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
        pass  # the mutation: the saved sampler state is ignored


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
        pass  # accepts every event, so only the second close() is wrong


class OutsideLogger(ClosingTwiceLogger):
    def __init__(self, *, run_dir):
        super().__init__(run_dir=run_dir)
        (Path(run_dir).parent / "stray.log").write_text("x")

    def close(self):
        pass  # may be closed twice, so only the stray file is wrong


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


class MomentumWithoutOrthogonalisation(torch.optim.SGD):
    """A 'Muon' that skips the Newton-Schulz step: plain momentum SGD on the hidden matrices."""

    def __init__(self, lr: float = 0.02, *, params):
        super().__init__([p for _, p in params], lr=lr, momentum=0.95, nesterov=True)


def test_orthogonalisation_check_rejects_a_muon_that_skips_newton_schulz():
    check_orthogonalising_optimizer("muon", registry=REGISTRY)  # the real one passes
    with pytest.raises(AssertionError, match="not orthogonalised"):
        check_orthogonalising_optimizer(MomentumWithoutOrthogonalisation)


def qk_norm_after_rope(*, d_model: int, num_heads: int, context_length: int, position=None):
    """mha with QK-norm whose norms run after the position encoding instead of before it."""
    attention = create(REGISTRY, "attention", {"component": "mha", "qk_norm": "rmsnorm"}, d_model=d_model,
                       num_heads=num_heads, context_length=context_length, position=position)
    rope, q_norm, k_norm = attention.position, attention.q_norm, attention.k_norm
    attention.q_norm = attention.k_norm = nn.Identity()
    attention.q_after, attention.k_after = q_norm, k_norm  # keep the gains as parameters

    class NormAfter(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x, token_positions=None):
            norm = (q_norm, k_norm)[self.calls % 2]  # forward rotates q first, then k
            self.calls += 1
            return norm(rope(x, token_positions))

    attention.position = NormAfter()
    return attention


def test_attention_check_rejects_qk_norm_applied_after_rope():
    with pytest.raises(AssertionError, match="not relative"):
        check_attention(qk_norm_after_rope)
