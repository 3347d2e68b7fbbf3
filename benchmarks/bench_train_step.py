"""Training-step throughput of modulm's transformer against a plain-PyTorch reference, same run.

One step = forward, cross-entropy, backward, AdamW step, zero_grad. The reference is written here
with torch's own modules (nn.Linear, nn.Embedding, nn.RMSNorm, F.scaled_dot_product_attention,
F.silu, F.cross_entropy, torch.optim.AdamW(foreach=True)) and the same shapes and weights. modulm's
side uses modulm's AdamW and its loss as the trainer computes it: ``model(ids, targets=...)``, the
LM head fused with modulm's cross-entropy (torch's AdamW and F.cross_entropy, with a notice, where
modulm's are missing).

Also measured: this machine's fp32 and bf16 matmul ceilings (large square matmuls); each run's
model FLOP utilisation is the training FLOPs of a step (3x the forward FLOPs of
``modulm_transformer.accounting``, i.e. 6 x matmul params x tokens + attention scores) over the
step time and the ceiling of the dtype the matmuls ran in. Tokens are the bytes of Tiny
Shakespeare, so the loss falls and the bf16 loss curve can be compared with fp32's.

    flock /tmp/modulm-bench.lock python benchmarks/bench_train_step.py [--configs small,tiny]
        [--steps 10] [--warmup 3] [--no-compile] [--variants ref,fp32,bf16,compile] [--keep-freed-memory]

On a GPU (``--device cuda``) steps are timed between device synchronisations, the reference also
runs in bf16 (``ref-bf16``) and bf16 + torch.compile (``ref-bf16-compile``, with torch's fused AdamW),
``bf16-compile`` is modulm's bf16 + torch.compile, and ``--peak-tflops 989`` reports MFU against the
GPU's dense bf16 peak instead of the measured matmul ceiling (H100/H200 SXM: 989). Config ``gpt2``
is GPT-2-small-sized: vocab 50257, context 1024, d_model 768, 12 layers, 12 heads, d_ff 2048
(SwiGLU at GPT-2's MLP parameter count), batch 16.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import lzma
import math
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from modulm.functional.cpu_matmul import onednn_available, set_cpu_matmul
from modulm.functional.linear import onednn_product
from modulm.kinds import takes_targets
from modulm_transformer import TransformerLM
from modulm_transformer.accounting import model_accounting

DATA = Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare" / "tinyshakespeare.txt.xz"
LR, BETAS, WEIGHT_DECAY = 1e-3, (0.9, 0.95), 0.1


@dataclass(frozen=True)
class Config:
    name: str
    vocab_size: int
    context_length: int
    d_model: int
    num_layers: int
    num_heads: int
    d_ff: int
    batch_size: int


CONFIGS = {
    "small": Config("bench-small", 10000, 256, 512, 4, 16, 1344, 8),
    "tiny": Config("bench-tiny", 2048, 128, 128, 2, 4, 344, 16),
    "gpt2": Config("gpt2-small", 50257, 1024, 768, 12, 12, 2048, 16),
}
#: variant -> (model, autocast bf16, torch.compile)
VARIANTS = {"ref": ("ref", False, False), "ref-bf16": ("ref", True, False), "ref-bf16-compile": ("ref", True, True),
            "fp32": ("modulm", False, False), "bf16": ("modulm", True, False), "compile": ("modulm", False, True),
            "bf16-compile": ("modulm", True, True)}


# -- the plain-PyTorch reference ----------------------------------------------------------------
class RefAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, context_length: int, theta: float = 10000.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj, self.output_proj = (
            nn.Linear(d_model, d_model, bias=False) for _ in range(4))
        head_dim = d_model // num_heads
        angles = torch.outer(torch.arange(context_length).float(), theta ** (-torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def rope(self, x: torch.Tensor) -> torch.Tensor:
        cos, sin = self.cos[: x.shape[-2]], self.sin[: x.shape[-2]]
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (p(x).view(b, t, self.num_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(self.rope(q), self.rope(k), v, is_causal=True)
        return self.output_proj(out.transpose(1, 2).reshape(b, t, d))


class RefSwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d_model, bias=False)
        self.w3 = nn.Linear(d_model, d_ff, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class RefBlock(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.attn = RefAttention(cfg.d_model, cfg.num_heads, cfg.context_length)
        self.ffn = RefSwiGLU(cfg.d_model, cfg.d_ff)
        self.ln1 = nn.RMSNorm(cfg.d_model, eps=1e-5)
        self.ln2 = nn.RMSNorm(cfg.d_model, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class RefLM(nn.Module):
    """Same layout (and state-dict keys) as modulm's default TransformerLM."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.token_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(RefBlock(cfg) for _ in range(cfg.num_layers))
        self.ln_final = nn.RMSNorm(cfg.d_model, eps=1e-5)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embeddings(token_ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.ln_final(x))


