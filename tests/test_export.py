"""Export to Hugging Face Llama / safetensors: RoPE permutation, refusals, logits parity, round trips."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

import modulm
from modulm.assemble import builder
from modulm.cli import main
from modulm.errors import ModulmError
import modulm_transformer.export as transformer_export
from modulm_transformer.export import halves_to_pairs, llama_problems, pairs_to_halves
from modulm_transformer.position import rotate_pairs

VOCAB = 61
TINY = {"context_length": 16, "d_model": 32, "num_layers": 2, "num_heads": 4, "d_ff": 48}


@pytest.fixture(scope="module")
def registry():
    return modulm.load_plugins().registry


def write_checkpoint(path, registry, model_spec, *, seed=0, scale=1.0):
    """A checkpoint like a run's final one (random weights) for ``model_spec``; returns the model."""
    torch.manual_seed(seed)
    build = builder(registry, "model", {"component": "transformer", **model_spec})
    model = build(vocab_size=VOCAB).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln1.weight", "ln2.weight", "ln_final.weight")):
                p.uniform_(0.5, 1.5)  # non-trivial norm gains, so a swapped gain shows
            else:
                p.mul_(scale)
    torch.save({"model": model.state_dict(), "iteration": 0, "recipe": {"model": build.to_table()},
                "meta": {"vocab_size": VOCAB}}, path)
    return model


