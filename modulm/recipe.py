"""TOML recipes: loading with ``extends`` and overrides, and validation against the registry.

A recipe is data. :func:`load_recipe` reads a file (following ``extends``), applies command-line
overrides, and remembers which file (or the command line) every value came from, so that each
problem :func:`validate` finds names its file, TOML path, component and plugin. Nothing is built
until the whole recipe is valid.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from modulm.errors import ModulmError, RecipeError
from modulm.settings import GUIDE_NAMES, META_KEYS, recipe_schema
from modulm.validate import bind_component, bind_settings, bind_table

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

COMMAND_LINE = "<command line>"

__all__ = ["Recipe", "load_recipe", "recipe_from_dict", "parse_override", "apply_override", "deep_merge",
           "bind_component", "bind_settings", "validate"]


@dataclass
class Recipe:
    """Raw recipe data plus where each value came from (``origins``: TOML path -> source)."""

    data: dict[str, Any]
    source: str = "<python>"
    origins: dict[tuple, str] = field(default_factory=dict)
    base_dir: Path = field(default_factory=Path.cwd)
    warnings: list[str] = field(default_factory=list)  # set by validate(): one line each

    def origin(self, path: tuple) -> str:
        """The file (or command line) that set ``path`` or its nearest set ancestor."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.origins:
                return self.origins[path[:end]]
        return self.source


