"""The muon optimizer: torch.optim.Muon on the hidden matrices, modulm's AdamW on the rest."""

from __future__ import annotations

import collections
import copy as copy_module

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modulm.assemble import assemble, create
from modulm.errors import ModulmError
from modulm.testing import check_optimizer, check_orthogonalising_optimizer
from modulm.testing.optim_checks import conditioned_matrix
from modulm.trainer import Trainer
from modulm_optim import AdamW
from modulm_optim.muon import is_hidden_matrix, muon
from tests.test_trainer import tiny_recipe

SHAPES = {"layers.0.attn.q_proj.weight": (16, 8), "layers.0.ffn.w2.weight": (8, 24), "layers.0.ln1.weight": (8,),
          "token_embeddings.weight": (30, 8), "lm_head.weight": (30, 8)}


def named_params(seed: int = 0) -> list[tuple[str, torch.nn.Parameter]]:
    g = torch.Generator().manual_seed(seed)
    return [(name, torch.nn.Parameter(torch.randn(shape, generator=g))) for name, shape in SHAPES.items()]


def clone(params):
    return [(name, torch.nn.Parameter(p.detach().clone())) for name, p in params]


def run_steps(optimizers_and_params, steps: int, lrs, seed: int = 1) -> None:
    """Give every copy the same random gradients and the same per-step lr (as the trainer sets it)."""
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        grads = [torch.randn(p.shape, generator=g) for p in optimizers_and_params[0][1]]
        for optimizer, params in optimizers_and_params:
            for p, grad in zip(params, grads):
                p.grad = grad.clone()
            for group in optimizer.param_groups:
                group["lr"] = lrs[step]
            optimizer.step()


@pytest.mark.parametrize("settings", [
    {},
    {"adjust_lr_fn": "match_rms_adamw", "lr": 3e-3, "weight_decay": 0.1},
    {"nesterov": False, "momentum": 0.9, "weight_decay": 0.05},
    {"ns_steps": 3, "lr": 0.05},
])
def test_matrix_part_matches_torch_muon_within_1e_6(registry, settings):
    ours_params = named_params()
    matrices = [p for name, p in clone(ours_params) if is_hidden_matrix(name, p)]
    ours = create(registry, "optimizer", {"component": "muon", **settings}, params=ours_params)
    torch_settings = {k: v for k, v in settings.items() if k != "lr"}
    lr = settings.get("lr", 0.02)
    theirs = torch.optim.Muon(matrices, lr=lr, weight_decay=torch_settings.pop("weight_decay", 0.1), **torch_settings)
    ours_matrices = [p for name, p in ours_params if is_hidden_matrix(name, p)]
    lrs = [lr * (1 - step / 8) for step in range(6)]  # a schedule changes group["lr"] every step
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        for (_, p) in ours_params:
            p.grad = torch.randn(p.shape, generator=g)
        for p, q in zip(ours_matrices, matrices):
            q.grad = p.grad.clone()
        for optimizer in (ours, theirs):
            for group in optimizer.param_groups:
                group["lr"] = lrs[step]
            optimizer.step()
    assert len(matrices) == 2
    for p, q in zip(ours_matrices, matrices):
        assert (p - q).abs().max() <= 1e-6


