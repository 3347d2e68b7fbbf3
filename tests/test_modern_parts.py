"""The modern model parts: relu2 feed-forward, QK-norm, logit soft-capping, zero-out init, and export."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modulm.assemble import builder, create
from modulm.cli import main
from modulm.errors import ModulmError
from modulm.testing import check_attention, check_ffn, check_model
from modulm_transformer.llama_compat import llama_incompatibilities
from modulm_transformer.model import soft_cap
from tests.kit_support import REGISTRY, TINY_MODEL
from tests.test_export import TINY, write_checkpoint


def model(vocab_size: int = 32, **options):
    return create(REGISTRY, "model", {"component": "transformer", **TINY_MODEL, **options}, vocab_size=vocab_size)


def test_relu2_is_w2_of_squared_relu_with_four_times_the_width():
    check_ffn("relu2", registry=REGISTRY)
    ffn = create(REGISTRY, "ffn", "relu2", d_model=8, d_ff=None)
    assert ffn.w1.weight.shape == (32, 8) and ffn.w2.weight.shape == (8, 32)
    x = torch.randn(3, 8)
    expected = torch.relu(x @ ffn.w1.weight.T) ** 2 @ ffn.w2.weight.T
    assert torch.allclose(ffn(x), expected, atol=1e-6)


def test_models_with_the_new_parts_pass_the_model_check():
    check_model("transformer", {**TINY_MODEL, "ffn": "relu2", "logit_softcap": 5.0,
                                "attention": {"qk_norm": "rmsnorm"}}, registry=REGISTRY)
    check_attention("mha", {"qk_norm": {"component": "rmsnorm", "gain": False}}, registry=REGISTRY)


@given(st.floats(0.05, 20.0))
def test_qk_norm_makes_attention_blind_to_the_scale_of_the_query_and_key_projections(scale):
    torch.manual_seed(0)
    qk_norm = {"component": "rmsnorm", "eps": 1e-12}  # eps would make small scales show a little
    with_norm = create(REGISTRY, "attention", {"component": "mha", "qk_norm": qk_norm}, d_model=16, num_heads=2,
                       context_length=8, position=builder(REGISTRY, "position", "rope"))
    x = torch.randn(2, 6, 16)
    before = with_norm(x)
    with torch.no_grad():
        for name, p in with_norm.named_parameters():
            if name.startswith(("q_proj", "k_proj")):
                p.mul_(scale)
    assert torch.allclose(with_norm(x), before, atol=1e-4)


def test_without_qk_norm_the_scale_of_the_projections_matters():
    torch.manual_seed(0)
    plain = create(REGISTRY, "attention", "mha", d_model=16, num_heads=2, context_length=8,
                   position=builder(REGISTRY, "position", "rope"))
    assert not hasattr(plain, "q_norm") and "q_norm.weight" not in plain.state_dict()
    x = torch.randn(2, 6, 16)
    before = plain(x)
    with torch.no_grad():
        plain.q_proj.weight.mul_(5.0)
    assert not torch.allclose(plain(x), before, atol=1e-4)


@given(st.floats(0.5, 50.0), st.floats(1.0, 1e4))
def test_soft_capped_logits_are_bounded_by_the_cap(cap, magnitude):
    logits = torch.linspace(-magnitude, magnitude, 101)
    capped = soft_cap(logits, cap)
    assert (capped.abs() <= cap).all()
    assert torch.all(capped[1:] >= capped[:-1])  # order kept
    small = logits / magnitude * cap * 1e-3
    assert torch.allclose(soft_cap(small, cap), small, rtol=1e-5, atol=1e-9)  # about the identity near 0


@given(st.floats(1.0, 30.0), st.integers(0, 1000))
def test_a_soft_capped_model_never_returns_logits_beyond_the_cap(cap, seed):
    torch.manual_seed(seed)
    capped = model(logit_softcap=cap)
    with torch.no_grad():
        capped.lm_head.weight.mul_(100.0)  # logits far beyond any cap without it
        logits = capped(torch.randint(0, 32, (2, 8)))
    assert logits.abs().max() <= cap


@given(st.integers(0, 1000), st.sampled_from(["swiglu", "relu2", "silu"]))
def test_zero_out_blocks_start_as_the_identity(seed, ffn):
    torch.manual_seed(seed)
    zero = model(init="zero-out", num_layers=2, ffn=ffn)
    x = torch.randn(2, 8, 16)
    with torch.no_grad():
        for layer in zero.layers:
            assert torch.equal(layer(x), x)
            assert torch.count_nonzero(layer.attn.output_proj.weight) == 0 and torch.count_nonzero(layer.ffn.w2.weight) == 0
        ids = torch.randint(0, 32, (2, 8))
        assert torch.equal(zero(ids), zero.lm_head(zero.ln_final(zero.token_embeddings(ids))))


def test_zero_out_trains_every_parameter_after_one_step():
    """At step 0 only the zeroed projections (and embeddings, norms, head) get gradients; one step
    later everything does, so the init leaves nothing dead."""
    torch.manual_seed(0)
    zero = model(init="zero-out")
    optimizer = create(REGISTRY, "optimizer", "muon", params=list(zero.named_parameters()))
    ids, targets = torch.randint(0, 32, (2, 8)), torch.randint(0, 32, (2, 8))
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(zero(ids).flatten(0, 1), targets.flatten()).backward()
        optimizer.step()
    dead = [name for name, p in zero.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_zero_out_with_a_part_that_has_no_output_projection_is_a_one_line_error():
    from torch import nn

    class Bare(nn.Module):
        def __init__(self, *, d_model, d_ff=None):
            super().__init__()
            self.proj = nn.Linear(d_model, d_model)

        def forward(self, x):
            return self.proj(x)

    from modulm_transformer.model import transformer

    with pytest.raises(ModulmError, match="model.init = 'zero-out': .*layers\\[0\\].ffn.w2"):
        transformer(**TINY_MODEL, init="zero-out", ffn=lambda **sizes: Bare(**sizes), vocab_size=32,
                    block=None, attention=None, norm=None, position=None)  # None: the CS336 defaults
    with pytest.raises(ModulmError, match="model.logit_softcap: -1.0 is out of range"):
        model(logit_softcap=-1.0)


@pytest.mark.parametrize("spec, phrase", [
    ({"logit_softcap": 30.0}, "model.logit_softcap = 30.0 (Llama has no logit soft-capping)"),
    ({"attention": {"qk_norm": "rmsnorm"}}, "model.attention.qk_norm = 'rmsnorm' (Llama has no QK-norm)"),
    ({"norm": {"gain": False}}, "model.norm.gain = false"),
])
def test_export_refuses_what_llama_cannot_express_in_one_line(tmp_path, capsys, spec, phrase):
    registry = REGISTRY
    ckpt = tmp_path / "ckpt.pt"
    write_checkpoint(ckpt, registry, {**TINY, **spec})
    assert main(["export", str(ckpt), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot export to hf-llama" in err and phrase in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "config.json").exists()


def test_zero_out_init_exports_and_defaults_have_no_incompatibility(tmp_path):
    table = builder(REGISTRY, "model", {"component": "transformer", **TINY, "init": "zero-out"}).to_table()
    assert llama_incompatibilities(table) == []
    ckpt = tmp_path / "ckpt.pt"
    write_checkpoint(ckpt, REGISTRY, {**TINY, "init": "zero-out"})
    assert main(["export", str(ckpt), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "config.json").exists()


def test_plugins_lists_the_new_components(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for name in ("muon", "relu2"):
        assert any(line.split()[:1] == [name] for line in out.splitlines()), name
