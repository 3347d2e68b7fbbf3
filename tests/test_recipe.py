"""Recipe loading, extends, overrides and validation (example and property tests)."""

import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modulm.errors import ModulmError, RecipeError
from modulm.recipe import apply_override, deep_merge, load_recipe, parse_override, recipe_from_dict, validate
from modulm.tomlwrite import dumps
from tests.fakes import toy_registry

BASE = {"model": {"component": "toy", "d_model": 16}, "data": {"component": "toy-data", "path": "x.npy"}}


def write(path, text):
    path.write_text(text)
    return path


def test_valid_recipe_binds_components_and_defaults():
    bound = validate(recipe_from_dict(BASE), toy_registry())
    model = bound["model"]
    assert model.name == "toy" and model.params["d_model"] == 16 and model.params["scale"] == 1.0
    assert model.params["ffn"].name == "toy-ffn" and model.params["ffn"].params == {"width": 4, "act": "relu"}
    assert bound["training"].batch_size == 32 and bound["system"].seed == 42
    assert [b.name for b in bound["loggers"]] == ["console", "file", "jsonl"]
    built = model(vocab_size=7)
    assert built == {"d_model": 16, "scale": 1.0, "ffn": ("ffn", 4, "relu", 16), "vocab_size": 7}


def test_all_problems_reported_with_file_path_and_hint(tmp_path):
    recipe = write(tmp_path / "r.toml", """
[model]
component = "toy"
d_modle = 4
[model.ffn]
widht = 3
[data]
component = "toy-data"
[training]
batch_size = "big"
[optimizer]
component = "adamx"
""")
    with pytest.raises(RecipeError) as err:
        validate(load_recipe(recipe), toy_registry())
    problems = err.value.problems
    assert len(problems) == 5, problems
    text = "\n".join(problems)
    assert "r.toml: model.d_modle: unknown key; did you mean 'd_model'?" in text
    assert "model.ffn.widht: unknown key; did you mean 'width'?" in text
    assert "[ffn 'toy-ffn' from plugin 'toy']" in text
    assert "data.path: missing required value" in text
    assert "training.batch_size: expected int, got string 'big'" in text
    assert "optimizer.component: unknown optimizer component 'adamx' (did you mean 'adamw'?); available: adamw (toy)" in text


def test_injected_parameter_cannot_be_set():
    data = dict(BASE, model={"component": "toy", "vocab_size": 5})
    with pytest.raises(RecipeError, match="model.vocab_size: is set at run time"):
        validate(recipe_from_dict(data), toy_registry())


def test_literal_choice_checked():
    with pytest.raises(RecipeError, match="system.dtype: 'fp8' is not one of"):
        validate(recipe_from_dict(dict(BASE, system={"dtype": "fp8"})), toy_registry())


def test_extends_merges_and_records_origins(tmp_path):
    write(tmp_path / "base.toml", '[model]\ncomponent = "toy"\nd_model = 8\ntags = ["a", "b"]\n[data]\ncomponent = "toy-data"\npath = "p"\n')
    child = write(tmp_path / "child.toml", 'extends = "base.toml"\n[model]\ntags = ["c"]\nd_modle = 3\n')
    recipe = load_recipe(child)
    assert recipe.data["model"] == {"component": "toy", "d_model": 8, "tags": ["c"], "d_modle": 3}
    with pytest.raises(RecipeError) as err:
        validate(recipe, toy_registry())
    assert err.value.problems[0].split(": ")[0].endswith("child.toml")
    assert "child.toml: model.d_modle: unknown key" in err.value.problems[0]


def test_extends_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.toml", 'extends = "b.toml"\n')
    write(tmp_path / "b.toml", 'extends = "a.toml"\n')
    with pytest.raises(ModulmError, match="cycle"):
        load_recipe(tmp_path / "a.toml")


def test_bad_toml_and_missing_file_name_the_file(tmp_path):
    with pytest.raises(ModulmError, match="nope.toml: recipe file not found"):
        load_recipe(tmp_path / "nope.toml")
    bad = write(tmp_path / "bad.toml", "[model\n")
    with pytest.raises(ModulmError, match="bad.toml: invalid TOML"):
        load_recipe(bad)


def test_overrides_apply_and_are_attributed():
    recipe = recipe_from_dict(BASE, ["model.d_modl=3", "model.ffn=toy-ffn", "system.device=cpu"])
    assert recipe.data["system"]["device"] == "cpu"
    with pytest.raises(RecipeError, match="<command line>: model.d_modl: unknown key"):
        validate(recipe, toy_registry())


def test_override_indexes_arrays_of_tables():
    data = dict(BASE, loggers=[{"component": "console"}, "file"])
    recipe = recipe_from_dict(data, ["loggers.1.prefix='x'"])
    assert recipe.data["loggers"][1] == {"component": "file", "prefix": "x"}
    with pytest.raises(ModulmError, match="not an index"):
        recipe_from_dict(data, ["loggers.5.prefix=1"])


