"""Sampling text from a model: temperature, nucleus (top-p), a stop token and a KV cache.

:func:`sample_next` implements one decoding step as CS336 §6 defines it; :func:`generate_ids`
runs the loop (reusing the model's key/value cache when it offers ``new_kv_cache``, so each new
token costs one position of compute); :func:`generate` wraps it with a tokenizer and streams text.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch

from modulm.functional.attention import softmax


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Next-token ids ``(...)`` from logits ``(..., vocab)``.

    ``temperature == 0`` is greedy (argmax). Otherwise probabilities are ``softmax(logits / T)``;
    with ``top_p < 1`` only the smallest set of most likely tokens whose mass reaches ``top_p`` is
    kept and renormalised before sampling.
    """
    if not (math.isfinite(temperature) and temperature >= 0) or not 0 < top_p <= 1:
        raise ValueError(f"need a finite temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)  # the top token always stays
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    flat = probs.reshape(-1, probs.shape[-1])
    choice = torch.multinomial(flat / flat.sum(dim=-1, keepdim=True), 1, generator=generator)
    return choice.reshape(probs.shape[:-1])


@torch.no_grad()
def generate_ids(model: torch.nn.Module, prompt_ids: list[int], max_tokens: int, *, temperature: float = 1.0,
                 top_p: float = 1.0, stop_id: int | None = None, seed: int | None = None,
                 use_cache: bool = True) -> Iterator[int]:
    """Yield up to ``max_tokens`` new token ids after ``prompt_ids``, stopping after ``stop_id``.

    With a cache, decoding stops growing the cache at ``context_length`` and continues with a
    sliding window (full recomputation over the last ``context_length`` tokens).
    """
    device = next(model.parameters()).device
    context_length = getattr(model, "context_length", None)
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    ids = list(prompt_ids) or [stop_id if stop_id is not None else 0]  # an empty prompt starts a document
    cache = model.new_kv_cache(1) if use_cache and hasattr(model, "new_kv_cache") else None
    was_training = model.training
    model.eval()
    try:
        pending = list(ids)
        for _ in range(max_tokens):
            if cache is not None and cache.position + len(pending) <= (context_length or 1 << 62):
                logits = model(torch.tensor([pending], device=device), cache=cache)[0, -1]
            else:
                cache = None
                window = ids[-context_length:] if context_length else ids
                logits = model(torch.tensor([window], device=device))[0, -1]
            token = int(sample_next(logits, temperature, top_p, generator))
            ids.append(token)
            pending = [token]
            yield token
            if stop_id is not None and token == stop_id:
                return
    finally:
        model.train(was_training)


def stop_token_id(tokenizer: Any, stop: str | None = "<|endoftext|>") -> int | None:
    """The id of ``stop`` if the tokenizer has it as a special token."""
    if stop is None or stop not in getattr(tokenizer, "special_tokens", []):
        return None
    ids = tokenizer.encode(stop)
    return ids[0] if len(ids) == 1 else None


def generate(model: torch.nn.Module, tokenizer: Any, prompt: str, max_tokens: int = 256, *, temperature: float = 1.0,
             top_p: float = 1.0, seed: int | None = None, stop: str | None = "<|endoftext|>",
             use_cache: bool = True) -> Iterator[str]:
    """Stream the completion of ``prompt`` as text pieces (the stop token itself is not shown)."""
    stop_id = stop_token_id(tokenizer, stop)
    prompt_ids = tokenizer.encode(prompt) if prompt else []
    new: list[int] = []
    shown = ""
    for token in generate_ids(model, prompt_ids, max_tokens, temperature=temperature, top_p=top_p,
                              stop_id=stop_id, seed=seed, use_cache=use_cache):
        if token == stop_id:
            break
        new.append(token)
        text = tokenizer.decode(new)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next bytes
            continue
        yield text[len(shown):]
        shown = text
    text = tokenizer.decode(new)
    if len(text) > len(shown):
        yield text[len(shown):]
