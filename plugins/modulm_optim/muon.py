"""Muon for the hidden weight matrices, with an inner AdamW for every other parameter.

The matrix part is ``torch.optim.Muon`` itself (torch >= 2.9), so modulm's ``muon`` takes the same
update as torch on the same matrices and settings (``ns_dtype="float32"`` or ``"auto"`` runs the
same update through :mod:`.newton_schulz` instead: same-shaped matrices orthogonalised as one
batch, in float32, or for ``"auto"`` in bfloat16 where that is native). For each 2-D hidden matrix ``W`` (``A x B``) with
gradient ``G`` and momentum ``mu``::

    B  <- mu * B + (1 - mu) * G                      (torch keeps the buffer as an average)
    U  <- (1 - mu) * G + mu * B  if nesterov else B
    X  <- NS5(U)                                     (Newton-Schulz, in bfloat16 by default, see below)
    W  <- W - lr * weight_decay * W                  (decoupled weight decay)
    W  <- W - lr * scale(A, B) * X

``NS5`` normalises ``U`` by its Frobenius norm (transposed when ``A > B``) and runs ``ns_steps``
iterations of ``X <- a X + (b S + c S S) X`` with ``S = X Xᵀ`` and ``(a, b, c) = (3.4445, -4.7750,
2.0315)``: the singular values of the result lie roughly in [0.7, 1.2], its singular vectors are
``U``'s. The scale is ``adjust_lr_fn``: ``"original"`` is ``sqrt(max(1, A / B))`` (Keller Jordan's,
for Muon learning rates around 0.02); ``"match_rms_adamw"`` is ``0.2 * sqrt(max(A, B))``, which gives
the update AdamW's typical RMS so AdamW learning rates and weight decay carry over (Moonshot's).

The rest (embeddings, the LM head, norm gains: every parameter that is not 2-D, or whose name matches
``adamw_params``) is updated by modulm's AdamW with its own ``adamw_lr``. One optimizer holds both
as parameter groups (``group["muon"]`` tells which). The trainer sets ``group["lr"]`` of every group
to the schedule's value, which peaks at ``lr``; each group's ``lr_scale`` (1 for Muon groups,
``adamw_lr / lr`` or ``embedding_lr / lr`` for AdamW groups) multiplies it, so the schedule shapes both parts alike and their
ratio stays as the recipe set it.

Under DDP every rank holds the averaged gradients and orthogonalises every matrix itself: simple,
identical on every rank, and no extra communication (sharding the Newton-Schulz work with an
all-gather would be faster on many ranks; not done).
"""

from __future__ import annotations

import warnings
from fnmatch import fnmatchcase
from typing import Any, Callable, Iterable, Literal

import torch

from modulm.errors import ModulmError
from modulm.runtime import native_bf16

from .adamw import AdamW
from .closure import closure_loss
from .groups import named
from .newton_schulz import muon_update

#: Where the Newton-Schulz iteration runs: torch.optim.Muon's bfloat16 (the default, torch's update
#: exactly), or modulm's batched loop (:mod:`.newton_schulz`) in float32, or for auto in bfloat16
#: where the device has it natively and float32 elsewhere.
NS_DTYPES = ("bfloat16", "float32", "auto")

#: Names routed to AdamW even when 2-D: the token embedding and the LM head (their rows are per-token
#: vectors, not a hidden linear map; Muon's authors keep them on AdamW).
DEFAULT_ADAMW_PARAMS = ("token_embeddings.*", "lm_head.*")

#: Names whose AdamW learning rate is ``embedding_lr`` (when set) rather than ``adamw_lr``.
DEFAULT_EMBEDDING_PARAMS = ("token_embeddings.*",)


def is_hidden_matrix(name: str, tensor: torch.Tensor, adamw_params: Iterable[str] = DEFAULT_ADAMW_PARAMS) -> bool:
    """Whether ``muon`` updates this parameter with Muon: 2-D and not named by an ``adamw_params`` glob."""
    return tensor.ndim == 2 and not any(fnmatchcase(name, pattern) for pattern in adamw_params)


