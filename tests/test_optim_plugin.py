"""The optim plugin as a recipe sees it: registration, kind contracts, validation, documentation."""

import re
import tomllib
import warnings
from pathlib import Path

import pytest
import torch

from modulm import kinds
from modulm.assemble import create
from modulm.errors import RecipeError

COMPONENTS = {("optimizer", "adamw"), ("optimizer", "muon"), ("optimizer", "sgd"), ("schedule", "cosine-warmup"),
              ("schedule", "constant"), ("schedule", "wsd")}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "components.md"


def test_registers_its_components_under_its_entry_point_name(registry):
    given = {(c.kind, c.name) for c in registry.components() if c.plugin == "optim"}
    assert given == COMPONENTS


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_optimizers_keep_the_kind_contract(registry, name):
    model = torch.nn.Linear(3, 2)
    optimizer = create(registry, "optimizer", name, params=list(model.named_parameters()))
    assert isinstance(optimizer, torch.optim.Optimizer) and isinstance(optimizer, kinds.Optimizer)
    model(torch.ones(4, 3)).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    for group in optimizer.param_groups:
        group["lr"] = 0.5  # what the trainer does each step
    optimizer.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("name", ["cosine-warmup", "constant", "wsd"])
def test_schedules_keep_the_kind_contract(registry, name):
    schedule = create(registry, "schedule", name, base_lr=1e-3, max_iterations=500)
    assert isinstance(schedule, kinds.Schedule)
    values = [schedule(t) for t in range(0, 800, 7)]
    assert all(isinstance(v, float) and 0.0 <= v <= 1e-3 for v in values)
    assert [schedule(t) for t in range(0, 800, 7)] == values  # a pure function of the iteration


def test_recipe_validation_points_at_a_mistyped_key(registry):
    with pytest.raises(RecipeError, match="did you mean 'beta1'"):
        create(registry, "optimizer", {"component": "adamw", "beta_1": 0.95}, params=[])


def test_recipe_validation_checks_types(registry):
    with pytest.raises(RecipeError, match="warmup_iters"):
        create(registry, "schedule", {"component": "cosine-warmup", "warmup_iters": "100"}, base_lr=1e-3,
               max_iterations=10)


def optimization_section() -> str:
    text = DOCS.read_text()
    start = text.index("## Optimization (plugin `optim`)")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def component_section(section: str, kind: str, name: str) -> str:
    match = re.search(rf"^### `{re.escape(name)}` \({kind}\)\n(.*?)(?=^### |\Z)", section, flags=re.M | re.S)
    assert match, f"no '### `{name}` ({kind})' heading"
    return match.group(1)


def test_every_component_and_parameter_is_documented_with_its_default(registry):
    section = optimization_section()
    for kind, name in sorted(COMPONENTS):
        text = component_section(section, kind, name)
        for param in registry.get(kind, name).schema.params:
            default = "[]" if param.default == () else repr(param.default).replace("'", '"')
            assert re.search(rf"^\| `{param.name}` \| `{re.escape(default)}` \|", text, flags=re.M), \
                f"{name}: no row for {param.name} with default {default}"


def test_python_examples_in_the_section_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", optimization_section(), flags=re.S)
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        exec(compile(block, f"components.md optim block {i}", "exec"), {})


def test_toml_examples_in_the_section_validate(registry):
    blocks = re.findall(r"```toml\n(.*?)```", optimization_section(), flags=re.S)
    assert len(blocks) >= 5
    for block in blocks:
        table = tomllib.loads(block)
        for kind in ("optimizer", "schedule"):
            if kind in table:
                if kind == "optimizer":
                    injected = {"params": [("w", torch.nn.Parameter(torch.ones(2)))]}
                else:
                    injected = {"base_lr": table.get("optimizer", {}).get("lr", 1e-3), "max_iterations": 5000}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the example's no_decay patterns match no "w"
                    create(registry, kind, table[kind], **injected)
