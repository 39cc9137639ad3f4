"""The pytest plugin of libmsilo (entry point ``pytest11``: ``msilo``; disable with
``-p no:msilo``).

Fixtures: ``msilo_clock``, ``msilo`` (memory store), ``msilo_backend`` (real backends),
``msilo_each`` (memory, then each real backend), ``msilo_network`` and ``msilo_phone``
(simulated phones), ``msilo_snapshot`` (exact bytes sent). ``@pytest.mark.msilo(**settings)``
overrides settings; options ``--msilo-backend URL`` and ``--msilo-update-snapshots``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..silo import Silo
from .backends import BACKEND_ENV, BackendChoice, ContainerPool, docker_problem, select_backends
from .clock import FakeClock
from .phone import PhoneNetwork, SimulatedPhone
from .silos import open_test_silo
from .snapshots import SnapshotChecker

__all__ = [
    "msilo",
    "msilo_backend",
    "msilo_clock",
    "msilo_each",
    "msilo_network",
    "msilo_phone",
    "msilo_snapshot",
]

#: The name of the ``pytest11`` entry point (``-p no:msilo`` disables the plugin).
ENTRY_POINT = "msilo"

_CHOICES = pytest.StashKey[list[BackendChoice]]()
_SNAPSHOTS = pytest.StashKey[dict[Path, bytes]]()
_MEMORY = BackendChoice("memory", url="memory://")
# The fixtures whose Silo the phones and the network attach to, most specific first.
_SILO_FIXTURES = ("msilo_each", "msilo_backend", "msilo")


def pytest_plugin_registered(
    plugin: object, plugin_name: str, manager: pytest.PytestPluginManager
) -> None:
    # Registered under one name, this module would be refused under the other (pluggy raises):
    # the entry point and pytest_plugins / -p with the module path each become a no-op then.
    if plugin is not sys.modules[__name__] or plugin_name not in (ENTRY_POINT, __name__):
        return
    other = __name__ if plugin_name == ENTRY_POINT else ENTRY_POINT
    if manager.get_plugin(other) is None:
        manager.set_blocked(other)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("msilo", "libmsilo policy tests")
    group.addoption(
        "--msilo-backend",
        action="append",
        default=[],
        metavar="URL",
        help=f"run msilo_backend/msilo_each tests on this db_url (repeatable; else ${BACKEND_ENV}"
        ", else testcontainers when a Docker engine answers)",
    )
    group.addoption(
        "--msilo-update-snapshots",
        action="store_true",
        default=False,
        help="write the msilo_snapshot files instead of comparing with them",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "msilo(**settings): MsiloSettings values for the msilo fixtures of a test"
    )
    config.stash[_SNAPSHOTS] = {}


def backend_choices(config: pytest.Config) -> list[BackendChoice]:
    """The real backends of this session (chosen once; see :mod:`libmsilo.testing.backends`)."""
    if _CHOICES not in config.stash:
        urls: list[str] = config.getoption("msilo_backend") or []
        config.stash[_CHOICES] = select_backends(urls, os.environ, docker_problem)
    return config.stash[_CHOICES]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "msilo_store" in metafunc.fixturenames:
        first = [_MEMORY] if "msilo_each" in metafunc.fixturenames else []
        choices = first + backend_choices(metafunc.config)
        metafunc.parametrize("msilo_store", choices, ids=[c.id for c in choices], indirect=True)


def _settings_values(node: pytest.Item) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for mark in reversed(list(node.iter_markers("msilo"))):  # the closest marker wins
        if mark.args:
            raise pytest.UsageError("@pytest.mark.msilo takes MsiloSettings keyword arguments")
        values.update(mark.kwargs)
    if "db_url" in values or "db_table" in values:
        raise pytest.UsageError(
            "@pytest.mark.msilo cannot set db_url/db_table: use msilo_backend or --msilo-backend"
        )
    return values


@pytest.fixture
def msilo_clock(request: pytest.FixtureRequest) -> FakeClock:
    """A fake clock at Monday 2026-01-05 09:00 UTC, in the zone of the test's ``timezone``
    setting (UTC by default); the test's Silos read the time from it."""
    zone = _settings_values(request.node).get("timezone") or "UTC"
    return FakeClock(zone=zone)


def _open(
    request: pytest.FixtureRequest, choice: BackendChoice, clock: FakeClock
) -> Iterator[Silo]:
    if choice.skip is not None:
        pytest.skip(choice.skip)
    url = choice.url
    if url is None:
        assert choice.container is not None
        pool: ContainerPool = request.getfixturevalue("msilo_containers")
        url = pool.url(choice.container)
    with open_test_silo(url, clock, **_settings_values(request.node)) as silo:
        yield silo


@pytest.fixture
def msilo(request: pytest.FixtureRequest, msilo_clock: FakeClock) -> Iterator[Silo]:
    """A Silo on a fresh memory store with the test's clock and ``@pytest.mark.msilo``
    settings (hermetic: ``MSILO_*`` variables are ignored)."""
    yield from _open(request, _MEMORY, msilo_clock)


@pytest.fixture
def msilo_store(request: pytest.FixtureRequest) -> BackendChoice:
    """(internal) The store of this parametrization of ``msilo_backend`` / ``msilo_each``."""
    choice: BackendChoice = request.param
    return choice


@pytest.fixture
def msilo_backend(
    request: pytest.FixtureRequest, msilo_store: BackendChoice, msilo_clock: FakeClock
) -> Iterator[Silo]:
    """``msilo`` on each real backend (a table of its own per test); skipped with the reason
    when there is none."""
    if msilo_store is _MEMORY:
        pytest.skip("msilo_backend: the memory store of msilo_each is no real backend")
    yield from _open(request, msilo_store, msilo_clock)


@pytest.fixture
def msilo_each(
    request: pytest.FixtureRequest, msilo_store: BackendChoice, msilo_clock: FakeClock
) -> Iterator[Silo]:
    """``msilo`` on the memory store, then on each real backend: one test, every store."""
    yield from _open(request, msilo_store, msilo_clock)


@pytest.fixture(scope="session")
def msilo_containers() -> Iterator[ContainerPool]:
    """The testcontainers started for this session (stopped at its end)."""
    pool = ContainerPool()
    yield pool
    pool.stop()


@pytest.fixture
def msilo_network(request: pytest.FixtureRequest) -> PhoneNetwork:
    """The simulated phones of the test's Silo (``msilo_each``, ``msilo_backend`` or
    ``msilo``, whichever the test uses)."""
    name = next((n for n in _SILO_FIXTURES if n in request.fixturenames), "msilo")
    silo: Silo = request.getfixturevalue(name)
    return PhoneNetwork(silo)


@pytest.fixture
def msilo_phone(msilo_network: PhoneNetwork) -> Callable[..., SimulatedPhone]:
    """``msilo_phone("sip:bob@example.com", contact=None)``: the simulated phone of an AOR."""
    return msilo_network.phone


@pytest.fixture
def msilo_snapshot(request: pytest.FixtureRequest) -> SnapshotChecker:
    """Checks messages against ``snapshots/<module>/<test>.sip`` beside the test file."""
    name = request.node.originalname if isinstance(request.node, pytest.Function) else "test"
    if request.cls is not None:
        name = f"{request.cls.__name__}.{name}"
    return SnapshotChecker(
        request.path.parent / "snapshots" / request.path.stem,
        name,
        update=bool(request.config.getoption("msilo_update_snapshots")),
        seen=request.config.stash[_SNAPSHOTS],
    )
