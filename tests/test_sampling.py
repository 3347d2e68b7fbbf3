"""Decoding (CS336 §6): greedy at temperature 0, ``softmax(logits / T)``, the top-p nucleus, the
stop token, the KV cache and its sliding window, and text streamed whole characters at a time."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modulm.sampling import generate, generate_ids, sample_next, stop_token_id

distinct_logits = st.lists(st.integers(-40, 40), min_size=2, max_size=12, unique=True).map(
    lambda values: torch.tensor(values, dtype=torch.float32) / 4)


def draws(logits: torch.Tensor, n: int, seed: int = 0, **kwargs) -> torch.Tensor:
    """``n`` independent samples of one distribution (one batched call)."""
    generator = torch.Generator().manual_seed(seed)
    return sample_next(logits.expand(n, -1), generator=generator, **kwargs)


def nucleus(logits: torch.Tensor, temperature: float, top_p: float) -> set[int]:
    """The smallest set of most likely tokens whose probability mass reaches ``top_p``."""
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    kept, mass = set(), 0.0
    for token in probs.argsort(descending=True).tolist():
        kept.add(token)
        mass += probs[token].item()
        if mass >= top_p:
            break
    return kept


@given(distinct_logits, st.integers(1, 3))
def test_temperature_zero_is_the_argmax(logits, rows):
    batch = torch.stack([logits.roll(shift) for shift in range(rows)])
    assert torch.equal(sample_next(batch, temperature=0), batch.argmax(dim=-1))


@given(distinct_logits, st.floats(0.2, 3.0), st.floats(0.05, 0.95), st.integers(0, 2**16))
def test_every_sample_lies_in_the_top_p_nucleus(logits, temperature, top_p, seed):
    probs = torch.softmax(logits.double() / temperature, dim=-1).sort(descending=True).values
    edges = probs.cumsum(0)
    if (edges - top_p).abs().min() < 1e-6:  # the nucleus edge within rounding of top_p: either set is right
        return
    got = set(draws(logits, 256, seed, temperature=temperature, top_p=top_p).tolist())
    assert got <= nucleus(logits, temperature, top_p)


@given(distinct_logits, st.floats(0.2, 3.0))
def test_a_tiny_top_p_keeps_only_the_most_likely_token(logits, temperature):
    assert set(draws(logits, 64, temperature=temperature, top_p=1e-6).tolist()) == {int(logits.argmax())}


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.5, 1.0), (2.0, 1.0), (1.0, 0.8)])
def test_sample_frequencies_follow_the_tempered_renormalised_softmax(temperature, top_p):
    logits = torch.tensor([2.0, 1.0, 0.3, -0.5, -2.0])
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    kept = torch.zeros_like(probs)
    kept[list(nucleus(logits, temperature, top_p))] = 1
    expected = probs * kept / (probs * kept).sum()
    n = 40_000
    counts = torch.bincount(draws(logits, n, 7, temperature=temperature, top_p=top_p), minlength=5).double()
    assert torch.allclose(counts / n, expected, atol=4 * math.sqrt(0.25 / n))  # 4 standard errors at most


def test_sampling_is_reproducible_with_a_seeded_generator():
    logits = torch.randn(50)
    assert torch.equal(draws(logits, 100, 3), draws(logits, 100, 3))
    assert not torch.equal(draws(logits, 100, 3), draws(logits, 100, 4))


@pytest.mark.parametrize("temperature, top_p", [(-0.1, 1.0), (math.nan, 1.0), (math.inf, 1.0),
                                                (1.0, 0.0), (1.0, 1.5), (1.0, math.nan)])
def test_settings_outside_their_range_are_refused(temperature, top_p):
    with pytest.raises(ValueError, match="temperature"):
        sample_next(torch.zeros(4), temperature=temperature, top_p=top_p)


# -- the decoding loop ---------------------------------------------------------------------------
class Scripted(torch.nn.Module):
    """Emits ``script`` after a prompt of ``prompt_length`` tokens (a peaked distribution, no cache)."""

    def __init__(self, script: list[int], vocab: int, prompt_length: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.script, self.vocab, self.prompt_length = script, vocab, prompt_length
        self.inputs: list[list[int]] = []

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.inputs.append(ids[0].tolist())
        logits = torch.full((1, ids.shape[1], self.vocab), -30.0)
        logits[0, -1, self.script[ids.shape[1] - self.prompt_length]] = 30.0
        return logits


class Bytes:
    """A byte-level tokenizer with one special token, id 256."""

    special_tokens = ["<|endoftext|>"]

    def encode(self, text: str) -> list[int]:
        return [256] if text == "<|endoftext|>" else list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def test_generation_stops_after_the_stop_token_or_max_tokens():
    model = Scripted([5, 6, 256, 7, 8], vocab=257, prompt_length=2)
    assert list(generate_ids(model, [1, 2], 10, temperature=0, stop_id=256)) == [5, 6, 256]
    assert len(model.inputs) == 3  # no forward pass after the stop token
    assert list(generate_ids(Scripted([5, 6, 256, 7], 257, 2), [1, 2], 4, temperature=0)) == [5, 6, 256, 7]  # no stop_id
    assert list(generate_ids(Scripted([5, 6, 256], 257, 2), [1, 2], 2, temperature=0, stop_id=256)) == [5, 6]


def test_an_empty_prompt_starts_a_document_and_the_mode_is_restored():
    model = Scripted([9, 256], vocab=257, prompt_length=1)
    model.train()
    assert list(generate_ids(model, [], 5, temperature=0, stop_id=256)) == [9, 256]
    assert model.inputs[0] == [256] and model.training


def test_text_streams_whole_characters_and_hides_the_stop_token():
    text = "héllo 🙂 ok"
    prompt = "Say:"
    model = Scripted(list(text.encode("utf-8")) + [256, 65], vocab=257, prompt_length=len(prompt))
    tokenizer = Bytes()
    assert stop_token_id(tokenizer) == 256 and stop_token_id(tokenizer, None) is None
    pieces = list(generate(model, tokenizer, prompt, 50, temperature=0))
    assert "".join(pieces) == text
    assert all(piece and "\ufffd" not in piece for piece in pieces)
    assert len(pieces) < len(text.encode("utf-8"))  # the 2- and 4-byte characters came out whole


def test_cached_decoding_past_the_context_matches_full_recomputation(registry):
    from modulm.assemble import create

    torch.manual_seed(0)
    model = create(registry, "model", {"component": "transformer", "context_length": 8, "d_model": 16,
                                       "num_layers": 2, "num_heads": 2}, vocab_size=23)
    prompt = [3, 1, 4, 1, 5]
    for temperature, seed in ((0, None), (1.0, 11)):
        cached = list(generate_ids(model, prompt, 20, temperature=temperature, seed=seed, use_cache=True))
        full = list(generate_ids(model, prompt, 20, temperature=temperature, seed=seed, use_cache=False))
        assert len(cached) == 20 and cached == full
