"""The Model section of docs/components.md matches the code: its examples run, its tables list every part."""

import re
import tomllib
from pathlib import Path

import pytest

from modulm import plugins
from modulm.assemble import builder

DOC = Path(__file__).resolve().parents[1] / "docs" / "components.md"


@pytest.fixture(scope="module")
def section() -> str:
    text = DOC.read_text()
    return text[text.index("## Model (plugin `transformer`)"):text.index("## Optimization")]


def test_the_recipe_example_builds_the_parts_it_names(section):
    (example,) = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    table = tomllib.loads(example)["model"]
    model = builder(plugins.load(autoload=True, env={}).registry, "model", table)(vocab_size=50)
    layer = model.layers[0]
    assert type(layer).__name__ == "PostNormBlock" and type(layer.ffn).__name__ == "SiLUFFN"
    assert layer.ln1.eps == table["norm"]["eps"] and layer.attn.impl == table["attention"]["impl"]
    assert len(model.layers) == table["num_layers"]


def test_the_python_examples_run(section):
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "docs/components.md", "exec"), {})


def test_every_registered_part_and_parameter_is_documented(section):
    registry = plugins.load(autoload=True, env={}).registry
    for component in registry.components():
        if component.plugin != "transformer":
            continue
        assert f"`{component.name}`" in section, f"{component.kind} {component.name} is not documented"
        for param in component.schema.params:
            assert f"`{param.name}" in section, f"{component.kind} {component.name}: {param.name} is not documented"