class Muon(torch.optim.Optimizer):
    """Muon on the groups marked ``muon=True`` (2-D parameters only), AdamW on the others.

    ``Muon(groups, lr=0.02, ...)``: ``groups`` are param-group dicts; each may set ``muon`` (default
    False), ``lr_scale`` (default 1) and any hyperparameter below. Muon groups read ``momentum,
    nesterov, ns_coefficients, ns_steps, eps, adjust_lr_fn, weight_decay``; AdamW groups read
    ``betas, adamw_eps, weight_decay``. The effective learning rate of a group is
    ``group["lr"] * group["lr_scale"]``. State per parameter is that of ``torch.optim.Muon``
    (``momentum_buffer``) or of modulm's ``AdamW`` (``step, exp_avg, exp_avg_sq``). ``ns_dtype``
    picks the iteration's dtype (see :data:`NS_DTYPES`); the state is the same for every choice.
    """

    def __init__(self, params: Iterable[dict[str, Any]], lr: float = 0.02, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
                 ns_steps: int = 5, eps: float = 1e-7, adjust_lr_fn: str = "original", weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), adamw_eps: float = 1e-8,
                 ns_dtype: str = "bfloat16") -> None:
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"Muon: ns_dtype must be one of {NS_DTYPES}, got {ns_dtype!r}")
        self.ns_dtype = ns_dtype
        defaults = {"lr": lr, "lr_scale": 1.0, "muon": False, "momentum": momentum, "nesterov": nesterov,
                    "ns_coefficients": tuple(ns_coefficients), "ns_steps": ns_steps, "eps": eps,
                    "adjust_lr_fn": adjust_lr_fn, "weight_decay": weight_decay, "betas": tuple(betas),
                    "adamw_eps": adamw_eps}
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["muon"] and any(p.ndim != 2 for p in group["params"]):
                raise ValueError("Muon: a muon=True group holds a parameter that is not 2-D")
        # Inner optimizers do the arithmetic; they get fresh views of our groups and our state at
        # each step, so our state_dict alone is the whole state and schedules act on our groups.
        # torch's Muon only where its own bfloat16 iteration runs; the other choices never call it
        self._matrix = (self._inner(True, lambda groups: torch.optim.Muon(groups, lr=lr))
                        if ns_dtype == "bfloat16" else None)
        self._native_bf16: dict[torch.device, bool] = {}
        self._other = self._inner(False, lambda groups: AdamW(groups, lr=lr))

    def _inner(self, muon: bool, build: Callable[[list], torch.optim.Optimizer]) -> torch.optim.Optimizer | None:
        groups = [{"params": list(g["params"])} for g in self.param_groups if g["muon"] == muon and g["params"]]
        return build(groups) if groups else None

    def _views(self, muon: bool) -> list[dict[str, Any]]:
        views = []
        for group in self.param_groups:
            if group["muon"] != muon:
                continue
            view = {**group, "lr": group["lr"] * group["lr_scale"]}
            if not muon:
                view["eps"] = group["adamw_eps"]
            views.append(view)
        return views

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient; returns ``closure()``'s loss."""
        loss = closure_loss(closure)
        if self.ns_dtype != "bfloat16":  # modulm's batched loop
            for view in self._views(True):
                muon_update(view, self.state, self._iteration_dtype(view["params"]))
        for inner, muon in ((self._matrix, True), (self._other, False)):
            views = self._views(muon)
            if inner is not None and views:
                inner.param_groups = views
                inner.state = self.state
                inner.step()
        return loss

    def _iteration_dtype(self, params: list[torch.Tensor]) -> torch.dtype:
        """The dtype of modulm's own iteration: float32, or for "auto" bfloat16 where it is native."""
        if self.ns_dtype != "auto" or not params:
            return torch.float32
        device = params[0].device
        if device not in self._native_bf16:
            self._native_bf16[device] = native_bf16(device)[0]
        return torch.bfloat16 if self._native_bf16[device] else torch.float32


def _check(lr: float, adamw_lr: float, momentum: float, beta1: float, beta2: float, eps: float,
           weight_decay: float, adamw_weight_decay: float, ns_steps: int) -> list[str]:
    problems = []
    for name, value in (("lr", lr), ("adamw_lr", adamw_lr), ("eps", eps), ("weight_decay", weight_decay),
                        ("adamw_weight_decay", adamw_weight_decay)):
        if not value >= 0:
            problems.append(f"{name} must be >= 0, got {value}")
    for name, value in (("momentum", momentum), ("beta1", beta1), ("beta2", beta2)):
        if not 0 <= value < 1:
            problems.append(f"{name} must be in [0, 1), got {value}")
    if not 1 <= ns_steps < 100:
        problems.append(f"ns_steps must be in [1, 100), got {ns_steps}")
    return problems


