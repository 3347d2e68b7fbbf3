"""Shared test set-up: hypothesis profiles, a cache directory of the session's own, and a fresh
plugin manager per test that wants one."""

import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=12, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None)
_SESSION_CACHE = None


def pytest_configure(config):
    """Data caches and the CPU matmul timing (``$MODULM_CACHE_DIR``) go to a directory of this test
    session's, inherited by the CLI subprocesses, unless the caller chose one."""
    global _SESSION_CACHE
    if not os.environ.get("MODULM_CACHE_DIR"):
        _SESSION_CACHE = tempfile.mkdtemp(prefix="modulm-test-cache-")
        os.environ["MODULM_CACHE_DIR"] = _SESSION_CACHE


def pytest_unconfigure(config):
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
        os.environ.pop("MODULM_CACHE_DIR", None)


settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def registry():
    """A registry filled from the installed entry points (the built-in plugins)."""
    from modulm import plugins

    return plugins.load(autoload=True, env={}).registry