# -- modulm's loss and optimizer, when they exist ----------------------------------------------------
@functools.lru_cache(maxsize=None)
def modulm_loss_and_optimizer():
    try:
        from modulm.functional.loss import cross_entropy
    except ImportError:
        print("notice: modulm.functional.loss.cross_entropy not found; modulm runs use F.cross_entropy")
        cross_entropy = reference_loss
    try:
        from modulm_optim.adamw import AdamW

        def make_optimizer(model):
            return AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    except ImportError:
        print("notice: modulm_optim.adamw.AdamW not found; modulm runs use torch.optim.AdamW(foreach=True)")
        make_optimizer = reference_optimizer
    return cross_entropy, make_optimizer


def reference_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten())


def reference_optimizer(model):
    fused = next(model.parameters()).is_cuda  # torch's fastest AdamW where it has one
    return torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY,
                             foreach=not fused, fused=fused or None)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory in the process: no mmap for big blocks, no trimming.

    By default every tensor above glibc's mmap threshold (at most 32 MiB, e.g. the logits) and
    every block freed at the top of a heap beyond the trim threshold goes back to the kernel, so
    the next allocation page-faults fresh zeroed pages: on a VM that costs more than the
    element-wise op that asked for them. Returns False where glibc's ``mallopt`` is unavailable.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


