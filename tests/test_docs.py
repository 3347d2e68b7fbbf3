"""The Python examples in the docs run as written."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("page", ["python-api.md"])
def test_python_examples_run_in_order(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(DOCS / page)
    assert len(blocks) >= 5
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{page}[block {i}]", "exec"), namespace)


def test_the_recipe_reference_lists_every_declared_range():
    from modulm.schema import schema_of
    from modulm.settings import recipe_schema
    from tests.kit_support import REGISTRY

    rows = set()
    for top in schema_of(recipe_schema).params:
        if top.settings is not None:
            rows |= {f"| `[{top.name}]` | `{p.name}` | {p.range_text()} |" for p in schema_of(top.settings).params if p.constraints}
    for c in REGISTRY.components():
        rows |= {f"| {c.kind} `{c.name}` | `{p.name}` | {p.range_text()} |" for p in c.schema.params if p.constraints}
    text = (DOCS / "recipes.md").read_text()
    documented = {line for line in text.splitlines() if re.match(r"^\| (`\[\w+\]`|\w+ `[\w-]+`) \| `\w+` \| ", line)}
    assert documented == rows


def test_the_plugin_guide_example_on_ranges_prints_what_it_shows(capsys):
    text = (DOCS / "writing-plugins.md").read_text()
    section = text.split("### Ranges and cross-field rules", 1)[1].split("\n## ", 1)[0]
    code, shown = python_blocks_of(section)[0], re.findall(r"```console\n(.*?)```", section, flags=re.S)[0]
    namespace: dict = {}
    exec(compile(code, "writing-plugins.md[ranges]", "exec"), namespace)
    assert capsys.readouterr().out == shown
    from modulm.testing import check_declared_ranges

    check_declared_ranges("schedule", namespace["step_decay"])


def python_blocks_of(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)
