"""TransformerLM: state-dict layout, causality, prefixes, batches, dtypes, KV cache, recipes."""

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modulm import plugins
from modulm.assemble import create
from modulm.kinds import Model
from modulm_transformer import PostNormBlock, TransformerLM

seeds = st.integers(0, 2**31 - 1)


@pytest.fixture(scope="module")
def registry():
    """One registry for the module (hypothesis tests must not use function-scoped fixtures)."""
    return plugins.load(autoload=True, env={}).registry


@st.composite
def configs(draw):
    """Small random model configurations (RoPE needs an even head width)."""
    num_heads = draw(st.integers(1, 3))
    head_dim = 2 * draw(st.integers(1, 3))
    return dict(
        vocab_size=draw(st.integers(2, 40)),
        context_length=draw(st.integers(2, 12)),
        d_model=num_heads * head_dim,
        num_layers=draw(st.integers(1, 2)),
        num_heads=num_heads,
        d_ff=draw(st.one_of(st.none(), st.integers(1, 24))),
    )


def build(seed: int, cfg: dict, **parts) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(**cfg, **parts)


def assert_logits_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """float32 logits computed with other matmul shapes (batching, prefixes, caches) differ by
    rounding, amplified through the layers: compare relative to the logits' scale."""
    scale = 1 + expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * scale)


def tokens(seed: int, vocab: int, *shape: int) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


# -- state-dict layout ---------------------------------------------------------------------------------
def reference_layout(num_layers: int, vocab: int, d_model: int, d_ff: int) -> dict[str, tuple[int, ...]]:
    """The CS336 reference state-dict keys and shapes (every linear weight is (out, in))."""
    layout = {"token_embeddings.weight": (vocab, d_model)}
    for i in range(num_layers):
        layout |= {
            f"layers.{i}.attn.q_proj.weight": (d_model, d_model),
            f"layers.{i}.attn.k_proj.weight": (d_model, d_model),
            f"layers.{i}.attn.v_proj.weight": (d_model, d_model),
            f"layers.{i}.attn.output_proj.weight": (d_model, d_model),
            f"layers.{i}.ln1.weight": (d_model,),
            f"layers.{i}.ffn.w1.weight": (d_ff, d_model),
            f"layers.{i}.ffn.w2.weight": (d_model, d_ff),
            f"layers.{i}.ffn.w3.weight": (d_ff, d_model),
            f"layers.{i}.ln2.weight": (d_model,),
        }
    return layout | {"ln_final.weight": (d_model,), "lm_head.weight": (vocab, d_model)}


def test_default_state_dict_has_exactly_the_reference_layout():
    model = TransformerLM(vocab_size=50, context_length=16, d_model=32, num_layers=3, num_heads=4, d_ff=48)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == reference_layout(3, 50, 32, 48)
    assert list(shapes) == list(reference_layout(3, 50, 32, 48))  # same order too


def test_registered_default_transformer_has_the_reference_layout(registry):
    model = create(registry, "model", {"component": "transformer", "d_model": 16, "num_layers": 2, "num_heads": 2,
                                       "context_length": 8, "d_ff": 24}, vocab_size=30)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == reference_layout(2, 30, 16, 24)


def test_a_reference_checkpoint_loads_strictly_and_gives_the_same_logits():
    source = build(0, dict(vocab_size=20, context_length=8, d_model=16, num_layers=2, num_heads=2, d_ff=24))
    checkpoint = {k: v.clone() for k, v in source.state_dict().items()}  # plain tensors under the reference keys
    target = build(1, dict(vocab_size=20, context_length=8, d_model=16, num_layers=2, num_heads=2, d_ff=24))
    target.load_state_dict(checkpoint, strict=True)
    ids = tokens(0, 20, 2, 8)
    torch.testing.assert_close(target(ids), source(ids))


def test_rope_buffers_are_not_persisted():
    model = TransformerLM(10, 8, 8, 1, 2, 16)
    buffers = {name for name, _ in model.named_buffers()}
    assert buffers == {"layers.0.attn.position.cos", "layers.0.attn.position.sin"}
    assert not buffers & set(model.state_dict())


# -- properties of the whole model -------------------------------------------------------------------------
@given(seeds, configs(), st.lists(st.integers(1, 3), min_size=0, max_size=2), st.data())
def test_logits_shape_and_dtype(seed, cfg, lead, data):
    model = build(seed, cfg)
    t = data.draw(st.integers(1, cfg["context_length"]))
    logits = model(tokens(seed, cfg["vocab_size"], *lead, t))
    assert logits.shape == (*lead, t, cfg["vocab_size"]) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("block", ["prenorm", "postnorm"])
