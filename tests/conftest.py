"""Shared pytest configuration."""

from __future__ import annotations

import os

import pytest

from tests.backends import DEFAULTS, in_ci, reachable

# pytester runs the kit's plugin on small test files (tests/test_testing_plugin.py).
pytest_plugins = ["pytester"]

# The conformance suite lives in the package; rewrite its asserts for readable failures.
pytest.register_assert_rewrite("libmsilo.testing")


def pytest_configure(config: pytest.Config) -> None:
    """Run the policy kit's ``msilo_backend``/``msilo_each`` tests (examples/policies) on the
    local servers and mongomock, unless ``--msilo-backend``/``MSILO_TEST_BACKEND`` say otherwise.
    An unreachable server is left out on a developer machine and stops the run in CI."""
    manager = config.pluginmanager
    if manager.is_blocked("msilo"):
        return  # -p no:msilo
    if not manager.has_plugin("msilo"):
        raise pytest.UsageError(
            "libmsilo's pytest plugin (entry point pytest11 'msilo') is not installed; an "
            "editable install made before it existed lacks it: run pip install -e '.[dev]' again"
        )
    if config.getoption("msilo_backend") or os.environ.get("MSILO_TEST_BACKEND"):
        return
    urls = []
    for kind in ("postgresql", "mysql", "redis"):
        env, default = DEFAULTS[kind]
        url = os.environ.get(env, default)
        if reachable(url):
            urls.append(url)
        elif in_ci():
            raise pytest.UsageError(f"{kind} backend at {url} is unreachable (set {env})")
    config.option.msilo_backend = [*urls, "mongomock://"]
