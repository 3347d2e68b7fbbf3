"""modulm.testing's checks reject broken model parts (ffn, norm, position, attention, block, model):
each mutant here breaks one rule of one contract (the training parts' mutants are in
test_testing_mutants_training.py).

Each test names the rule the check must report (``match=``), so a mutant caught for the wrong
reason fails too.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modulm import hookimpl
from modulm.assemble import create
from modulm.testing import check_attention, check_ffn, check_model, check_model_block, check_norm, check_position
from tests.kit_support import REGISTRY, TINY_MODEL


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


class PerEmbeddingModel(nn.Module):
    """A correct causal model (each position's logits from its own token) with a fused loss that
    can be made wrong in value or in gradient."""

    def __init__(self, context_length: int = 8, fault: str = "none", *, vocab_size: int):
        super().__init__()
        self.vocab_size, self.context_length, self.fault = vocab_size, context_length, fault
        self.embedding = nn.Embedding(vocab_size, vocab_size)

    def forward(self, token_ids, *, targets=None):
        logits = self.embedding(token_ids)
        if targets is None:
            return logits
        loss = nn.functional.cross_entropy(logits.reshape(-1, self.vocab_size), targets.reshape(-1))
        if self.fault == "value":
            return loss * 1.01
        if self.fault == "gradient":  # the same value, half the gradient
            return loss / 2 + loss.detach() / 2
        return loss


def test_model_check_rejects_a_fused_loss_that_is_not_the_logits_loss():
    check_model(PerEmbeddingModel)
    with pytest.raises(AssertionError, match=r"forward\(ids, targets=...\) gave"):
        check_model(PerEmbeddingModel, {"fault": "value"})
    with pytest.raises(AssertionError, match="another gradient than the logits' loss"):
        check_model(PerEmbeddingModel, {"fault": "gradient"})


def test_model_check_rejects_mixing_batch_elements_and_derived_state():
    with pytest.raises(AssertionError, match="element 1 changed the logits of element 0"):
        check_model(MeanOverBatchModel)
    with pytest.raises(AssertionError, match="more than learnable weights"):
        check_model(MeanOverBatchModel, {"derived_in_state": True})



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


_OFFSETS: dict[int, torch.Tensor] = {}  # the mutant's cache, across calls and instances


class CachesAcrossCallsModel(PerEmbeddingModel):
    """A correct model that keeps a per-length tensor between calls; ``dispatch_safe=False`` keeps
    the one made during the fake sizing pass too, which the real run then trips over."""

    def __init__(self, context_length: int = 8, dispatch_safe: bool = True, *, vocab_size: int):
        super().__init__(context_length, vocab_size=vocab_size)
        self.dispatch_safe = dispatch_safe

    def forward(self, token_ids, *, targets=None):
        from modulm.functional.plain import dispatch_mode_active

        length = token_ids.shape[-1]
        offset = _OFFSETS.get(length)
        if offset is None:
            offset = torch.zeros(length, 1)
            if not (self.dispatch_safe and dispatch_mode_active()):
                _OFFSETS[length] = offset
        logits = self.embedding(token_ids) + offset
        if targets is None:
            return logits
        return nn.functional.cross_entropy(logits.reshape(-1, self.vocab_size), targets.reshape(-1))


def test_model_check_rejects_a_tensor_cached_during_the_fake_sizing_pass():
    _OFFSETS.clear()
    check_model(CachesAcrossCallsModel)
    _OFFSETS.clear()
    with pytest.raises(AssertionError, match="after the sizing pass on fake tensors the real model fails"):
        check_model(CachesAcrossCallsModel, {"dispatch_safe": False})
    _OFFSETS.clear()
