"""Optimizer step, cross-entropy and gradient clipping against PyTorch's own, in the same run.

    flock /tmp/modulm-bench.lock python benchmarks/bench_optimizer.py [--repeats 15] [--device cpu] [--json out.json]

* AdamW: one ``step()`` over bench-small's parameter shapes (vocab 10,000, d_model 512, 4 layers,
  d_ff 1,344, SwiGLU, untied output; 22.7M parameters, built as plain tensors with random
  gradients), ``modulm_optim.AdamW`` against ``torch.optim.AdamW(foreach=True)``. Target: >= 1.0x.
  ``torch.optim.AdamW(fused=True)`` is shown too, for information, where this torch offers it.
* Muon: one ``step()`` of modulm's ``muon`` over the same parameters, for each ``ns_dtype``,
  against modulm's AdamW (information: how much of a step Muon's orthogonalisation costs).
* Cross-entropy: forward + backward over (2,048 x 10,000) logits (batch 8 x context 256), float32
  and bfloat16, against ``torch.nn.functional.cross_entropy``; and forward only (evaluation).
  Target: >= 1.0x.
* LM head + loss: forward + backward of ``linear_cross_entropy`` over bench-small's (2,048 x 512)
  hidden states and (10,000 x 512) head, against the unfused matmul + ``cross_entropy`` and against
  ``F.linear`` + ``F.cross_entropy``. Target: >= 1.0x (part of the ``loss`` section).
* Clipping: ``clip_gradients`` against ``torch.nn.utils.clip_grad_norm_(foreach=True)`` over the
  same gradients, with a limit that forces scaling (information).

Measurements of the two sides alternate (ours, theirs, ours, ...) after warm-up steps, so drift on a
shared machine hits both; each line reports medians and the ratio theirs / ours (> 1: we are faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import torch

VOCAB, CONTEXT, D_MODEL, LAYERS, D_FF, BATCH = 10_000, 256, 512, 4, 1_344, 8


def bench_small_shapes() -> list[tuple[int, ...]]:
    """Every parameter of the bench-small transformer: embedding, per layer 2 norms, q/k/v/o and
    SwiGLU's w1/w2/w3, the final norm and the output projection."""
    per_layer = [(D_MODEL,), (D_MODEL, D_MODEL), (D_MODEL, D_MODEL), (D_MODEL, D_MODEL), (D_MODEL, D_MODEL),
                 (D_MODEL,), (D_FF, D_MODEL), (D_MODEL, D_FF), (D_FF, D_MODEL)]
    return [(VOCAB, D_MODEL)] + per_layer * LAYERS + [(D_MODEL,), (VOCAB, D_MODEL)]


def parameters_with_grads(device: str) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    params = []
    for shape in bench_small_shapes():
        p = torch.nn.Parameter((torch.randn(shape, generator=g) * 0.02).to(device))
        p.grad = (torch.randn(shape, generator=g) * 1e-3).to(device)
        params.append(p)
    return params


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def alternate(ours: Callable[[], object], theirs: Callable[[], object], repeats: int, warmup: int, device: str):
    """Median seconds of ``ours`` and ``theirs``, timed alternately after ``warmup`` calls of each."""
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for i in range(warmup + repeats):
        for name, fn in (("ours", ours), ("theirs", theirs)):
            sync(device)
            started = time.perf_counter()
            fn()
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - started)
    return statistics.median(times["ours"]), statistics.median(times["theirs"])


def report(results: list[dict], name: str, ours: float, theirs: float, reference: str, target: float | None) -> None:
    ratio = theirs / ours
    verdict = "" if target is None else ("  meets target" if ratio >= target else "  BELOW TARGET")
    print(f"{name:<44} ours {ours * 1e3:8.2f} ms   {reference:<34} {theirs * 1e3:8.2f} ms   {ratio:5.2f}x{verdict}")
    results.append({"case": name, "ours_ms": ours * 1e3, "reference": reference, "reference_ms": theirs * 1e3,
                    "ratio": ratio, "target": target})


