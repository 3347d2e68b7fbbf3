"""Resource accounting: parameter counts, forward FLOPs, memory, and the text table."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from modulm_transformer import TransformerLM
from modulm_transformer.accounting import (
    format_accounting, forward_flops_per_token, model_accounting, parameter_counts,
)
from modulm_transformer.components import silu_ffn as silu
from modulm_transformer.ffn import swiglu_width


@st.composite
def configs(draw):
    num_heads = draw(st.integers(1, 3))
    return dict(vocab_size=draw(st.integers(2, 50)), context_length=draw(st.integers(2, 16)),
                d_model=num_heads * 2 * draw(st.integers(1, 4)), num_layers=draw(st.integers(1, 3)),
                num_heads=num_heads, d_ff=draw(st.integers(1, 40)))


def closed_form_params(vocab: int, d: int, layers: int, d_ff: int) -> int:
    """Embedding + per layer (4 d^2 attention, 3 d d_ff SwiGLU, 2 d gains) + final gain + LM head."""
    return vocab * d + layers * (4 * d * d + 3 * d * d_ff + 2 * d) + d + vocab * d


@given(configs())
def test_parameter_counts_match_the_closed_form_and_sum_to_the_total(cfg):
    model = TransformerLM(**cfg)
    counts = parameter_counts(model)
    v, d, n, f = cfg["vocab_size"], cfg["d_model"], cfg["num_layers"], cfg["d_ff"]
    assert counts["total"] == closed_form_params(v, d, n, f) == sum(p.numel() for p in model.parameters())
    assert counts["embedding"] == counts["lm_head"] == v * d
    assert counts["attention"] == n * 4 * d * d and counts["ffn"] == n * 3 * d * f and counts["norm"] == (2 * n + 1) * d
    parts = ("embedding", "attention", "ffn", "norm", "lm_head")
    assert sum(counts[p] for p in parts) == counts["total"]
    assert counts["non_embedding"] == counts["total"] - 2 * v * d


def test_tied_embeddings_are_counted_once():
    model = TransformerLM(100, 8, 16, 1, 2, 32, tie_embeddings=True)
    counts = parameter_counts(model)
    assert counts["lm_head"] == 0 and counts["embedding"] == 1600
    assert counts["total"] == closed_form_params(100, 16, 1, 32) - 1600


@given(configs())
def test_forward_flops_match_the_handout_formula(cfg):
    model = TransformerLM(**cfg)
    v, t, d, n, f = cfg["vocab_size"], cfg["context_length"], cfg["d_model"], cfg["num_layers"], cfg["d_ff"]
    flops = forward_flops_per_token(model, t)
    assert flops["attention_projections"] == n * 2 * 4 * d * d
    assert flops["attention_scores"] == n * 4 * t * d
    assert flops["ffn"] == n * 2 * 3 * d * f
    assert flops["lm_head"] == 2 * d * v
    assert flops["total"] == sum(value for part, value in flops.items() if part != "total")


@pytest.mark.parametrize("ffn", ["swiglu", "silu"])
def test_forward_flops_equal_what_torch_counts_in_a_forward_pass(registry, ffn):
    from modulm.assemble import create

    model = create(registry, "model", {"component": "transformer", "context_length": 16, "d_model": 32,
                                       "num_layers": 2, "num_heads": 4, "d_ff": None, "ffn": ffn,
                                       "attention": {"component": "mha", "impl": "scratch"}}, vocab_size=64)
    ids = torch.randint(0, 64, (3, 16))
    with FlopCounterMode(display=False) as counter:
        model(ids)
    report = model_accounting(model, batch_size=3)
    assert report["flops"]["per_step"]["total"] == counter.get_total_flops()
    assert report["tokens_per_step"] == 48 and report["flops"]["train_per_step"] == 3 * counter.get_total_flops()


def test_gpt2_xl_accounting_on_the_meta_device():
    """GPT-2 XL shapes (handout): 2.13 B parameters, ~4.5 TFLOPs for one 1024-token forward pass."""
    with torch.device("meta"):
        model = TransformerLM(50257, 1024, 1600, 48, 25, 6400)
    report = model_accounting(model, batch_size=1, dtype="float32")
    assert report["params"]["total"] == closed_form_params(50257, 1600, 48, 6400)
    assert report["flops"]["per_step"]["total"] == pytest.approx(4.51e12, rel=0.01)
    assert report["memory"]["params"] == 4 * report["params"]["total"]


@pytest.mark.parametrize("dtype,width", [("float32", 4), ("bfloat16", 2), (torch.float16, 2)])
def test_memory_is_params_grads_and_two_adamw_moments_at_the_dtype(dtype, width):
    model = TransformerLM(50, 8, 16, 1, 2, 32)
    memory = model_accounting(model, dtype=dtype)["memory"]
    total = parameter_counts(model)["total"]
    assert memory["bytes_per_value"] == width
    assert memory["params"] == memory["grads"] == width * total
    assert memory["adamw_state"] == 2 * width * total and memory["total"] == 4 * width * total


def test_unknown_dtype_is_an_error():
    with pytest.raises(ValueError, match="dtype"):
        model_accounting(TransformerLM(10, 4, 8, 1, 2), dtype="float33")


def test_batch_and_context_scale_the_step_flops():
    model = TransformerLM(50, 32, 16, 2, 2, 32)
    short, long = model_accounting(model, 2, 8), model_accounting(model, 4, 32)
    assert long["tokens_per_step"] == 128 and short["tokens_per_step"] == 16
    # only the attention scores grow with the context, per token
    assert long["flops"]["per_token"]["attention_scores"] == 4 * short["flops"]["per_token"]["attention_scores"]
    assert long["flops"]["per_token"]["ffn"] == short["flops"]["per_token"]["ffn"]
    assert model_accounting(model)["context_length"] == 32  # defaults to the model's


def test_ungated_ffn_and_default_widths_are_accounted():
    model = TransformerLM(10, 8, 64, 1, 2, None, ffn=silu)
    assert parameter_counts(model)["ffn"] == 2 * 64 * 256
    assert parameter_counts(TransformerLM(10, 8, 64, 1, 2, None))["ffn"] == 3 * 64 * swiglu_width(64)


def test_format_accounting_shows_every_part():
    text = format_accounting(model_accounting(TransformerLM(1000, 64, 64, 2, 4, 128), batch_size=4, dtype="bfloat16"))
    for word in ("embedding", "attention", "ffn", "lm_head", "non_embedding", "total", "attention_projections",
                 "attention_scores", "training step", "adamw_state", "bfloat16", "batch 4 x context 64"):
        assert word in text
    assert f"{parameter_counts(TransformerLM(1000, 64, 64, 2, 4, 128))['total']:,}" in text


def test_model_methods_give_the_same_report_and_table():
    model = TransformerLM(100, 16, 16, 1, 2, 32)
    assert model.accounting(4, dtype="bfloat16") == model_accounting(model, 4, dtype="bfloat16")
    text = model.accounting_text(batch_size=4, dtype="bfloat16")
    assert text == format_accounting(model_accounting(model, 4, dtype="bfloat16"))
    assert "stay float32" in text and "stay float32" not in model.accounting_text(batch_size=4)