@given(seed=seeds, cfg=configs(), data=st.data())
def test_changing_later_tokens_never_changes_earlier_logits(registry, block, seed, cfg, data):
    torch.manual_seed(seed)
    vocab = cfg.pop("vocab_size")
    model = create(registry, "model", {"component": "transformer", "block": block, **cfg}, vocab_size=vocab)
    t = cfg["context_length"]
    ids = tokens(seed, model.vocab_size, 2, t)
    cut = data.draw(st.integers(0, t - 2) if t > 1 else st.just(0), label="last unchanged position")
    changed = ids.clone()
    changed[:, cut + 1:] = tokens(seed + 1, model.vocab_size, 2, t - cut - 1)
    torch.testing.assert_close(model(changed)[:, : cut + 1], model(ids)[:, : cut + 1])


@given(seeds, configs(), st.data())
def test_prefix_logits_equal_the_first_positions_of_the_full_sequence(seed, cfg, data):
    model = build(seed, cfg)
    ids = tokens(seed, cfg["vocab_size"], 3, cfg["context_length"])
    prefix = data.draw(st.integers(1, cfg["context_length"]))
    assert_logits_close(model(ids[:, :prefix]), model(ids)[:, :prefix])


@given(seeds, configs(), st.integers(2, 4))
def test_batch_elements_are_independent(seed, cfg, batch):
    model = build(seed, cfg)
    ids = tokens(seed, cfg["vocab_size"], batch, cfg["context_length"])
    together = model(ids)
    for b in range(batch):
        assert_logits_close(together[b], model(ids[b]))


@pytest.mark.parametrize("impl", ["sdpa", "scratch"])
def test_bfloat16_model_returns_bfloat16_logits(registry, impl):
    model = create(registry, "model", {"component": "transformer", "d_model": 16, "num_layers": 2, "num_heads": 2,
                                       "context_length": 8, "attention": {"component": "mha", "impl": impl}},
                   vocab_size=20)
    ids = tokens(0, 20, 2, 8)
    expected = model(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_logits = model(ids)
    assert autocast_logits.dtype == torch.bfloat16
    torch.testing.assert_close(autocast_logits.float(), expected, rtol=0.1, atol=0.1)
    assert model.to(torch.bfloat16)(ids).dtype == torch.bfloat16


def test_sequences_longer_than_the_context_are_rejected():
    model = TransformerLM(10, 4, 8, 1, 2, 16)
    with pytest.raises(ValueError, match="context_length"):
        model(tokens(0, 10, 1, 5))


def test_model_keeps_the_model_contract():
    model = TransformerLM(10, 4, 8, 1, 2)
    assert isinstance(model, Model)
    assert (model.vocab_size, model.context_length) == (10, 4)
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())


def test_every_parameter_gets_a_gradient_and_a_few_steps_fit_a_batch():
    model = build(0, dict(vocab_size=16, context_length=8, d_model=16, num_layers=2, num_heads=2, d_ff=32))
    ids = tokens(0, 16, 4, 9)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        model.zero_grad()
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.05 * p.grad / (p.grad.norm() + 1e-8)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# -- tied embeddings -----------------------------------------------------------------------------------------
def test_tied_embeddings_share_one_matrix_initialised_like_the_lm_head():
    model = build(0, dict(vocab_size=300, context_length=4, d_model=64, num_layers=1, num_heads=2, tie_embeddings=True))
    assert model.token_embeddings.weight is model.lm_head.weight
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for n, p in model.named_parameters() if n != "lm_head.weight")
    assert model.lm_head.weight.std().item() < 0.2  # the LM head's init, not N(0, 1)
    loss = model(tokens(0, 300, 2, 4)).sum()
    loss.backward()
    assert model.token_embeddings.weight.grad is not None


# -- KV cache ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["sdpa", "scratch"])
@given(seed=seeds, cfg=configs(), data=st.data())
def test_cached_decoding_gives_the_logits_of_a_full_forward(registry, impl, seed, cfg, data):
    torch.manual_seed(seed)
    vocab = cfg.pop("vocab_size")
    model = create(registry, "model", {"component": "transformer", "attention": {"component": "mha", "impl": impl}, **cfg},
                   vocab_size=vocab)
    t = cfg["context_length"]
    ids = tokens(seed, vocab, 2, t)
    prompt = data.draw(st.integers(1, t), label="prompt length")
    cache = model.new_kv_cache(batch_size=2)
    steps = [model(ids[:, :prompt], cache=cache)]
    steps += [model(ids[:, i:i + 1], cache=cache) for i in range(prompt, t)]
    assert cache.position == t
    assert_logits_close(torch.cat(steps, dim=1), model(ids))


