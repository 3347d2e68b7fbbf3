"""The recipes shipped in recipes/ validate, each ablation changes exactly what it says, and every
point of the sweep files in recipes/experiments/ validates."""

import tomllib
from pathlib import Path

import pytest

from modulm.assemble import resolved_recipe
from modulm.recipe import load_recipe, validate
from modulm.sweep.spec import load_sweep, validate_points

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
ABLATIONS = {
    "no-rmsnorm": ("norm", "none"),
    "post-norm": ("block", "postnorm"),
    "nope": ("position", "nope"),
    "silu-ffn": ("ffn", "silu"),
}


FILES = sorted(RECIPES.rglob("*.toml"))
SWEEPS = [p for p in FILES if "base" in tomllib.loads(p.read_text())]  # a sweep file names its base recipe


def resolved(path: Path, registry) -> dict:
    return resolved_recipe(validate(load_recipe(path), registry))


@pytest.mark.parametrize("path", [p for p in FILES if p not in SWEEPS], ids=lambda p: p.name)
def test_shipped_recipe_validates(path, registry):
    assert resolved(path, registry)["model"]["component"] == "transformer"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweep_points_validate(path, registry):
    spec = load_sweep(path)
    assert len(spec.points) >= 3
    validate_points(spec, registry)


def test_ablation_sweep_makes_the_ablation_recipes_changes():
    points = {p.run_id: p.overrides for p in load_sweep(RECIPES / "experiments" / "ablations.toml").points}
    for name, (part, component) in ABLATIONS.items():
        assert points[name][f"model.{part}"] == component
    assert points["baseline"] == {}


def test_handout_tinystories_settings(registry):
    model = resolved(RECIPES / "tinystories.toml", registry)["model"]
    assert (model["context_length"], model["d_model"], model["num_layers"], model["num_heads"], model["d_ff"]) == (256, 512, 4, 16, 1344)
    cpu = resolved(RECIPES / "tinystories-cpu.toml", registry)
    assert cpu["training"]["batch_size"] * cpu["training"]["max_iterations"] * cpu["model"]["context_length"] == 40_960_000


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_changes_one_part(name, registry):
    base = resolved(RECIPES / "tinystories-cpu.toml", registry)
    ablation = resolved(RECIPES / "ablations" / f"{name}.toml", registry)
    part, component = ABLATIONS[name]
    assert ablation["model"][part]["component"] == component
    assert base["model"][part]["component"] != component
    for key in ("data", "optimizer", "schedule", "training"):
        assert ablation[key] == base[key]