def test_other_parameters_follow_adamw_at_adamw_lr_through_the_schedule(registry):
    ours_params = named_params()
    others = [(name, p) for name, p in clone(ours_params) if not is_hidden_matrix(name, p)]
    ours = create(registry, "optimizer", {"component": "muon", "lr": 0.02, "adamw_lr": 4e-3, "beta2": 0.99,
                                          "weight_decay": 0.1, "adamw_weight_decay": 0.01}, params=ours_params)
    reference = AdamW([p for _, p in others], lr=4e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
    schedule = [0.02 * f for f in (0.1, 0.5, 1.0, 0.7, 0.3)]
    g = torch.Generator().manual_seed(3)
    for lr in schedule:
        for _, p in ours_params:
            p.grad = torch.randn(p.shape, generator=g)
        for (name, p), (_, q) in zip([(n, p) for n, p in ours_params if not is_hidden_matrix(n, p)], others):
            q.grad = p.grad.clone()
        for group in ours.param_groups:
            group["lr"] = lr
        for group in reference.param_groups:
            group["lr"] = lr * 4e-3 / 0.02  # the same schedule, scaled to AdamW's own peak
        ours.step(), reference.step()
    for (name, p), (_, q) in zip([(n, p) for n, p in ours_params if not is_hidden_matrix(n, p)], others):
        assert torch.equal(p, q), name


def test_split_by_name_and_shape_and_the_override(registry):
    params = named_params()
    optimizer = create(registry, "optimizer", {"component": "muon"}, params=params)
    names = {id(p): name for name, p in params}
    muon = {names[id(p)] for group in optimizer.param_groups if group["muon"] for p in group["params"]}
    assert muon == {"layers.0.attn.q_proj.weight", "layers.0.ffn.w2.weight"}
    params = named_params()
    optimizer = create(registry, "optimizer", {"component": "muon", "adamw_params": ["*.ffn.*"]}, params=params)
    names = {id(p): name for name, p in params}
    muon = {names[id(p)] for group in optimizer.param_groups if group["muon"] for p in group["params"]}
    assert muon == {"layers.0.attn.q_proj.weight", "token_embeddings.weight", "lm_head.weight"}


def test_embedding_lr_moves_the_embedding_at_its_own_rate_and_unset_keeps_the_groups(registry):
    params = named_params()
    emb = [(n, p) for n, p in clone(params) if n == "token_embeddings.weight"]
    ours = create(registry, "optimizer", {"component": "muon", "lr": 0.02, "adamw_lr": 4e-3, "embedding_lr": 0.1},
                  params=params)
    reference = AdamW([p for _, p in emb], lr=0.1, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    g = torch.Generator().manual_seed(5)
    for lr in (0.002, 0.02, 0.01):
        for _, p in params:
            p.grad = torch.randn(p.shape, generator=g)
        emb[0][1].grad = dict(params)["token_embeddings.weight"].grad.clone()
        for group in ours.param_groups:
            group["lr"] = lr
        reference.param_groups[0]["lr"] = lr * 0.1 / 0.02
        ours.step(), reference.step()
    assert torch.allclose(dict(params)["token_embeddings.weight"], emb[0][1], rtol=0, atol=1e-7)
    scales = {round(group["lr_scale"], 6) for group in ours.param_groups}
    assert scales == {1.0, 0.2, 5.0}  # Muon, the head and gains at adamw_lr, the embedding at embedding_lr
    default = create(registry, "optimizer", {"component": "muon"}, params=named_params())
    assert len(default.param_groups) == 2  # unset: the embedding shares the AdamW group, as before
    with pytest.warns(UserWarning, match="no AdamW parameter matches embedding_params"):
        create(registry, "optimizer", {"component": "muon", "embedding_lr": 0.1, "embedding_params": ["wte.*"]},
               params=named_params())


def test_no_decay_patterns_exempt_either_part(registry):
    params = named_params()
    optimizer = create(registry, "optimizer", {"component": "muon", "no_decay": ["*ffn*", "*ln1*"]}, params=params)
    names = {id(p): name for name, p in params}
    decay = {names[id(p)]: group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert decay["layers.0.ffn.w2.weight"] == 0.0 and decay["layers.0.ln1.weight"] == 0.0
    assert decay["layers.0.attn.q_proj.weight"] == 0.1 and decay["lm_head.weight"] == 0.1


def test_passes_the_optimizer_and_orthogonalisation_checks():
    check_optimizer("muon")
    check_optimizer("muon", lr=None)
    check_orthogonalising_optimizer("muon")
    check_orthogonalising_optimizer("muon", {"adjust_lr_fn": "match_rms_adamw", "nesterov": False})


@given(st.integers(2, 48), st.integers(2, 48), st.floats(1.0, 100.0), st.integers(0, 2**16))
def test_orthogonalised_update_has_singular_values_near_one(rows, cols, condition, seed):
    """One step from zero state and a zero matrix: the step is lr * scale * NS5(G), whose singular
    values all lie in a narrow band around 1 for a full-rank G (condition number <= 100)."""
    weight = torch.nn.Parameter(torch.zeros(rows, cols))
    optimizer = muon(lr=1.0, weight_decay=0.0, adjust_lr_fn="original", params=[("layers.0.w", weight)])
    weight.grad = conditioned_matrix(seed, rows, cols, condition)
    optimizer.step()
    scale = max(1.0, rows / cols) ** 0.5
    singular = torch.linalg.svdvals(weight.detach().double()) / scale
    assert singular.min() >= 0.6 and singular.max() <= 1.25, (rows, cols, singular.min(), singular.max())


SCHEDULE = [0.02, 0.015, 0.01, 0.005]


@pytest.mark.parametrize("stack_limit", [1 << 18, 0])  # same-shaped matrices stacked, and one by one
@pytest.mark.parametrize("settings", [{}, {"nesterov": False, "adjust_lr_fn": "match_rms_adamw", "weight_decay": 0.05}])
def test_modulms_own_loop_run_in_bfloat16_is_torch_muons_update(settings, stack_limit, monkeypatch):
    from modulm_optim import newton_schulz
    from modulm_optim.newton_schulz import muon_update

    monkeypatch.setattr(newton_schulz, "STACK_LIMIT", stack_limit)

    g = torch.Generator().manual_seed(0)  # repeated shapes, so the loop orthogonalises stacks
    matrices = [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in [(16, 8)] * 3 + [(8, 24)] * 2]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in matrices]
    torch_optimizer = torch.optim.Muon(matrices, lr=0.02, weight_decay=settings.get("weight_decay", 0.1),
                                       **{k: v for k, v in settings.items() if k != "weight_decay"})
    group = {**torch_optimizer.defaults, "params": ours, "adjust_lr_fn": settings.get("adjust_lr_fn", "original")}
    state = collections.defaultdict(dict)
    g = torch.Generator().manual_seed(2)
    for lr in SCHEDULE:
        for p, q in zip(ours, matrices):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        torch_optimizer.param_groups[0]["lr"] = group["lr"] = lr
        torch_optimizer.step()
        muon_update(group, state, torch.bfloat16)
    for p, q in zip(ours, matrices):
        assert (p - q).abs().max() <= 1e-6
        assert torch.equal(state[p]["momentum_buffer"], torch_optimizer.state[q]["momentum_buffer"])


def test_ns_dtype_float32_differs_from_torch_by_rounding_only_and_keeps_the_state_layout(registry):
    base = named_params()
    runs = {}
    for dtype in ("bfloat16", "float32"):
        params = clone(base)
        optimizer = create(registry, "optimizer", {"component": "muon", "ns_dtype": dtype}, params=params)
        run_steps([(optimizer, [p for _, p in params])], 4, SCHEDULE)
        runs[dtype] = (dict(params), optimizer)
    for name, p in base:
        if is_hidden_matrix(name, p):
            moved = (runs["bfloat16"][0][name] - p).abs().max()
            gap = (runs["float32"][0][name] - runs["bfloat16"][0][name]).abs().max()
            assert 0 < gap < 0.05 * moved, name  # bf16 rounding of the iteration, not another update
    assert runs["float32"][1].state_dict()["state"].keys() == runs["bfloat16"][1].state_dict()["state"].keys()


def test_auto_iterates_in_float32_only_where_bfloat16_is_emulated(registry, monkeypatch):
    import modulm_optim.muon as muon_module

    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(muon_module, "native_bf16", lambda device, native=native: (native, "test"))
        seen = []
        monkeypatch.setattr(muon_module, "muon_update", lambda group, state, dtype: seen.append(dtype))
        optimizer = create(registry, "optimizer", {"component": "muon", "ns_dtype": "auto"}, params=named_params())
        run_steps([(optimizer, [p for g in optimizer.param_groups for p in g["params"]])], 1, [0.02])
        assert seen == [expected]
    with pytest.raises(ModulmError, match="ns_dtype"):
        create(registry, "optimizer", {"component": "muon", "ns_dtype": "float16"}, params=named_params())


def test_bad_settings_are_one_line_recipe_errors(registry):
    with pytest.raises(ModulmError, match="optimizer muon: momentum must be in"):
        create(registry, "optimizer", {"component": "muon", "momentum": 1.5}, params=named_params())
    with pytest.raises(ModulmError, match="optimizer.adamw_params: expected list"):
        create(registry, "optimizer", {"component": "muon", "adamw_params": "lm_head.*"}, params=named_params())


@pytest.mark.parametrize("ns_dtype", ["bfloat16", "float32", "auto"])
def test_state_dict_round_trips_and_resumes_exactly(ns_dtype):
    params = named_params()
    first = muon(params=params, ns_dtype=ns_dtype)
    run_steps([(first, [p for _, p in params])], 3, [0.02] * 3)
    copy = clone(params)
    state = copy_module.deepcopy(first.state_dict())  # as a checkpoint would: not the live tensors
    second = muon(params=copy, ns_dtype=ns_dtype)
    second.load_state_dict(state)
    run_steps([(first, [p for _, p in params]), (second, [p for _, p in copy])], 4, [0.02, 0.01, 0.015, 0.005], seed=9)
    for (name, p), (_, q) in zip(params, copy):
        assert torch.equal(p, q), name


def test_a_split_run_with_muon_resumes_bit_identically(tmp_path):
    def recipe(path):
        path.mkdir()
        return tiny_recipe(path, optimizer__component="muon", optimizer__lr=0.02, optimizer__adamw_lr=3e-3)

    straight = Trainer(assemble(recipe(tmp_path / "a"))).run()
    split = recipe(tmp_path / "b")
    first = Trainer(assemble(split)).run(stop_at=5)
    second = Trainer(assemble(split)).run()
    assert sorted(second.train_losses) == [5, 6, 7]
    assert {**first.train_losses, **second.train_losses} == straight.train_losses
    assert second.final_eval.loss == straight.final_eval.loss