# -- measurements -------------------------------------------------------------------------------
class MatmulCeiling:
    """This machine's matmul FLOP/s in one dtype: an n x n x n product, sampled between training
    steps so that it sees the same load from other processes as the steps do. On the CPU a float32
    sample is the faster of torch's BLAS and oneDNN (``modulm.functional.linear``: the library
    modulm's products may use), so MFU is against what this machine's fastest kernels reach."""

    def __init__(self, dtype: torch.dtype, device: torch.device = torch.device("cpu")) -> None:
        self.n = n = 8192 if device.type == "cuda" else 2048
        self.device = device
        self.a, self.b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
        self.products = [lambda: torch.mm(self.a, self.b)]
        if device.type == "cpu" and dtype == torch.float32 and onednn_available():
            self.products.append(lambda: onednn_product(self.a, self.b))
        for product in self.products:
            product()
        self.samples: list[float] = []

    def sample(self) -> None:
        best = 0.0
        for product in self.products:
            synchronize(self.device)
            start = time.perf_counter()
            product()
            synchronize(self.device)
            best = max(best, 2 * self.n**3 / (time.perf_counter() - start))
        self.samples.append(best)

    @property
    def flops(self) -> float:
        return statistics.median(self.samples)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batches(cfg: Config, count: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` (inputs, targets) batches of byte tokens from Tiny Shakespeare (random if absent)."""
    gen = torch.Generator().manual_seed(seed)
    if DATA.exists():
        with lzma.open(DATA, "rb") as f:
            data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8).long()
    else:
        data = torch.randint(0, min(256, cfg.vocab_size), (1 << 20,), generator=gen)
    out = []
    for _ in range(count):
        starts = torch.randint(0, len(data) - cfg.context_length - 1, (cfg.batch_size,), generator=gen)
        window = torch.stack([data[s : s + cfg.context_length + 1] for s in starts.tolist()])
        out.append((window[:, :-1].contiguous(), window[:, 1:].contiguous()))
    return out


class Runner:
    """One training set-up; ``step`` runs forward, loss, backward, optimizer step and zero_grad."""

    def __init__(self, model, loss_fn, optimizer, autocast: bool, device: torch.device = torch.device("cpu"),
                 loss_in_forward: bool = False) -> None:
        self.model, self.loss_fn, self.optimizer, self.autocast = model, loss_fn, optimizer, autocast
        self.loss_in_forward = loss_in_forward  # forward(ids, targets=...), as the trainer calls modulm's model
        self.device = device
        self.times: list[float] = []
        self.losses: list[float] = []

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        synchronize(self.device)
        start = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            if self.loss_in_forward:
                loss = self.model(inputs, targets=targets)
            else:
                loss = self.loss_fn(self.model(inputs), targets)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)
        self.times.append(time.perf_counter() - start)
        self.losses.append(loss.item())


def make_runner(variant: str, cfg: Config, state: dict, device: torch.device = torch.device("cpu")) -> Runner:
    kind, bf16, compiled = VARIANTS[variant]
    if kind == "ref":
        model = RefLM(cfg)
        loss_fn, make_optimizer = reference_loss, reference_optimizer
    else:
        loss_fn, make_optimizer = modulm_loss_and_optimizer()
        model = TransformerLM(cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.d_ff)
    model.load_state_dict(state)
    model.to(device)
    optimizer = make_optimizer(model)
    loss_in_forward = kind != "ref" and takes_targets(model)
    if compiled:
        model = torch.compile(model)
    return Runner(model, loss_fn, optimizer, autocast=bf16, device=device, loss_in_forward=loss_in_forward)


def run_config(cfg: Config, variants: list[str], steps: int, warmup: int, device: torch.device = torch.device("cpu"),
               peak: float | None = None) -> list[dict]:
    """Runs the variants' steps interleaved (step i of each, then step i + 1), so that load from
    other processes on a shared machine hits every variant alike; reports medians. ``peak``
    (FLOP/s) replaces the measured matmul ceiling in the MFU."""
    data = [(x.to(device), y.to(device)) for x, y in batches(cfg, warmup + steps)]
    if device.type == "cpu":  # before any compiled variant traces its products, as modulm run does
        set_cpu_matmul("auto")
    torch.manual_seed(0)
    initial = TransformerLM(cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.d_ff)
    state = {k: v.clone() for k, v in initial.state_dict().items()}
    flops_per_step = model_accounting(initial, cfg.batch_size, cfg.context_length)["flops"]["train_per_step"]
    tokens = cfg.batch_size * cfg.context_length
    runners = {variant: make_runner(variant, cfg, state, device) for variant in variants}
    ceilings = {"fp32": MatmulCeiling(torch.float32, device), "bf16": MatmulCeiling(torch.bfloat16, device)}
    for i, (inputs, targets) in enumerate(data):
        for ceiling in ceilings.values():
            ceiling.sample()
        order = list(runners.items())
        for variant, runner in order[i % len(order):] + order[: i % len(order)]:  # rotate who goes first
            runner.step(inputs, targets)
        print(f"  {cfg.name} step {i + 1}/{len(data)}: " + ", ".join(
            f"{v} {1e3 * r.times[-1]:.0f} ms" for v, r in runners.items()), flush=True)
    rows = []
    for variant, runner in runners.items():
        seconds = statistics.median(runner.times[warmup:])
        ceiling = peak or ceilings["bf16" if VARIANTS[variant][1] else "fp32"].flops
        rows.append({
            "config": cfg.name, "variant": variant, "step_ms": 1e3 * seconds, "tokens_per_s": tokens / seconds,
            "mfu": flops_per_step / seconds / ceiling, "first_step_s": runner.times[0], "losses": runner.losses,
            "ceiling": ceiling,
        })
    return rows


def report(rows: list[dict]) -> None:
    names = {"ref": "reference fp32", "ref-bf16": "reference bf16", "ref-bf16-compile": "reference bf16 compile",
             "fp32": "modulm fp32", "bf16": "modulm bf16 autocast", "compile": "modulm fp32 compile",
             "bf16-compile": "modulm bf16 compile"}
    print(f"\n{'config':<12}{'run':<24}{'ms/step':>9}{'tokens/s':>10}{'x ref':>7}{'x same':>7}{'x fp32':>8}{'MFU':>6}"
          f"{'loss 0':>8}{'loss N':>8}{'max|dloss| vs fp32':>20}")
    print("(x ref: against reference fp32; x same: against the reference with the same precision and compile)")
    for config in dict.fromkeys(r["config"] for r in rows):
        group = {r["variant"]: r for r in rows if r["config"] == config}
        for variant, r in group.items():
            ref, fp32 = group.get("ref"), group.get("fp32")
            same = next((group[v] for v, flags in VARIANTS.items()
                         if flags == ("ref", *VARIANTS[variant][1:]) and v in group), None)
            x_ref = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}" if ref else "-"
            x_same = f"{r['tokens_per_s'] / same['tokens_per_s']:.2f}" if same else "-"
            x_fp32 = f"{r['tokens_per_s'] / fp32['tokens_per_s']:.2f}" if fp32 else "-"
            diff = max(abs(a - b) for a, b in zip(r["losses"], fp32["losses"])) if fp32 else math.nan
            print(f"{config:<12}{names[variant]:<24}{r['step_ms']:>9.1f}{r['tokens_per_s']:>10.0f}{x_ref:>7}{x_same:>7}{x_fp32:>8}"
                  f"{100 * r['mfu']:>5.0f}%{r['losses'][0]:>8.3f}{r['losses'][-1]:>8.3f}{diff:>20.4f}")
    for config in dict.fromkeys(r["config"] for r in rows):
        group = {r["variant"]: r for r in rows if r["config"] == config}
        fp32 = next((r["ceiling"] for v, r in group.items() if not VARIANTS[v][1]), None)
        bf16 = next((r["ceiling"] for v, r in group.items() if VARIANTS[v][1]), None)
        print(f"{config}: MFU against " + ", ".join(f"{name} {value / 1e9:,.0f} GFLOP/s" for name, value in
                                                   (("fp32", fp32), ("bf16", bf16)) if value))
    compiled = [r for r in rows if VARIANTS[r["variant"]][2]]
    if compiled:
        print("first compiled step (compilation): " + ", ".join(
            f"{r['config']} {r['variant']} {r['first_step_s']:.1f} s" for r in compiled))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="small,tiny", help="comma-separated: " + ", ".join(CONFIGS))
    parser.add_argument("--variants", default="ref,fp32,bf16,compile", help="comma-separated: " + ", ".join(VARIANTS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--peak-tflops", type=float, help="MFU against this dense peak (TFLOP/s) instead of the measured ceiling")
    parser.add_argument("--batch-size", type=int, help="override every config's batch size")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile run")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="tune glibc malloc to keep freed memory (no mmap, no trim) for every run")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps per run (not timed)")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if not (args.no_compile and VARIANTS[v][2])]
    device = torch.device(args.device)
    if device.type == "cuda":
        from modulm.runtime import set_tf32
        set_tf32(True)  # the fp32 runs use TF32, as modulm's system.tf32 default does

    tuned = args.keep_freed_memory and keep_freed_memory()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, {args.device} ({where}), {torch.get_num_threads()} threads, "
          f"malloc: {'keeps freed memory (mallopt)' if tuned else 'glibc defaults'}")
    rows = []
    for key in args.configs.split(","):
        cfg = CONFIGS[key] if args.batch_size is None else replace(CONFIGS[key], batch_size=args.batch_size)
        rows += run_config(cfg, variants, args.steps, args.warmup, device,
                           args.peak_tflops * 1e12 if args.peak_tflops else None)
    report(rows)


if __name__ == "__main__":
    main()
