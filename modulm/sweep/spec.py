"""Sweep files: a base recipe, the points to run from it, and their stable run ids.

A sweep file is TOML data::

    base = "../base.toml"        # the recipe every point starts from (relative to this file)
    name = "lr"                  # runs go to <out>/<name>/<run-id>/ (default: the file's stem)
    seeds = [0, 1]               # optional: every point once per seed (system.seed)
    [overrides]                  # optional: applied to every point
    "training.max_iterations" = 200
    [grid]                       # the cross product of these values
    "optimizer.lr" = [1e-3, 3e-3]
    [[variant]]                  # named variants: a label and overrides
    label = "post-norm"
    overrides = { "model.block" = "postnorm" }
    [search]                     # or an Optuna search instead of grid/variants (modulm.sweep.search)

Grid and variants together give every variant at every grid point. Run ids name what a point
changes: ``lr=3e-3,batch_size=16,seed=0`` (the shortest unique tail of each key, values in a
canonical spelling), a variant by its label. :func:`validate_points` checks every point against
the registry before anything runs and reports all problems at once, each naming its point.
"""

from __future__ import annotations

import itertools
import math
import re
import sys
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Mapping

from modulm.errors import ModulmError, RecipeError
from modulm.recipe import check_override_words, recipe_tables
from modulm.tomlwrite import _value as toml_literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SWEEP_KEYS = ("base", "name", "seeds", "overrides", "grid", "variant", "search")
SEARCH_KEYS = ("sampler", "trials", "pruner", "seed", "space")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "none")
DIMENSIONS = ("log_uniform", "uniform", "int", "choice")
_UNSAFE = re.compile(r"[\s/\\:]+")


@dataclass(frozen=True)
class Dimension:
    """One search-space entry: ``kind`` is one of DIMENSIONS; ``values`` the bounds or the choices."""

    key: str
    kind: str
    values: tuple

    def extremes(self) -> list:
        """Values that exercise the whole range, for validating before the search starts."""
        return list(self.values)


@dataclass
class SearchSpec:
    sampler: str = "tpe"
    trials: int = 20
    pruner: str = "median"
    seed: int = 0
    space: dict[str, Dimension] = field(default_factory=dict)


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its id (also its directory name) and its own overrides (dotted key -> value)."""

    run_id: str
    overrides: dict[str, Any]


@dataclass
class SweepSpec:
    path: Path
    base: Path
    name: str
    common: dict[str, Any] = field(default_factory=dict)
    points: list[Point] = field(default_factory=list)
    search: SearchSpec | None = None
    cli_overrides: list[str] = field(default_factory=list)

    def override_strings(self, point: Point) -> list[str]:
        """The ``key=value`` overrides a point's run gets: common ones, the point's, then the command line's."""
        merged = {**self.common, **point.overrides}
        return [f"{key}={toml_literal(value)}" for key, value in merged.items()] + list(self.cli_overrides)