def deep_merge(base: Mapping[str, Any], child: Mapping[str, Any]) -> dict[str, Any]:
    """Child over base: tables merge recursively, everything else (arrays included) replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _record_origins(data: Mapping[str, Any], source: str, origins: dict[tuple, str], prefix: tuple = ()) -> None:
    for key, value in data.items():
        path = prefix + (key,)
        origins[path] = source
        if isinstance(value, Mapping):
            _record_origins(value, source, origins, path)


def _read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's tables; a byte-order mark (Windows editors write one) is skipped."""
    if path.exists() and not path.is_file() and not path.is_dir():  # /dev/zero would be read forever
        raise ModulmError(f"{path}: not a regular file, expected a TOML recipe file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ModulmError(f"{path}: recipe file not found") from None
    except IsADirectoryError:
        raise ModulmError(f"{path}: is a directory, expected a TOML recipe file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ModulmError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ModulmError(f"{path}: not UTF-8 text: {exc}") from None


def _load_layers(path: Path, seen: tuple[Path, ...]) -> list[tuple[str, dict[str, Any]]]:
    """The chain of files from the root ``extends`` down to ``path``, each as (source, data)."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in seen + (path,))
        raise ModulmError(f"{path}: 'extends' forms a cycle: {chain}")
    data = _read_toml(path)
    parent = data.pop("extends", None)
    layers: list[tuple[str, dict[str, Any]]] = []
    if parent is not None:
        if not isinstance(parent, str) or "://" in parent:
            raise ModulmError(f"{path}: extends: expected a relative or absolute file path, got {parent!r}")
        layers = _load_layers(path.parent / parent, seen + (path,))
    return layers + [(_display(path), data)]


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optimizer.lr=1e-3"`` -> (["optimizer", "lr"], 0.001). Values are TOML literals;
    a value that is not one (``device=cuda``) is taken as a bare string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ModulmError(f"override {text!r}: expected KEY.PATH=VALUE, e.g. optimizer.lr=1e-3")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_override(data: dict[str, Any], keys: list[str], value: Any, origins: dict[tuple, str] | None = None) -> None:
    """Set ``value`` at ``keys`` in ``data``, creating tables; a numeric key indexes an array.

    A bare string on the way (a component named by its name) becomes ``{"component": name}``;
    any other value on the way, or an index past an array, is a one-line error naming the
    command line. With ``origins``, every path the override creates or replaces is recorded as
    coming from the command line (a converted name keeps the origin of its ``component``).
    """
    if keys[0] in META_KEYS:
        raise _override_error(keys, f"{keys[0]!r} cannot be given on the command line; write it in the recipe")
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        here, nxt = tuple(keys[: i + 1]), keys[i + 1]
        if isinstance(node, list):
            index = _index_number(node, key, keys, i)
            node[index] = _as_table(node[index], here, keys, nxt, origins)
            node = node[index]
            continue
        if key not in node:
            if nxt.lstrip("-").isdigit():
                raise _override_error(keys, f"{'.'.join(here)} is not set in the recipe (its default applies), so "
                                            f"{nxt!r} indexes nothing; write the array out in the recipe first")
            node[key] = {}
            _mark(origins, here)
        else:
            node[key] = _as_table(node[key], here, keys, nxt, origins)
        node = node[key]
    last = keys[-1]
    if isinstance(node, list):
        node[_index_number(node, last, keys, len(keys) - 1)] = value
    else:
        node[last] = value
    _mark(origins, tuple(keys))


def _mark(origins: dict[tuple, str] | None, path: tuple) -> None:
    if origins is None:
        return
    for known in [p for p in origins if p[: len(path)] == path]:  # what the file set below is gone
        del origins[known]
    origins[path] = COMMAND_LINE


def _override_error(keys: list[str], message: str) -> ModulmError:
    return ModulmError(f"{COMMAND_LINE}: override {'.'.join(keys)}: {message}")


def _as_table(current: Any, here: tuple, keys: list[str], nxt: str, origins: dict[tuple, str] | None) -> Any:
    """``current`` as something the override can descend into, or a one-line error."""
    if isinstance(current, (dict, list)):
        return current
    where = ".".join(here)
    if isinstance(current, str):
        if origins is not None:
            source = next((origins[here[:end]] for end in range(len(here), 0, -1) if here[:end] in origins), None)
            _mark(origins, here)
            if source is not None:
                origins[here + ("component",)] = source
        return {"component": current}
    shown = {bool: "a boolean", int: "an integer", float: "a float"}.get(type(current), type(current).__name__)
    raise _override_error(keys, f"{where} is {shown} ({current!r}), not a table, so it has no key {nxt!r}")


def _index_number(node: list, key: str, keys: list[str], position: int) -> int:
    if not key.isdigit() or int(key) >= len(node):
        where = ".".join(keys[:position]) or "(top level)"
        size = f"{len(node)} entr{'y' if len(node) == 1 else 'ies'}"
        valid = f" (0 to {len(node) - 1})" if node else ""
        raise _override_error(keys, f"{key!r} is not an index of {where}, an array of {size}{valid}")
    return int(key)


RECIPE_SUFFIXES = (".json", ".yaml", ".yml")


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() in RECIPE_SUFFIXES:
        raise ModulmError(f"{path}: recipes are TOML files (.toml), not {path.suffix[1:].upper()}; "
                          "`modulm init recipe.toml` writes a starter recipe to edit")


#: Top-level keys of a sweep file that no recipe has.
_SWEEP_ONLY = ("base", "grid", "variant", "search", "seeds")


def recipe_tables() -> tuple[str, ...]:
    """The top-level keys of a recipe (its schema's) that a sweep file does not share."""
    from modulm.schema import schema_of

    return tuple(name for name in schema_of(recipe_schema).names if name != "name")


def _check_not_a_sweep(path: Path, top: Mapping[str, Any]) -> None:
    """One line for a sweep file given where a recipe is expected (not a list of unknown keys)."""
    found = [key for key in _SWEEP_ONLY if key in top]
    if "base" in found and not any(table in top for table in recipe_tables()):
        shown = ", ".join(f"[{k}]" if isinstance(top[k], (dict, list)) else k for k in found)
        raise ModulmError(f"{path}: a sweep file, not a recipe (it has {shown}): run it with modulm sweep {path}")


def check_override_words(path: str | Path, overrides: list[str] | tuple[str, ...]) -> None:
    """One line for the two ways a shell command line splits overrides wrongly: ``KEY = VALUE``
    written with spaces (three words), and an override given before the recipe."""
    words = list(overrides)
    for i, word in enumerate(words):
        joined = None
        if word == "=" and 0 < i < len(words) - 1:
            joined = f"{words[i - 1]}={words[i + 1]}"
        elif word.endswith("=") and word.count("=") == 1 and i < len(words) - 1 and "=" not in words[i + 1]:
            joined = f"{word}{words[i + 1]}"
        elif word.startswith("=") and i > 0 and "=" not in words[i - 1]:
            joined = f"{words[i - 1]}{word}"
        if joined is not None:
            raise ModulmError(f"override {joined!r} is split into words by the spaces around '='; write it as one "
                              f"word: {joined}")
    text = str(path)
    if "=" in text and not Path(text).exists() and any(Path(w).suffix == ".toml" for w in words):
        raise ModulmError(f"{text!r} is an override, given where the file goes: the file comes first, then "
                          "the overrides (FILE.toml KEY=VALUE ...)")


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read ``path`` (following ``extends``) and apply ``overrides`` (``key.path=value``)."""
    check_override_words(path, overrides)
    path = Path(path)
    _check_suffix(path)
    layers = _load_layers(path, ())
    _check_not_a_sweep(path, layers[-1][1])
    data: dict[str, Any] = {}
    origins: dict[tuple, str] = {}
    for source, layer in layers:
        data = deep_merge(data, layer)
        _record_origins(layer, source, origins)
    recipe = Recipe(data, layers[-1][0], origins, path.resolve().parent)
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(recipe.data, keys, value, recipe.origins)
    return recipe


def recipe_from_dict(data: Mapping[str, Any], overrides: list[str] | tuple[str, ...] = (), base_dir: str | Path | None = None) -> Recipe:
    """A recipe from Python data (no TOML file needed), with optional ``extends`` and overrides."""
    data = copy.deepcopy(dict(data))
    base_dir = Path(base_dir) if base_dir else Path.cwd()
    origins: dict[tuple, str] = {}
    parent = data.pop("extends", None)
    if parent is not None:
        base = load_recipe(base_dir / parent)
        origins, data = dict(base.origins), deep_merge(base.data, data)
    recipe = Recipe(data, "<python>", origins, base_dir)
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(recipe.data, keys, value, recipe.origins)
    return recipe


def validate(recipe: Recipe, registry) -> dict[str, Any]:
    """Check the whole recipe against the registry; every problem at once, as a RecipeError.

    Returns the bound top level: component builders and settings dataclass instances by key.
    Warnings (valid but probably not meant) are left in ``recipe.warnings``, one line each.
    """
    problems: list[str] = []
    warnings: list[str] = []
    data = {k: v for k, v in recipe.data.items() if k not in META_KEYS}
    bound = bind_table(registry, recipe_schema, data, recipe=recipe, path=(), problems=problems, what="the recipe",
                       warnings=warnings, key_hint=lambda key: nested_key(key, data, registry))
    recipe.warnings = warnings
    if problems:
        raise RecipeError(problems, warnings)
    return bound


def nested_key(key: str, data: Mapping[str, Any], registry) -> list[str]:
    """Where an unknown top-level ``key`` belongs: ``batch_size`` -> ``"training.batch_size"``.

    Looks through the settings tables and the components the recipe selects (their defaults when
    unset), two levels deep; a training-guide name (``learning_rate``) is looked up by its recipe name.
    """
    from modulm.schema import schema_of

    wanted = GUIDE_NAMES.get(key, key)
    found: list[str] = []

    def search(schema, spec: Any, prefix: str, depth: int) -> None:
        for param in schema.params:
            here = f"{prefix}.{param.name}"
            if param.name == wanted and param.settings is None and param.nested is None:
                found.append(here)
            if depth == 0:
                continue
            if param.settings is not None:
                search(schema_of(param.settings), {}, here, depth - 1)
            elif param.nested is not None and not param.nested.many:
                child = spec.get(param.name, param.default) if isinstance(spec, Mapping) else param.default
                name = child.get("component", param.default) if isinstance(child, Mapping) else child
                if isinstance(name, str) and (param.nested.kind, name) in registry:
                    search(registry.get(param.nested.kind, name).schema, child, here, depth - 1)

    search(schema_of(recipe_schema), data, "", 2)
    return [f.lstrip(".") for f in found]
