"""Sweep files without running anything: points, run ids, value spelling, and every mistake at once."""

import math
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modulm.cli import main
from modulm.errors import ModulmError, RecipeError
from modulm.sweep.spec import format_value, load_sweep, short_names, validate_points
from tests.test_trainer import tiny_recipe, write_toml


def sweep_file(tmp_path, text: str, name: str = "s.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_grid_cross_product_with_seeds_gives_readable_stable_ids(tmp_path):
    path = sweep_file(tmp_path, 'base = "r.toml"\nname = "lr"\nseeds = [0, 1]\n[grid]\n'
                                '"optimizer.lr" = [1e-3, 3e-3]\n"training.batch_size" = [16]\n')
    spec = load_sweep(path)
    assert [p.run_id for p in spec.points] == [
        "lr=1e-3,batch_size=16,seed=0", "lr=1e-3,batch_size=16,seed=1",
        "lr=3e-3,batch_size=16,seed=0", "lr=3e-3,batch_size=16,seed=1"]
    assert spec.points[3].overrides == {"optimizer.lr": 3e-3, "training.batch_size": 16, "system.seed": 1}
    assert spec.base == tmp_path / "r.toml" and spec.name == "lr"
    assert load_sweep(path).points == spec.points  # stable


def test_variants_times_grid_and_common_overrides(tmp_path):
    path = sweep_file(tmp_path, 'base = "r.toml"\n[overrides]\n"training.max_iterations" = 5\n'
                                '[grid]\n"optimizer.lr" = [0.01, 0.1]\n'
                                '[[variant]]\nlabel = "post-norm"\noverrides = { "model.block" = "postnorm" }\n'
                                '[[variant]]\nlabel = "base"\n')
    spec = load_sweep(path, ["training.batch_size=2"])
    assert spec.name == "s"
    assert [p.run_id for p in spec.points] == ["post-norm,lr=0.01", "post-norm,lr=0.1", "base,lr=0.01", "base,lr=0.1"]
    assert spec.override_strings(spec.points[0]) == [
        "training.max_iterations=5", 'model.block="postnorm"', "optimizer.lr=0.01", "training.batch_size=2"]


def test_short_names_keep_keys_apart():
    assert short_names(["optimizer.lr", "model.ffn.component", "model.norm.component"]) == {
        "optimizer.lr": "lr", "model.ffn.component": "ffn.component", "model.norm.component": "norm.component"}


@pytest.mark.parametrize("value, text", [(3e-3, "3e-3"), (1e-4, "1e-4"), (1.5e-3, "1.5e-3"), (0.1, "0.1"),
                                         (0.03, "0.03"), (1e30, "1e30"), (2.0, "2"), (16, "16"), (True, "true"),
                                         ("postnorm", "postnorm"), ("a/b c", "a_b_c")])
def test_value_spelling(value, text):
    assert format_value(value) == text


@given(st.floats(min_value=1e-300, max_value=1e300, allow_nan=False))
def test_float_spelling_is_exact(x):
    assert float(format_value(x)) == x and format_value(-x) == "-" + format_value(x)


def test_every_mistake_in_the_file_at_once(tmp_path):
    path = sweep_file(tmp_path, 'base = 3\nname = "a b"\ngird = 1\nseeds = [0.5]\n[grid]\n"optimizer.lr" = []\n'
                                '[[variant]]\nlabel = "x"\n[[variant]]\nlabel = "x"\ncolour = 1\n')
    with pytest.raises(RecipeError) as info:
        load_sweep(path)
    text = "\n".join(info.value.problems)
    for expected in ("base: missing or not a string", "name: expected a directory name", "gird: unknown key",
                     "seeds: expected an array of integers", "grid.optimizer.lr: expected a non-empty array",
                     "variant[1].label: 'x' is used by another variant", "variant[1].colour: unknown key"):
        assert f"{path}: {expected}" in text


def test_search_space_mistakes(tmp_path):
    path = sweep_file(tmp_path, 'base = "r.toml"\n[search]\nsampler = "grid"\ntrials = 0\n[search.space]\n'
                                '"optimizer.lr" = { log_uniform = [0, 1] }\n"training.batch_size" = { int = [8.5, 16] }\n'
                                '"model.d_ff" = { normal = [1, 2] }\n')
    with pytest.raises(RecipeError) as info:
        load_sweep(path)
    text = "\n".join(info.value.problems)
    assert "search.sampler: 'grid' is not one of tpe, random" in text and "search.trials: expected a positive" in text
    assert "search.space.optimizer.lr: log_uniform: expected [low, high] with low < high > 0" in text
    assert "search.space.training.batch_size: int:" in text and "search.space.model.d_ff: expected one of" in text


def test_overriding_a_swept_key_on_the_command_line_is_refused(tmp_path):
    path = sweep_file(tmp_path, 'base = "r.toml"\n[grid]\n"optimizer.lr" = [1e-3]\n')
    with pytest.raises(ModulmError, match="optimizer.lr is what the sweep .* varies"):
        load_sweep(path, ["optimizer.lr=1"])


def test_invalid_points_stop_the_sweep_before_any_run_naming_each(tmp_path, capsys, registry):
    write_toml(tmp_path, tiny_recipe(tmp_path))
    path = sweep_file(tmp_path, 'base = "r.toml"\n[grid]\n"optimizer.lr" = [1e-3, "fast"]\n'
                                '"model.d_modle" = [32]\n')
    with pytest.raises(RecipeError) as info:
        validate_points(load_sweep(path), registry)
    problems = info.value.problems
    assert any("point lr=fast,d_modle=32:" in p and "optimizer.lr: expected float" in p for p in problems)
    assert any("point lr=1e-3,d_modle=32 (and 1 more):" in p and "model.d_modle: unknown key" in p for p in problems)
    assert main(["sweep", str(path), "--out", str(tmp_path / "sweeps")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("modulm: error: ") for line in err)  # d_modle's problem once
    assert not (tmp_path / "sweeps").exists()


def test_dry_run_lists_points_and_writes_nothing(tmp_path, capsys):
    write_toml(tmp_path, tiny_recipe(tmp_path))
    path = sweep_file(tmp_path, 'base = "r.toml"\nname = "d"\n[grid]\n"optimizer.lr" = [1e-3, 2e-3]\n')
    assert main(["sweep", str(path), "--dry-run", "--out", str(tmp_path / "sweeps")]) == 0
    out = capsys.readouterr().out
    assert "2 points, all valid" in out and "lr=2e-3  [to run]" in out and "optimizer.lr=0.002" in out
    assert not (tmp_path / "sweeps").exists()


def test_search_without_optuna_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    path = sweep_file(tmp_path, 'base = "r.toml"\n[search]\ntrials = 2\n[search.space]\n'
                                '"optimizer.lr" = { log_uniform = [1e-4, 3e-2] }\n')
    assert main(["sweep", str(path)]) == 2
    assert capsys.readouterr().err.strip() == "modulm: error: [search] needs Optuna: pip install 'modulm[optuna]'"


def test_nan_and_zero_spelling():
    assert format_value(0.0) == "0" and math.isinf(float(format_value(math.inf)))


@pytest.mark.parametrize("content, message", [("{cut", "not valid JSON"), (b"\xff\xfe", "not valid JSON"),
                                              ("[1, 2]", "not a sweep's state"),
                                              ('{"points": [1]}', "not a sweep's state")])
def test_a_damaged_sweep_state_is_one_line_for_compare_and_a_rerun(tmp_path, capsys, content, message):
    from types import SimpleNamespace

    from modulm.sweep.runner import SweepState

    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    state = sweep_dir / "sweep.json"
    state.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["compare", str(sweep_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"modulm: error: {state}: {message}") and "\n" not in err
    spec = SimpleNamespace(name="s", path=tmp_path / "s.toml", base=tmp_path / "base.toml")
    with pytest.raises(ModulmError, match=f"{message}.*delete it to forget"):
        SweepState(sweep_dir, spec)


def test_compare_lists_a_run_named_twice_once(tmp_path):
    from modulm.sweep.results import expand

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text('{"event": "train", "step": 0, "loss": 1.0}\n')
    runs = expand([tmp_path / "a", tmp_path / "b", tmp_path / "b" / ".." / "a", tmp_path])
    assert [run for run, _ in runs] == [tmp_path / "a", tmp_path / "b"]


def test_a_recipe_given_as_a_sweep_and_a_sweep_given_as_a_recipe_are_one_line_each(tmp_path, capsys):
    from tests.runkit import cli, one_error_line, snapshot, write_recipe
    from tests.runkit import tiny_recipe as run_recipe

    recipe = write_recipe(tmp_path, run_recipe(tmp_path))
    sweep = sweep_file(tmp_path, 'base = "r.toml"\n[grid]\n"optimizer.lr" = [1e-3]\n')
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "sweep", recipe, "--dry-run")
    assert code == 2
    one_error_line(err, f"{recipe}: a recipe, not a sweep file (it has [data], [model]", f"modulm run {recipe}",
                   'base = "r.toml"')
    for command in ("run", "validate", "info"):
        code, _, err = cli(capsys, command, sweep)
        assert code == 2
        one_error_line(err, f"{sweep}: a sweep file, not a recipe (it has base, [grid]): run it with modulm sweep {sweep}")
    assert snapshot(tmp_path) == before


def test_a_sweep_file_with_a_byte_order_mark_loads_and_a_device_file_is_refused(tmp_path):
    write_toml(tmp_path, tiny_recipe(tmp_path))
    path = tmp_path / "s.toml"
    path.write_bytes(b"\xef\xbb\xbf" + b'base = "r.toml"\n[grid]\n"optimizer.lr" = [1e-3, 2e-3]\n')
    assert len(load_sweep(path).points) == 2
    with pytest.raises(ModulmError, match=r"/dev/zero: not a regular file"):
        load_sweep("/dev/zero")