def test_resolved_recipe_round_trips_through_toml():
    from modulm.assemble import resolved_recipe

    registry = toy_registry()
    resolved = resolved_recipe(validate(recipe_from_dict(BASE), registry))
    again = tomllib.loads(dumps(resolved))
    assert again == resolved
    assert resolved_recipe(validate(recipe_from_dict(again), registry)) == resolved


# -- properties ---------------------------------------------------------------------------------

toml_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
)
toml_values = st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=8)
keys = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=6)
tables = st.recursive(
    st.dictionaries(keys, toml_values, max_size=4),
    lambda inner: st.dictionaries(keys, st.one_of(toml_values, inner), max_size=4),
    max_leaves=10,
)


@given(toml_values)
def test_override_value_round_trips_through_toml(value):
    keys_, parsed = parse_override("a.b=" + dumps({"v": value}).split("=", 1)[1].strip())
    assert keys_ == ["a", "b"] and parsed == value


@given(tables)
def test_toml_writer_round_trips(table):
    assert tomllib.loads(dumps(table)) == table


@given(tables)
def test_extends_empty_child_is_base(base):
    assert deep_merge(base, {}) == base


@given(tables, tables)
def test_extends_child_wins_and_arrays_replace(base, child):
    merged = deep_merge(base, child)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            assert deep_merge(base[key], value) == merged[key]
        else:
            assert merged[key] == value  # scalars and arrays replace wholesale
    for key in base.keys() - child.keys():
        assert merged[key] == base[key]


@st.composite
def recipe_with_bad_key(draw):
    """A valid toy recipe with one unknown key planted at a random depth."""
    where = draw(st.sampled_from([("model",), ("model", "ffn"), ("data",), ("training",), ("system",), ("loggers", 0)]))
    bad = "zz_" + draw(keys)
    data = {"model": {"component": "toy", "ffn": {"component": "toy-ffn"}}, "data": {"component": "toy-data", "path": "p"},
            "loggers": [{"component": "console"}]}
    node = data
    for part in where:
        node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
    node[bad] = draw(toml_scalars)
    return data, ".".join(map(str, where + (bad,)))


@given(recipe_with_bad_key())
def test_unknown_key_at_any_depth_is_rejected_and_named(case):
    data, dotted = case
    with pytest.raises(RecipeError) as err:
        validate(recipe_from_dict(data), toy_registry())
    assert len(err.value.problems) == 1
    assert f": {dotted}: unknown key" in err.value.problems[0]


# -- mistakes people make while typing a recipe or an override ------------------------------------
CLI_RECIPE = """\
[data]
component = "memmap"
train = "tokens.npy"
vocab_size = 256

[[loggers]]
component = "console"
"""


def _validate_cli(tmp_path, capsys, *overrides, text=CLI_RECIPE, name="r.toml"):
    from modulm.cli import main

    path = write(tmp_path / name, text)
    code = main(["validate", str(path), *overrides])
    return code, capsys.readouterr().err.strip().splitlines(), path


@pytest.mark.parametrize("extra, suggestion", [("batch_size = 8", "'training.batch_size'"),
                                               ("learning_rate = 1e-3", "'optimizer.lr'"),
                                               ("d_model = 64", "'model.d_model'"),
                                               ("warmup_iters = 5", "'schedule.warmup_iters'")])
def test_a_nested_key_written_at_the_top_suggests_its_table(tmp_path, capsys, extra, suggestion):
    code, lines, path = _validate_cli(tmp_path, capsys, text=extra + "\n" + CLI_RECIPE)
    key = extra.split()[0]
    assert code == 2 and lines == [f"modulm: error: {path}: {key}: unknown key; did you mean {suggestion}?"]


def test_a_nested_key_given_as_an_override_names_the_command_line(tmp_path, capsys):
    code, lines, _ = _validate_cli(tmp_path, capsys, "batch_size=8")
    assert code == 2 and lines == ["modulm: error: <command line>: batch_size: unknown key; did you mean 'training.batch_size'?"]


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_a_recipe_that_is_not_toml_says_recipes_are_toml(tmp_path, capsys, suffix):
    code, lines, path = _validate_cli(tmp_path, capsys, text='{"data": {}}', name="recipe" + suffix)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"modulm: error: {path}: recipes are TOML files") and "modulm init" in lines[0]