def format_value(value: Any) -> str:
    """A value as a run id shows it: floats canonically (``3e-3``, ``0.1``, ``1e30``), the rest plainly."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if not math.isfinite(value):
            return repr(value)
        if 1e-2 <= abs(value) < 1e4:
            return repr(value).removesuffix(".0")
        sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
        text = "".join(map(str, digits))
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return ("-" if sign else "") + f"{mantissa}e{exponent + len(text) - 1}"
    if isinstance(value, (list, tuple)):
        return "[" + ";".join(format_value(v) for v in value) + "]"
    return _UNSAFE.sub("_", str(value))


def short_names(keys: list[str]) -> dict[str, str]:
    """Each dotted key's shortest tail that no other key shares (``optimizer.lr`` -> ``lr``)."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(o != key and (o == tail or o.endswith("." + tail)) for o in keys):
                break
        names[key] = tail
    return names


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys: ``{"model": {"block": "x"}}`` -> ``{"model.block": "x"}``."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def load_sweep(path: str | Path, cli_overrides: list[str] | tuple[str, ...] = ()) -> SweepSpec:
    """Read a sweep file; every problem with the file itself at once (as a RecipeError)."""
    check_override_words(path, cli_overrides)
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():  # /dev/zero would be read forever
        raise ModulmError(f"{path}: not a regular file, expected a TOML sweep file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark is skipped
    except FileNotFoundError:
        raise ModulmError(f"{path}: sweep file not found") from None
    except (IsADirectoryError, UnicodeDecodeError):
        raise ModulmError(f"{path}: not a TOML sweep file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ModulmError(f"{path}: invalid TOML: {exc}") from None
    tables = [t for t in recipe_tables() if t in data]
    if "base" not in data and tables:
        raise ModulmError(f"{path}: a recipe, not a sweep file (it has {', '.join(f'[{t}]' for t in tables)}): train it "
                          f"with modulm run {path}, or sweep it from a file of its own with base = \"{path.name}\" and "
                          "a [grid] (docs/cli.md#sweeps-modulm-sweep)")
    problems: list[str] = []

    def bad(key: str, message: str) -> None:
        problems.append(f"{path}: {key}: {message}")

    for key in data:
        if key not in SWEEP_KEYS:
            bad(key, f"unknown key; valid keys: {', '.join(SWEEP_KEYS)}")
    base = data.get("base")
    if not isinstance(base, str) or not base:
        bad("base", "missing or not a string: the recipe file every point starts from")
        base = ""
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name or _UNSAFE.search(name):
        bad("name", f"expected a directory name without spaces or slashes, got {name!r}")
    seeds = data.get("seeds", [])
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        bad("seeds", f"expected an array of integers, got {seeds!r}")
        seeds = []
    common = _table(data, "overrides", bad)
    grid = _table(data, "grid", bad)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            bad(f"grid.{key}", f"expected a non-empty array of values, got {values!r}")
    variants = _variants(data.get("variant", []), bad)
    search = _search(data["search"], bad) if "search" in data else None
    if search is not None and (grid or variants or seeds):
        bad("search", "a sweep file has either [search] or grid/variants/seeds, not both")
    if not (grid or data.get("variant") or "search" in data):
        bad("grid", "nothing to run: give [grid], [[variant]] or [search]")
    if problems:
        raise RecipeError(problems)
    spec = SweepSpec(path, (path.parent / base), name, common, search=search, cli_overrides=list(cli_overrides))
    spec.points = [] if search else _points(grid, variants, seeds)
    _check_cli_overrides(spec, list(grid) + [k for v in variants for k in v[1]] + (list(search.space) if search else []))
    return spec


def _table(data: Mapping, key: str, bad) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        bad(key, f"expected a table, got {value!r}")
        return {}
    return flatten(value)


def _variants(entries: Any, bad) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(entries, list):
        bad("variant", "expected [[variant]] tables")
        return []
    variants, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"variant[{i}]"
        if not isinstance(entry, Mapping):
            bad(where, "expected a table with label and overrides")
            continue
        label, overrides = entry.get("label"), entry.get("overrides", {})
        for key in entry:
            if key not in ("label", "overrides"):
                bad(f"{where}.{key}", "unknown key; a variant has label and overrides")
        if not isinstance(label, str) or not label or _UNSAFE.search(label) or "=" in label or "," in label:
            bad(f"{where}.label", f"expected a short name without spaces, slashes, '=' or ',', got {label!r}")
            continue
        if label in seen:
            bad(f"{where}.label", f"{label!r} is used by another variant")
        if not isinstance(overrides, Mapping):
            bad(f"{where}.overrides", "expected a table of key = value")
            overrides = {}
        seen.add(label)
        variants.append((label, flatten(overrides)))
    return variants


def _search(table: Any, bad) -> SearchSpec | None:
    if not isinstance(table, Mapping):
        bad("search", "expected a table")
        return None
    spec = SearchSpec()
    for key in table:
        if key not in SEARCH_KEYS:
            bad(f"search.{key}", f"unknown key; valid keys: {', '.join(SEARCH_KEYS)}")
    for key, allowed in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
        value = table.get(key, getattr(spec, key))
        if value not in allowed:
            bad(f"search.{key}", f"{value!r} is not one of {', '.join(allowed)}")
        setattr(spec, key, value)
    for key in ("trials", "seed"):
        value = table.get(key, getattr(spec, key))
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "trials" else 0):
            bad(f"search.{key}", f"expected a {'positive' if key == 'trials' else 'non-negative'} integer, got {value!r}")
        setattr(spec, key, value)
    space = table.get("space", {})
    if not isinstance(space, Mapping) or not space:
        bad("search.space", "expected a table of \"key\" = { log_uniform | uniform | int | choice = [...] }")
        return spec
    for key, entry in flatten_space(space).items():
        where = f"search.space.{key}"
        if not isinstance(entry, Mapping) or len(entry) != 1 or next(iter(entry)) not in DIMENSIONS:
            bad(where, f"expected one of {', '.join(DIMENSIONS)}, e.g. {{ log_uniform = [1e-4, 3e-2] }}")
            continue
        kind, values = next(iter(entry.items()))
        if not isinstance(values, list) or not values:
            bad(where, f"{kind}: expected an array, got {values!r}")
            continue
        if kind != "choice":
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            if len(values) != 2 or not numeric or values[0] >= values[1] or (kind == "log_uniform" and values[0] <= 0) \
                    or (kind == "int" and not all(isinstance(v, int) for v in values)):
                bad(where, f"{kind}: expected [low, high] with low < high"
                           f"{' > 0' if kind == 'log_uniform' else ''}{' (integers)' if kind == 'int' else ''}, got {values!r}")
                continue
        spec.space[key] = Dimension(key, kind, tuple(values))
    return spec


def flatten_space(space: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Search-space keys as dotted keys; a table holding no table is an entry (``{ log_uniform = [...] }``)."""
    flat: dict[str, Any] = {}
    for key, value in space.items():
        if isinstance(value, Mapping) and any(isinstance(v, Mapping) for v in value.values()):
            flat.update(flatten_space(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _points(grid: dict[str, list], variants: list[tuple[str, dict]], seeds: list[int]) -> list[Point]:
    names = short_names(list(grid))
    points = []
    for label, variant in variants or [(None, {})]:
        for combo in itertools.product(*grid.values()):
            values = dict(zip(grid, combo))
            for seed in seeds or [None]:
                parts = ([label] if label else []) + [f"{names[k]}={format_value(v)}" for k, v in values.items()]
                overrides = {**variant, **values}
                if seed is not None:
                    parts.append(f"seed={seed}")
                    overrides["system.seed"] = seed
                points.append(Point(",".join(parts), overrides))
    return points


def _check_cli_overrides(spec: SweepSpec, swept: list[str]) -> None:
    for text in spec.cli_overrides:
        key = text.partition("=")[0].strip()
        if key in swept or (key == "system.seed" and any("system.seed" in p.overrides for p in spec.points)):
            raise ModulmError(f"override {text!r}: {key} is what the sweep {spec.path} varies; edit the sweep file instead")


def trial_point(spec: SweepSpec, number: int, params: Mapping[str, Any]) -> Point:
    """The point an Optuna trial runs: id ``trial=N``, overrides its sampled parameters."""
    return Point(f"trial={number}", dict(params))


def validation_points(spec: SweepSpec) -> list[Point]:
    """The points to check before running: every point, or for a search every bound and choice."""
    if spec.search is None:
        return spec.points
    firsts = {key: dim.values[0] for key, dim in spec.search.space.items()}
    points = []
    for key, dim in spec.search.space.items():
        for value in dim.extremes():
            points.append(Point(f"{key}={format_value(value)}", {**firsts, key: value}))
    return points


def validate_points(spec: SweepSpec, registry, overrides_for: Callable[[Point], list[str]] | None = None) -> None:
    """Load and validate every point's recipe; raise one RecipeError naming each failing point.

    A problem shared by several points is one line naming the first (``point ID (and N more)``).
    ``overrides_for(point)`` gives the overrides a point's run gets (default: ``spec.override_strings``).
    """
    from modulm.recipe import load_recipe, validate

    if not spec.base.is_file():
        raise ModulmError(f"{spec.path}: base: recipe file {spec.base} not found")
    points_with: dict[str, list[str]] = {}  # problem -> the points that have it, in order
    for point in validation_points(spec):
        try:
            validate(load_recipe(spec.base, (overrides_for or spec.override_strings)(point)), registry)
        except RecipeError as exc:
            for problem in exc.problems:
                points_with.setdefault(problem, []).append(point.run_id)
        except ModulmError as exc:
            points_with.setdefault(str(exc), []).append(point.run_id)
    if points_with:
        raise RecipeError([f"{spec.path}: point {ids[0]}{f' (and {len(ids) - 1} more)' if len(ids) > 1 else ''}: "
                           f"{problem}" for problem, ids in points_with.items()])
