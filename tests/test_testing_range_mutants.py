"""modulm.testing's range check rejects components (and cores) whose declared ranges are not enforced.

Each mutant breaks one rule; each test names the rule the check must report (``match=``).
"""

from __future__ import annotations

from typing import Annotated

import annotated_types as at
import pytest
from torch import nn

from modulm.constraints import checks
from modulm.testing import check_declared_ranges
from tests.kit_support import REGISTRY


def predicate_ranged(scale: Annotated[float, at.Predicate(lambda v: v > 0)] = 1.0, *, d_model: int):
    """A norm whose range is a predicate: validation cannot enforce it."""
    return nn.Identity()


def default_outside(scale: Annotated[float, at.Gt(0)] = 0.0, *, d_model: int):
    """A norm whose default lies outside its own declared range."""
    return nn.Identity()


@checks(lambda p: ["scale must be at least 2"] if p["scale"] < 2 else [])
def rule_refuses_defaults(scale: Annotated[float, at.Gt(0)] = 1.0, *, d_model: int):
    """A norm whose cross-field rule refuses its own defaults."""
    return nn.Identity()


def unresolvable(scale: Annotated[float, NotImportedMarker(0)] = 1.0, *, d_model: int):  # noqa: F821
    """A norm whose range names a marker its module never imported: nothing is checked."""
    return nn.Identity()


@pytest.mark.parametrize("mutant, rule", [(predicate_ranged, "does not enforce"), (unresolvable, "cannot be resolved"),
                                           (default_outside, "outside its own range"),
                                           (rule_refuses_defaults, "do not validate")])
def test_range_check_rejects(mutant, rule):
    with pytest.raises(AssertionError, match=rule):
        check_declared_ranges("norm", mutant)


def test_range_check_rejects_a_validator_that_ignores_ranges(monkeypatch):
    """A core whose validation forgot the ranges: the kit check on a built-in must notice."""
    import modulm.validate

    check_declared_ranges("optimizer", "adamw", registry=REGISTRY)
    monkeypatch.setattr(modulm.validate, "violation", lambda value, constraints: None)
    with pytest.raises(AssertionError, match="validation did not refuse it"):
        check_declared_ranges("optimizer", "adamw", registry=REGISTRY)


def test_range_check_rejects_a_validator_that_refuses_the_edges(monkeypatch):
    import modulm.validate

    monkeypatch.setattr(modulm.validate, "violation", lambda value, constraints: "must be elsewhere")
    with pytest.raises(AssertionError, match="do not validate|but was refused"):
        check_declared_ranges("optimizer", "sgd", registry=REGISTRY)