def bench_adamw(results: list[dict], device: str, repeats: int, warmup: int) -> None:
    from modulm_optim import AdamW

    settings = dict(lr=3e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    ours = AdamW(parameters_with_grads(device), **settings)
    foreach = torch.optim.AdamW(parameters_with_grads(device), foreach=True, **settings)
    mine, theirs = alternate(ours.step, foreach.step, repeats, warmup, device)
    report(results, "AdamW step, bench-small (22.7M params)", mine, theirs, "torch AdamW(foreach=True)", 1.0)
    try:
        fused = torch.optim.AdamW(parameters_with_grads(device), fused=True, **settings)
        fused.step()
    except (RuntimeError, ValueError):
        return
    ours = AdamW(parameters_with_grads(device), **settings)
    mine, theirs = alternate(ours.step, fused.step, repeats, warmup, device)
    report(results, "AdamW step, bench-small (22.7M params)", mine, theirs, "torch AdamW(fused=True) [info]", None)


def bench_cross_entropy(results: list[dict], device: str, repeats: int, warmup: int) -> None:
    import torch.nn.functional as F

    from modulm.functional.loss import cross_entropy

    g = torch.Generator().manual_seed(1)
    base = torch.randn(BATCH * CONTEXT, VOCAB, generator=g) * 2
    targets = torch.randint(0, VOCAB, (BATCH * CONTEXT,), generator=g).to(device)
    for dtype in (torch.float32, torch.bfloat16):
        logits = base.to(device=device, dtype=dtype).requires_grad_()

        # autograd.grad hands the logits' gradient back as the loss's backward made it, as a model's
        # output layer receives it (accumulating into a leaf's .grad would add a copy).
        def ours():
            return torch.autograd.grad(cross_entropy(logits, targets), logits)

        def theirs():
            return torch.autograd.grad(F.cross_entropy(logits, targets), logits)

        mine, ref = alternate(ours, theirs, repeats, warmup, device)
        label = str(dtype).replace("torch.", "")
        report(results, f"cross-entropy fwd+bwd 2048x10000 {label}", mine, ref, "F.cross_entropy", 1.0)
        with torch.no_grad():
            mine, ref = alternate(lambda: cross_entropy(logits, targets), lambda: F.cross_entropy(logits, targets),
                                  repeats, warmup, device)
        report(results, f"cross-entropy forward 2048x10000 {label}", mine, ref, "F.cross_entropy [info]", None)
    bench_head_and_loss(results, device, repeats, warmup, targets)


def bench_head_and_loss(results: list[dict], device: str, repeats: int, warmup: int, targets: torch.Tensor) -> None:
    """The LM head and the loss together (what a training step runs): ``linear_cross_entropy``
    against the two steps, modulm's matmul + ``cross_entropy`` and torch's ``F.linear`` +
    ``F.cross_entropy``; gradients of the hidden states and of the head's weight."""
    import torch.nn.functional as F

    from modulm.functional.loss import cross_entropy, linear_cross_entropy

    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(BATCH * CONTEXT, D_MODEL, generator=g).to(device).requires_grad_()
    weight = (torch.randn(VOCAB, D_MODEL, generator=g) * D_MODEL**-0.5).to(device).requires_grad_()
    leaves = (hidden, weight)

    def fused():
        return torch.autograd.grad(linear_cross_entropy(hidden, weight, targets), leaves)

    def two_steps():
        return torch.autograd.grad(cross_entropy(hidden @ weight.t(), targets), leaves)

    def torch_two_steps():
        return torch.autograd.grad(F.cross_entropy(F.linear(hidden, weight), targets), leaves)

    mine, ref = alternate(fused, two_steps, repeats, warmup, device)
    report(results, "head + loss fwd+bwd 2048x512x10000 float32", mine, ref, "matmul + cross_entropy", 1.0)
    mine, ref = alternate(fused, torch_two_steps, repeats, warmup, device)
    report(results, "head + loss fwd+bwd 2048x512x10000 float32", mine, ref, "F.linear + F.cross_entropy", 1.0)


def bench_clipping(results: list[dict], device: str, repeats: int, warmup: int) -> None:
    from modulm.functional.grad import clip_gradients

    ours, theirs = parameters_with_grads(device), parameters_with_grads(device)
    # A limit far below the norm so every call scales; rescale between calls so values stay sane.
    limit = 1e-9
    mine, ref = alternate(lambda: clip_gradients(ours, limit),
                          lambda: torch.nn.utils.clip_grad_norm_(theirs, limit, foreach=True),
                          repeats, warmup, device)
    report(results, "clip_gradients, bench-small grads", mine, ref, "clip_grad_norm_(foreach=True)", None)


def bench_muon(results: list[dict], device: str, repeats: int, warmup: int) -> None:
    """modulm's muon (torch.optim.Muon on the 24 hidden matrices, AdamW on the embedding, LM head and
    gains) against modulm's AdamW over the same bench-small parameters (information: Muon's
    Newton-Schulz iterations cost about 20 x rows^2 x cols FLOPs per matrix, AdamW's none)."""
    from modulm_optim import AdamW
    from modulm_optim.muon import muon

    names = ["token_embeddings.weight"] + [f"layers.{i}.{part}" for i in range(LAYERS)
                                           for part in ("ln1.weight", "attn.q", "attn.k", "attn.v", "attn.o",
                                                        "ln2.weight", "ffn.w1", "ffn.w2", "ffn.w3")]
    names += ["ln_final.weight", "lm_head.weight"]
    for ns_dtype in ("bfloat16", "auto", "float32"):  # torch.optim.Muon's iteration; modulm's batched loop
        ours_params, theirs_params = parameters_with_grads(device), parameters_with_grads(device)
        ours = muon(lr=0.02, adamw_lr=3e-4, ns_dtype=ns_dtype, params=list(zip(names, ours_params)))
        theirs = AdamW(theirs_params, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
        ours_s, theirs_s = alternate(ours.step, theirs.step, repeats, warmup, device)
        report(results, f"muon step (ns_dtype {ns_dtype}), bench-small", ours_s, theirs_s, "modulm AdamW step", None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per side (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per side first")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--only", choices=["adamw", "muon", "loss", "clip"], help="run one section")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"{args.repeats} repeats after {args.warmup} warm-up calls, medians")
    results: list[dict] = []
    sections = {"adamw": bench_adamw, "muon": bench_muon, "loss": bench_cross_entropy, "clip": bench_clipping}
    for name, section in sections.items():
        if args.only in (None, name):
            section(results, args.device, args.repeats, args.warmup)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "device": args.device, "results": results}, fh, indent=2)
    return 0 if all(r["target"] is None or r["ratio"] >= r["target"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