def muon(
    lr: float = 0.02,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = 5,
    adjust_lr_fn: Literal["original", "match_rms_adamw"] = "original",
    weight_decay: float = 0.1,
    adamw_lr: float = 3e-3,
    beta1: float = 0.9,
    beta2: float = 0.95,
    eps: float = 1e-8,
    adamw_weight_decay: float | None = None,
    adamw_params: list[str] = list(DEFAULT_ADAMW_PARAMS),  # noqa: B006 (never mutated)
    no_decay: list[str] = (),
    embedding_lr: float | None = None,
    embedding_params: list[str] = list(DEFAULT_EMBEDDING_PARAMS),  # noqa: B006 (never mutated)
    ns_dtype: Literal["bfloat16", "float32", "auto"] = "bfloat16",
    *,
    params: Iterable[Any],
) -> Muon:
    """Muon (torch.optim.Muon) for 2-D hidden matrices, AdamW for the embedding, LM head and gains.

    lr: Muon's peak learning rate (the schedule scales it each step, and AdamW's in proportion)
    momentum: Muon's momentum (the buffer is an average: mu * B + (1 - mu) * G)
    nesterov: use the Nesterov look-ahead (1 - mu) * G + mu * B as the update direction
    ns_steps: Newton-Schulz iterations orthogonalising each update
    adjust_lr_fn: update scale per A x B matrix: "original" sqrt(max(1, A/B)) or "match_rms_adamw" 0.2 sqrt(max(A, B))
    weight_decay: decoupled decay of the Muon matrices: each step W -= lr * weight_decay * W
    adamw_lr: AdamW's peak learning rate, for every parameter Muon does not take
    beta1: AdamW's first-moment decay
    beta2: AdamW's second-moment decay
    eps: added to sqrt(v) in AdamW's denominator
    adamw_weight_decay: AdamW's decoupled weight decay; None -> weight_decay
    adamw_params: glob patterns of 2-D parameter names that go to AdamW too (non-2-D ones always do)
    no_decay: glob patterns of parameter names exempt from weight decay (either part)
    embedding_lr: AdamW's peak learning rate for the embedding_params (nanochat's split); None -> adamw_lr
    embedding_params: glob patterns of the AdamW parameters that take embedding_lr
    ns_dtype: Newton-Schulz dtype: "bfloat16" (torch.optim.Muon's), "float32", or "auto" (bfloat16 only where native)
    """
    adamw_weight_decay = weight_decay if adamw_weight_decay is None else adamw_weight_decay
    problems = _check(lr, adamw_lr, momentum, beta1, beta2, eps, weight_decay, adamw_weight_decay, ns_steps)
    if embedding_lr is not None and not embedding_lr >= 0:
        problems.append(f"embedding_lr must be >= 0, got {embedding_lr}")
    if problems:
        raise ModulmError("optimizer muon: " + "; ".join(problems))
    for option, patterns in (("adamw_params", adamw_params), ("no_decay", no_decay),
                             ("embedding_params", embedding_params)):
        if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
            raise ModulmError(f"optimizer muon: {option} must be a list of glob patterns (strings), got {patterns!r}")
    pairs = named(params)
    if not pairs:
        raise ModulmError("optimizer muon: the model has no parameters to optimize")
    groups: dict[tuple[bool, bool, bool], dict[str, Any]] = {}
    for name, tensor in pairs:
        matrix = is_hidden_matrix(name, tensor, adamw_params)
        exempt = any(fnmatchcase(name, pattern) for pattern in no_decay)
        # Unset: no group of their own, so the groups (and checkpoints) stay as they were before the option.
        embedding = (embedding_lr is not None and not matrix
                     and any(fnmatchcase(name, pattern) for pattern in embedding_params))
        part_lr = lr if matrix else (embedding_lr if embedding else adamw_lr)
        group = groups.setdefault((matrix, not embedding, exempt), {
            "params": [], "muon": matrix, "lr_scale": part_lr / lr if lr else 0.0,
            "weight_decay": 0.0 if exempt else (weight_decay if matrix else adamw_weight_decay)})
        group["params"].append(tensor)
    if embedding_lr is not None and not any(not key[1] for key in groups):
        warnings.warn(f"optimizer muon: embedding_lr is set but no AdamW parameter matches embedding_params "
                      f"{list(embedding_params)}; it has no effect", stacklevel=2)
    return Muon([groups[key] for key in sorted(groups, reverse=True)], lr=lr, momentum=momentum, nesterov=nesterov,
                ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn, weight_decay=weight_decay, betas=(beta1, beta2),
                adamw_eps=eps, ns_dtype=ns_dtype)
