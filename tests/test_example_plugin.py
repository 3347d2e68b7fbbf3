"""The third-party example plugin in docs/examples, installed for real with pip into a temporary target."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "modulm-example-plugin"


def install_for_real(project: Path, target: Path) -> dict:
    """pip-install ``project`` into ``target``; the environment in which modulm finds it by entry point."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(project)],
        check=True, capture_output=True, text=True,
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]))
    env.pop("MODULM_DISABLE_PLUGIN_AUTOLOAD", None)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    return install_for_real(EXAMPLE, tmp_path_factory.mktemp("site"))


def modulm(env, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", "modulm", *args], env=env, cwd=cwd, capture_output=True, text=True)


def test_listed_by_modulm_plugins_with_its_distribution(installed):
    result = modulm(installed, "plugins", "--kind", "ffn")
    assert result.returncode == 0, result.stderr
    assert "modulm-example-plugin 0.1.0" in result.stdout
    assert "example-geglu  [example]  GeGLU feed-forward network" in result.stdout
    assert "hidden_multiple: int (>= 1) = 64" in result.stdout


def test_selected_from_a_recipe_and_blocked_with_p_no(installed, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[data]\ncomponent = "memmap"\ntrain = "t.npy"\nvocab_size = 10\n'
                      '[model.ffn]\ncomponent = "example-geglu"\nhidden_multiple = 32\n')
    ok = modulm(installed, "validate", str(recipe), "--print")
    assert ok.returncode == 0, ok.stderr
    assert 'component = "example-geglu"' in ok.stdout and "hidden_multiple = 32" in ok.stdout
    blocked = modulm(installed, "-p", "no:example", "validate", str(recipe))
    assert blocked.returncode == 2
    assert "unknown ffn component 'example-geglu'" in blocked.stderr


def test_example_plugin_own_tests_pass(installed):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                            env=installed, cwd=EXAMPLE, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
