"""The core imports no built-in plugin: they arrive through entry points like any third-party one."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def builtin_packages() -> set[str]:
    """The top-level packages of the built-in plugins, from pyproject's ``modulm`` entry points."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {value.split(":")[0].split(".")[0] for value in project["entry-points"]["modulm"].values()}


def imported_packages(source: str) -> set[str]:
    """Every top-level package an ``import`` or ``from ... import`` anywhere in ``source`` names."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_walker_sees_imports_at_any_depth():
    source = "def f():\n    if True:\n        from modulm_bpe.cli import x\n    import modulm_data.tools as t\n"
    assert imported_packages(source) == {"modulm_bpe", "modulm_data"}


def test_builtins_are_the_five_plugin_packages():
    assert builtin_packages() == {"modulm_transformer", "modulm_optim", "modulm_bpe", "modulm_data", "modulm_loggers"}


def test_no_core_module_imports_a_builtin_plugin():
    builtins = builtin_packages()
    offenders = []
    for path in sorted((ROOT / "modulm").rglob("*.py")):
        for package in sorted(imported_packages(path.read_text(encoding="utf-8")) & builtins):
            offenders.append(f"{path.relative_to(ROOT)} imports {package}")
    assert offenders == []


def runtime_core_imports(source: str) -> set[str]:
    """The ``modulm.X`` modules ``source`` imports when run (``if TYPE_CHECKING:`` blocks left out)."""
    found = set()

    def visit(node):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("modulm."):
            found.add(node.module.split(".")[1])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def test_recipe_handling_imports_flow_one_way():
    """builders <- validate <- recipe <- assemble: no module imports one to its right (no circle)."""
    assert runtime_core_imports("if TYPE_CHECKING:\n    from modulm.recipe import R\ndef f():\n    from modulm.assemble import A\n") == {"assemble"}
    order = ["builders", "validate", "recipe", "assemble"]
    for lower, module in enumerate(order):
        imported = runtime_core_imports((ROOT / "modulm" / f"{module}.py").read_text(encoding="utf-8"))
        assert not imported & set(order[lower + 1:]), f"modulm.{module} imports a module above it: {imported}"


def test_loading_every_plugin_and_building_the_parser_imports_no_torch():
    script = ("import sys\nfrom modulm import plugins\nfrom modulm.cli import build_parser\n"
              "pm = plugins.load()\nbuild_parser(pm)\nassert pm.registry.names('model') == ['transformer']\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
