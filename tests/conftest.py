"""Shared pytest configuration, and the ``backend`` fixture of the behaviour tests.

A test module that sets ``pytestmark = pytest.mark.usefixtures("backend")`` runs each of its
tests that builds a store with ``make_silo`` once per backend (memory, a SQLite file,
PostgreSQL, MariaDB, Redis, mongomock; ``MSILO_TEST_BEHAVIOUR_BACKENDS`` narrows the list); its
other tests run once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# The conformance suite lives in the package; rewrite its asserts for readable failures.
pytest.register_assert_rewrite("libmsilo.testing")

from tests import helpers  # noqa: E402 (after the assert rewrite registration)
from tests.backends import (  # noqa: E402
    DEFAULTS,
    DriverPool,
    behaviour_backends,
    in_ci,
    reachable,
)

# pytester runs the kit's plugin on small test files (tests/test_testing_plugin.py).
pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    """Run the policy kit's ``msilo_backend``/``msilo_each`` tests (examples/policies) on the
    local servers and mongomock, unless ``--msilo-backend``/``MSILO_TEST_BACKEND`` say otherwise.
    An unreachable server is left out on a developer machine and stops the run in CI."""
    manager = config.pluginmanager
    active = manager.has_plugin("msilo") or manager.has_plugin("libmsilo.testing.plugin")
    if not active and manager.is_blocked("msilo"):
        return  # -p no:msilo
    if not active:
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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A module with a ``backend`` fixture of its own (test_sql_driver) parametrizes it itself.
    if "backend" in metafunc.fixturenames and not hasattr(metafunc.module, "backend"):
        builds_a_store = "make_silo" in metafunc.function.__code__.co_names
        kinds = behaviour_backends() if builds_a_store else ["memory"]
        metafunc.parametrize("backend", kinds, indirect=True)


@pytest.fixture(scope="session")
def driver_pools() -> Iterator[dict[str, DriverPool]]:
    """One pool of empty drivers per backend, for the whole session."""
    pools: dict[str, DriverPool] = {}
    yield pools
    for pool in pools.values():
        pool.close()


@pytest.fixture
def backend(
    request: pytest.FixtureRequest,
    driver_pools: dict[str, DriverPool],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The backend name; ``make_silo`` opens its stores there for the test's duration."""
    kind: str = request.param
    if kind not in driver_pools:
        driver_pools[kind] = DriverPool(kind, tmp_path_factory.mktemp(f"backend-{kind}"))
    pool = driver_pools[kind]
    helpers.new_driver = pool
    try:
        yield kind
    finally:
        helpers.new_driver = helpers.MemoryDriver
        pool.release()