def test_kv_cache_reset_starts_over_and_overflow_is_an_error():
    model = build(0, dict(vocab_size=10, context_length=6, d_model=8, num_layers=2, num_heads=2))
    ids = tokens(0, 10, 1, 6)
    cache = model.new_kv_cache(1, max_seq_len=4)
    first = model(ids[:, :4], cache=cache)
    with pytest.raises(ValueError):
        model(ids[:, 4:5], cache=cache)
    cache.reset()
    torch.testing.assert_close(model(ids[:, :4], cache=cache), first)
    with pytest.raises(ValueError, match="context_length"):
        model.new_kv_cache(1, max_seq_len=7)


def test_cached_decoding_works_for_every_block_and_position(registry):
    for block, position in itertools.product(["prenorm", "postnorm"], ["rope", "nope"]):
        torch.manual_seed(0)
        model = create(registry, "model", {"component": "transformer", "context_length": 6, "d_model": 8,
                                           "num_layers": 2, "num_heads": 2, "block": block, "position": position},
                       vocab_size=11)
        ids = tokens(1, 11, 1, 6)
        cache = model.new_kv_cache(1)
        steps = torch.cat([model(ids[:, i:i + 1], cache=cache) for i in range(6)], dim=1)
        assert_logits_close(steps, model(ids))


# -- recipes: every part is swappable ---------------------------------------------------------------------------
PARTS = list(itertools.product(["prenorm", "postnorm"], ["swiglu", "silu"], ["rmsnorm", "none"], ["rope", "nope"],
                               ["sdpa", "scratch"]))


@pytest.mark.parametrize("block,ffn,norm,position,impl", PARTS)
def test_every_combination_of_parts_builds_from_a_recipe_and_runs(registry, block, ffn, norm, position, impl):
    torch.manual_seed(0)
    spec = {"component": "transformer", "context_length": 8, "d_model": 32, "num_layers": 2, "num_heads": 2,
            "d_ff": None, "block": block, "ffn": ffn, "norm": norm, "position": position,
            "attention": {"component": "mha", "impl": impl}}
    model = create(registry, "model", spec, vocab_size=13)
    logits = model(tokens(0, 13, 2, 8))
    assert logits.shape == (2, 8, 13) and torch.isfinite(logits).all()
    keys = set(model.state_dict())
    assert ("layers.0.ln1.weight" in keys) == (norm == "rmsnorm") == ("ln_final.weight" in keys)
    assert ("layers.0.ffn.w3.weight" in keys) == (ffn == "swiglu")
    assert model.layers[0].ffn.w1.weight.shape[0] == (64 if ffn == "swiglu" else 128)  # each ffn's default width
    assert isinstance(model.layers[0], PostNormBlock) == (block == "postnorm")


def test_recipe_parameters_reach_the_parts(registry):
    spec = {"component": "transformer", "context_length": 8, "d_model": 16, "num_layers": 3, "num_heads": 4,
            "d_ff": 40, "rope_theta": 500.0, "norm": {"component": "rmsnorm", "eps": 1e-3}}
    model = create(registry, "model", spec, vocab_size=13)
    assert len(model.layers) == 3
    layer = model.layers[0]
    assert layer.attn.num_heads == 4 and layer.attn.position.theta == 500.0 and layer.attn.position.max_seq_len == 8
    assert layer.ffn.w1.weight.shape == (40, 16) and layer.ln1.eps == 1e-3 and model.ln_final.eps == 1e-3


def test_python_defaults_match_the_registered_defaults(registry):
    torch.manual_seed(0)
    by_recipe = create(registry, "model", "transformer", vocab_size=100)
    torch.manual_seed(0)
    by_python = TransformerLM(100)
    assert by_recipe.state_dict().keys() == by_python.state_dict().keys()
    for key, value in by_recipe.state_dict().items():
        assert torch.equal(value, by_python.state_dict()[key]), key
    assert repr(by_recipe) == repr(by_python)


@pytest.mark.slow
def test_compiled_model_matches_eager_in_logits_and_gradients():
    model = build(0, dict(vocab_size=32, context_length=8, d_model=16, num_layers=2, num_heads=2))
    ids = tokens(0, 32, 2, 8)
    eager = model(ids)
    eager.square().mean().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    compiled = torch.compile(model)(ids)
    compiled.square().mean().backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # the trainer's call: the loss comes back from the compiled forward (the matmul in the graph,
    # the from-scratch loss outside it), with the eager gradients
    targets = tokens(1, 32, 2, 8)
    model.zero_grad()
    eager_loss = model(ids, targets=targets)
    eager_loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    compiled_loss = torch.compile(model)(ids, targets=targets)
    compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6, msg=name)