def halves_rotation(x, cos, sin):
    """Llama's convention: rotate ``(x[i], x[i + d/2])`` by the i-th angle."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)


# --- the permutation, without any optional dependency -------------------------------------------------

@given(heads=st.integers(1, 4), half=st.integers(1, 4), cols=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_permutation_round_trips(heads, half, cols, seed):
    w = torch.randn(heads * 2 * half, cols, generator=torch.Generator().manual_seed(seed))
    permuted = pairs_to_halves(w, heads)
    assert torch.equal(halves_to_pairs(permuted, heads), w)
    assert sorted(permuted[:, 0].tolist()) == sorted(w[:, 0].tolist())  # rows moved, none changed


@given(heads=st.integers(1, 3), half=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_permuted_projection_rotated_by_halves_equals_pair_rotation_permuted(heads, half, seed):
    g = torch.Generator().manual_seed(seed)
    head_dim, d_in, T = 2 * half, 5, 3
    w, x = torch.randn(heads * head_dim, d_in, generator=g), torch.randn(T, d_in, generator=g)
    angles = torch.rand(T, half, generator=g) * 6
    cos, sin = angles.cos(), angles.sin()
    ours = rotate_pairs((x @ w.T).unflatten(-1, (heads, head_dim)).transpose(0, 1), cos, sin)
    theirs = halves_rotation((x @ pairs_to_halves(w, heads).T).unflatten(-1, (heads, head_dim)).transpose(0, 1), cos, sin)
    # Same vectors up to one fixed permutation of each head's coordinates: scores q.k agree.
    assert torch.allclose(ours @ ours.transpose(-1, -2), theirs @ theirs.transpose(-1, -2), atol=1e-4)
    assert torch.allclose(pairs_to_halves(ours.transpose(0, 1).flatten(-2).T, heads).T,
                          theirs.transpose(0, 1).flatten(-2), atol=1e-5)


@pytest.mark.parametrize("part, choice", [("block", "postnorm"), ("norm", "none"), ("ffn", "silu"), ("position", "nope")])
def test_llama_cannot_express_ablations(registry, tmp_path, capsys, part, choice):
    ckpt = tmp_path / "ckpt.pt"
    write_checkpoint(ckpt, registry, {**TINY, part: choice})
    assert main(["export", str(ckpt), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot export to hf-llama" in err and f"model.{part} = {choice!r}" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "config.json").exists()


def test_llama_problems_accepts_the_default_and_the_scratch_attention(registry):
    table = builder(registry, "model", {"component": "transformer", **TINY, "attention": {"impl": "scratch"}}).to_table()
    assert llama_problems(table) == []


def test_missing_safetensors_names_the_extra(registry, tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt.pt"
    write_checkpoint(ckpt, registry, TINY)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ModulmError, match=r"pip install 'modulm\[export\]'"):
        transformer_export.export_safetensors(ckpt, tmp_path / "out")


def test_an_export_into_a_run_directory_is_refused_before_writing(registry, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    write_checkpoint(run / "final_checkpoint.pt", registry, TINY)
    (run / "recipe.toml").write_text("# the run's recipe\n")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir())
    assert main(["export", str(run / "final_checkpoint.pt"), str(run), "--format", "safetensors"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"modulm: error: {run}: is a run directory; export into a directory of its own, e.g. {run / 'export'}"
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir()) == before


def test_not_a_run_checkpoint_is_a_user_error(tmp_path, capsys):
    torch.save({"model": {}, "iteration": 0}, tmp_path / "bare.pt")
    assert main(["export", str(tmp_path / "bare.pt"), str(tmp_path / "out")]) == 2
    assert "written by modulm run" in capsys.readouterr().err


# --- parity with transformers' LlamaForCausalLM ---------------------------------------------------------

def llama_logits(directory, ids):
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlamaForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():
        return hf(ids).logits


def max_logit_gap(model, directory, ids):
    with torch.no_grad():
        ours = model(ids)
    return (ours - llama_logits(directory, ids)).abs().max().item()


@pytest.mark.parametrize("spec", [
    {},
    {"tie_embeddings": True},
    {"rope_theta": 500.0, "norm": {"component": "rmsnorm", "eps": 1e-3}, "d_ff": None, "num_heads": 2},
])
def test_hf_llama_logits_match_on_random_weights(registry, tmp_path, spec):
    pytest.importorskip("safetensors")
    pytest.importorskip("transformers")
    ckpt = tmp_path / "ckpt.pt"
    model = write_checkpoint(ckpt, registry, {**TINY, **spec})
    assert main(["export", str(ckpt), "--format", "hf-llama", str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    ids = torch.randint(0, VOCAB, (2, TINY["context_length"]), generator=torch.Generator().manual_seed(1))
    gap = max_logit_gap(model, tmp_path / "hf", ids)
    print(f"hf-llama parity, random weights {spec}: max |logit difference| {gap:.2e}")  # shown by pytest -s
    assert gap < 1e-4
    with torch.no_grad():
        assert model(ids).abs().max() > 1.0  # the comparison is not between near-zero logits


def test_hf_llama_logits_match_after_brief_training(registry, tmp_path):
    pytest.importorskip("safetensors")
    pytest.importorskip("transformers")
    rng = np.random.default_rng(0)
    pattern = np.tile(np.arange(VOCAB, dtype=np.uint16), 200)  # a learnable sequence: loss must drop
    np.save(tmp_path / "train.npy", pattern)
    np.save(tmp_path / "val.npy", rng.permutation(pattern)[:1000].astype(np.uint16))
    recipe = {
        "data": {"component": "memmap", "train": str(tmp_path / "train.npy"), "val": str(tmp_path / "val.npy"),
                 "vocab_size": VOCAB},
        "model": TINY,
        "optimizer": {"lr": 1e-2},
        "training": {"batch_size": 8, "max_iterations": 30},
        "checkpointing": {"checkpoint_dir": str(tmp_path / "run")},
        "logging": {"log_interval": 10, "eval_interval": 30},
        "system": {"device": "cpu"},
    }
    assembly = modulm.assemble(recipe, registry, overrides=["schedule.warmup_iters=3"])
    result = modulm.Trainer(assembly).run()
    losses = result.train_losses
    assert losses[max(losses)] < losses[0] - 0.5  # trained: the weights moved well away from init
    ckpt = tmp_path / "run" / "final_checkpoint.pt"
    assert main(["export", str(ckpt), str(tmp_path / "hf")]) == 0
    ids = torch.as_tensor(pattern[5:5 + TINY["context_length"]].astype(np.int64))[None]
    gap = max_logit_gap(assembly.model.eval(), tmp_path / "hf", ids)
    print(f"hf-llama parity, trained 30 steps (loss {losses[0]:.2f} -> {losses[max(losses)]:.2f}): max |logit difference| {gap:.2e}")
    assert gap < 1e-4


# --- round trips back into modulm -----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["hf-llama", "safetensors"])
@pytest.mark.parametrize("tied", [False, True])
def test_exported_directory_loads_back_into_modulm(registry, tmp_path, fmt, tied):
    pytest.importorskip("safetensors")
    ckpt = tmp_path / "ckpt.pt"
    model = write_checkpoint(ckpt, registry, {**TINY, "tie_embeddings": tied})
    assert main(["export", str(ckpt), "--format", fmt, str(tmp_path / "out")]) == 0
    loaded = transformer_export.load_exported(tmp_path / "out", registry)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    if tied:
        assert loaded.lm_head.weight is loaded.token_embeddings.weight
    if fmt == "safetensors":
        document = json.loads((tmp_path / "out" / "recipe.json").read_text())
        assert document["vocab_size"] == VOCAB and document["recipe"]["model"]["d_model"] == TINY["d_model"]


def test_tokenizer_files_are_copied_and_read_by_transformers(registry, tmp_path):
    pytest.importorskip("safetensors")
    transformers = pytest.importorskip("transformers")
    from modulm_bpe.tokenizer import Tokenizer
    from modulm_bpe.train import train_bpe

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat.<|endoftext|>the dog sat on the log. " * 20, encoding="utf-8")
    vocab, merges = train_bpe([str(corpus)], vocab_size=VOCAB + 240, special_tokens=["<|endoftext|>"], num_workers=1)
    ours = Tokenizer(vocab, merges, special_tokens=["<|endoftext|>"])
    (tmp_path / "run").mkdir()
    ours.save(tmp_path / "run" / "tokenizer")
    ckpt = tmp_path / "run" / "ckpt.pt"
    write_checkpoint(ckpt, registry, TINY)
    assert main(["export", str(ckpt), str(tmp_path / "hf")]) == 0
    for name in ("vocab.json", "merges.txt", "special_tokens.json", "tokenizer_config.json"):
        assert (tmp_path / "hf" / name).is_file(), name
    theirs = transformers.GPT2Tokenizer.from_pretrained(tmp_path / "hf")
    text = "the cat sat on the log.<|endoftext|>the mat"
    assert theirs.encode(text) == ours.encode(text)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["eos_token_id"] == ours.encode("<|endoftext|>")[0] == theirs.eos_token_id