@pytest.mark.parametrize("override, extra, message", [
    ("loggers.7.timestamps=false", "", "<command line>: override loggers.7.timestamps: '7' is not an index of loggers, an array of 1 entry (0 to 0)"),
    ("loggers.x.timestamps=false", "", "<command line>: override loggers.x.timestamps: 'x' is not an index of loggers"),
    ("schedule.0.x=1", "", "<command line>: override schedule.0.x: schedule is not set in the recipe (its default applies), so '0' indexes nothing"),
    ("training.batch_size.x=1", "", "<command line>: training.batch_size: expected int, got table {'x': 1}"),
    ("training.batch_size.x=1", "[training]\nbatch_size = 32\n",
     "<command line>: override training.batch_size.x: training.batch_size is an integer (32), not a table, so it has no key 'x'"),
    ("data.vocab_size.x.y=1", "", "<command line>: override data.vocab_size.x.y: data.vocab_size is an integer (256), not a table"),
    ("loggers.-1.x=1", "", "<command line>: override loggers.-1.x: '-1' is not an index of loggers, an array of 1 entry (0 to 0)"),
    ("extends=other.toml", "", "<command line>: override extends: 'extends' cannot be given on the command line"),
    ("loggers.0.timestamps.x=1", "timestamps = true\n",
     "<command line>: override loggers.0.timestamps.x: loggers.0.timestamps is a boolean (True), not a table"),
])
def test_an_override_that_cannot_be_applied_is_one_line_naming_the_command_line(tmp_path, capsys, override, extra, message):
    code, lines, _ = _validate_cli(tmp_path, capsys, override, text=CLI_RECIPE + extra)
    assert code == 2 and len(lines) == 1 and message in lines[0], lines


def test_a_problem_inside_a_table_an_override_made_blames_the_command_line(tmp_path, capsys):
    code, lines, _ = _validate_cli(tmp_path, capsys, "system.device.x=1", "model.ffn.dd_ff=3")
    assert code == 2 and len(lines) == 2
    assert all(line.startswith("modulm: error: <command line>: ") for line in lines), lines


def test_a_component_named_in_the_file_keeps_blaming_the_file_after_an_override(tmp_path, capsys):
    text = CLI_RECIPE + '\n[model]\nffn = "swigloo"\n'
    code, lines, path = _validate_cli(tmp_path, capsys, "model.ffn.x=1", text=text)
    assert code == 2
    assert any(line.startswith(f"modulm: error: {path}: model.ffn.component: unknown ffn component 'swigloo'") for line in lines), lines


def test_a_misspelt_table_at_the_top_suggests_the_table_not_a_key_of_that_name(tmp_path, capsys):
    code, lines, _ = _validate_cli(tmp_path, capsys, "train.batch_size=3")
    assert code == 2 and lines == ["modulm: error: <command line>: train: unknown key; did you mean 'training'?"]


def test_array_elements_are_checked_against_the_declared_item_type(tmp_path, capsys):
    code, lines, _ = _validate_cli(tmp_path, capsys, "optimizer.no_decay=['*norm*', 3]", "data.val=7")
    assert code == 2 and len(lines) == 2, lines
    assert lines[0].startswith("modulm: error: <command line>: data.val: expected str | None, got integer 7")
    assert lines[1] == ("modulm: error: <command line>: optimizer.no_decay.1: expected str, got integer 3 "
                        "[optimizer 'adamw' from plugin 'optim']")


def test_an_unknown_key_for_a_component_without_parameters_says_it_takes_none():
    import modulm
    from modulm.errors import RecipeError

    registry = modulm.load_plugins().registry
    with pytest.raises(RecipeError, match=r"ffn.widht: unknown key; this component takes no keys \[ffn 'swiglu'"):
        modulm.create(registry, "ffn", {"component": "swiglu", "widht": 3}, d_model=64, d_ff=None)


def test_a_byte_order_mark_is_skipped_and_a_device_file_is_refused(tmp_path):
    from modulm.errors import ModulmError
    from modulm.recipe import load_recipe

    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + b'name = "x"\n[model]\nd_model = 8\n')  # as Windows editors save it
    assert load_recipe(path).data["model"] == {"d_model": 8}
    with pytest.raises(ModulmError, match=r"/dev/zero: not a regular file"):
        load_recipe("/dev/zero")


@pytest.mark.parametrize("words", [["optimizer.lr", "=", "1e-3"], ["optimizer.lr=", "1e-3"], ["optimizer.lr", "=1e-3"]])
def test_an_override_split_by_spaces_is_one_line_with_the_fix(tmp_path, capsys, words):
    from tests.runkit import cli, one_error_line, tiny_recipe, write_recipe

    path = write_recipe(tmp_path, tiny_recipe(tmp_path))
    for command in ("validate", "run"):
        code, _, err = cli(capsys, command, path, *words)
        assert code == 2
        one_error_line(err, "override 'optimizer.lr=1e-3' is split into words by the spaces around '='; write it as "
                            "one word: optimizer.lr=1e-3")


def test_an_override_before_the_recipe_says_the_file_comes_first(tmp_path, capsys):
    from tests.runkit import cli, one_error_line, tiny_recipe, write_recipe

    path = write_recipe(tmp_path, tiny_recipe(tmp_path))
    code, _, err = cli(capsys, "validate", "optimizer.lr=1e-3", path)
    assert code == 2
    one_error_line(err, "'optimizer.lr=1e-3' is an override, given where the file goes: the file comes first")
