"""The pytest plugin: loading, options, backend selection, snapshots, marker errors.

No Docker engine runs on these machines: the container path is exercised up to the probe that
finds none, the URL mapping on the containers' getters and the pool's bookkeeping with a stand-in
container class, never with real containers.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

import libmsilo.drivers.mongo
import libmsilo.drivers.sql
import libmsilo.testing.backends as backends_module
import libmsilo.testing.plugin as plugin_module
from libmsilo.testing.backends import (
    CONTAINER_KINDS,
    ContainerPool,
    container_url,
    docker_problem,
    select_backends,
)
from tests.backends import DEFAULTS, reachable

# Inline pytester runs drop the modules they imported afterwards; compiled ones (SQLAlchemy's)
# do not survive a second import, so the drivers are imported here, once.
assert libmsilo.drivers.mongo and libmsilo.drivers.sql

ROOT = Path(__file__).resolve().parent.parent

TINY = """
import pytest
from libmsilo.testing import assert_stored, sip

def test_store(msilo_each):
    msilo_each.store(sip.message("sip:bob@example.org", "sip:alice@example.com", "hi"))
    assert_stored(msilo_each, "sip:alice@example.com", count=1, body="hi")

def test_backend_only(msilo_backend):
    assert msilo_backend.settings.db_url != "memory://"
"""


# ---- registration


def test_the_plugin_is_registered_once_under_its_entry_point_name(
    pytestconfig: pytest.Config,
) -> None:
    manager = pytestconfig.pluginmanager
    assert manager.get_plugin("msilo") is plugin_module
    names = [name for name, plugin in manager.list_name_plugin() if plugin is plugin_module]
    assert names == ["msilo"]
    assert manager.hasplugin("msilo")


def test_listing_the_plugin_by_module_path_as_well_is_harmless(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["libmsilo.testing.plugin"]')
    pytester.makepyfile(
        """
        import libmsilo.testing.plugin as module

        def test_once(pytestconfig, msilo):
            names = [n for n, p in pytestconfig.pluginmanager.list_name_plugin() if p is module]
            assert len(names) == 1
        """
    )
    pytester.runpytest("-p", "libmsilo.testing.plugin").assert_outcomes(passed=1)


def test_the_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(msilo): pass")
    result = pytester.runpytest("-p", "no:msilo")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'msilo' not found*"])


# ---- backend selection (pure)


def no_docker() -> str:
    return "no Docker engine answers at unix:///x.sock: refused"


def must_not_probe() -> str | None:
    raise AssertionError("the Docker probe runs only when no URL is given")


def test_urls_from_the_option_win_over_the_environment() -> None:
    env = {"MSILO_TEST_BACKEND": "redis://127.0.0.1:6379/1"}
    urls = ["postgresql+psycopg://h/db", "postgresql+psycopg://h/other", "mongomock://"]
    choices = select_backends(urls, env, must_not_probe)
    assert [(c.id, c.url) for c in choices] == [
        ("postgresql", urls[0]),
        ("postgresql2", urls[1]),
        ("mongomock", urls[2]),
    ]


def test_urls_from_the_environment_are_split_on_white_space() -> None:
    env = {"MSILO_TEST_BACKEND": " redis://127.0.0.1:6379/1\n redis+cluster://a:1,b:2 "}
    choices = select_backends([], env, must_not_probe)
    assert [(c.id, c.url) for c in choices] == [
        ("redis", "redis://127.0.0.1:6379/1"),
        ("redis+cluster", "redis+cluster://a:1,b:2"),
    ]


def test_containers_when_docker_answers() -> None:
    choices = select_backends([], {"MSILO_TEST_BACKEND": "  "}, lambda: None)
    assert [(c.id, c.container) for c in choices] == [(k, k) for k in CONTAINER_KINDS]
    assert set(CONTAINER_KINDS) == {"postgresql", "mariadb", "redis", "mongodb"}


def test_a_skip_naming_what_is_missing_otherwise() -> None:
    [choice] = select_backends([], {}, no_docker)
    assert choice.url is None and choice.container is None and choice.skip is not None
    assert "--msilo-backend URL" in choice.skip and "MSILO_TEST_BACKEND" in choice.skip
    assert "no Docker engine answers at unix:///x.sock" in choice.skip


def test_the_probe_names_the_missing_engine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    socket_path = tmp_path / "docker.sock"  # nothing listens there
    monkeypatch.setenv("DOCKER_HOST", f"unix://{socket_path}")
    problem = docker_problem(timeout=1)
    assert problem is not None and f"no Docker engine answers at unix://{socket_path}" in problem


def test_the_probe_names_a_missing_testcontainers(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "testcontainers.core.container", None)
    problem = docker_problem()
    assert problem is not None
    assert "not installed: pip install 'libmsilo[testing]'" in problem


def test_container_urls_follow_the_containers_getters() -> None:
    class Redis:
        def get_container_host_ip(self) -> str:
            return "127.0.0.1"

        def get_exposed_port(self, port: int) -> str:
            assert port == 6379
            return "49153"

    assert container_url("redis", Redis()) == "redis://127.0.0.1:49153/0"
    db = SimpleNamespace(get_connection_url=lambda: "postgresql+psycopg://test:test@h:5/test")
    assert container_url("postgresql", db) == "postgresql+psycopg://test:test@h:5/test"
    # the drivers the URLs name are those of libmsilo's extras
    assert CONTAINER_KINDS["postgresql"][3] == {"driver": "psycopg"}
    assert CONTAINER_KINDS["mariadb"][3] == {"dialect": "pymysql"}


def test_the_pool_starts_each_kind_once_and_stops_them_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []

    class Fake:
        def __init__(self, image: str, **kwargs: object) -> None:
            self.image, self.kwargs = image, kwargs

        def start(self) -> None:
            events.append(f"start {self.image}")

        def stop(self) -> None:
            events.append(f"stop {self.image}")

        def get_connection_url(self) -> str:
            if self.image.startswith("mongo"):
                raise RuntimeError("no port mapped")
            return f"postgresql+psycopg://test:test@127.0.0.1:5/test?{self.kwargs['driver']}"

    monkeypatch.setattr(backends_module, "_container_class", lambda module, name: Fake)
    pool = ContainerPool()
    url = pool.url("postgresql")
    assert url == "postgresql+psycopg://test:test@127.0.0.1:5/test?psycopg"
    assert pool.url("postgresql") == url
    with pytest.raises(RuntimeError):
        pool.url("mongodb")  # a container whose URL cannot be read is stopped at once
    assert events == ["start postgres:16-alpine", "start mongo:7", "stop mongo:7"]
    pool.stop()
    assert events[-1] == "stop postgres:16-alpine"
    pool.stop()
    assert len(events) == 4


# ---- the plugin in a test session of its own


def test_without_a_backend_backend_tests_skip_with_the_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MSILO_TEST_BACKEND", raising=False)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'none.sock'}")
    pytester.makepyfile(TINY)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*no real backend*"])
    result.stdout.fnmatch_lines(["*pass --msilo-backend URL or set MSILO_TEST_BACKEND*Docker*"])


def local_postgres() -> str:
    env, default = DEFAULTS["postgresql"]
    url = os.environ.get(env, default)
    if not reachable(url):
        pytest.skip(f"PostgreSQL at {url} is unreachable")  # tests/conftest.py fails CI earlier
    return url


def test_backend_option_runs_the_tests_on_each_url(pytester: pytest.Pytester) -> None:
    url = local_postgres()
    pytester.makepyfile(TINY)
    result = pytester.runpytest("-v", "--msilo-backend", url, "--msilo-backend", "mongomock://")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(
        [
            "*test_store?memory? PASSED*",
            "*test_store?postgresql? PASSED*",
            "*test_store?mongomock? PASSED*",
            "*test_backend_only?postgresql? PASSED*",
            "*test_backend_only?mongomock? PASSED*",
        ]
    )


def test_backend_from_the_environment(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MSILO_TEST_BACKEND", "mongomock://")
    pytester.makepyfile(TINY)
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_backend_only?mongomock? PASSED*"])


def test_each_backend_test_gets_a_table_of_its_own_dropped_afterwards(
    pytester: pytest.Pytester,
) -> None:
    url = local_postgres()
    pytester.makepyfile(
        f"""
        import sqlalchemy
        TABLES = []

        def test_one(msilo_backend):
            TABLES.append(msilo_backend.settings.db_table)

        def test_two(msilo_backend):
            TABLES.append(msilo_backend.settings.db_table)

        def test_dropped():
            assert len(set(TABLES)) == 2
            engine = sqlalchemy.create_engine({url!r})
            names = sqlalchemy.inspect(engine).get_table_names()
            engine.dispose()
            assert not set(TABLES) & set(names)
        """
    )
    result = pytester.runpytest("--msilo-backend", url, "-p", "no:randomly")
    result.assert_outcomes(passed=3)


def test_marker_misuse_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.msilo(db_url="sqlite:///x.db")
        def test_url(msilo):
            pass

        @pytest.mark.msilo(3)
        def test_positional(msilo):
            pass

        @pytest.mark.msilo(check_time=0)
        def test_bad_value(msilo):
            pass
        """
    )
    result = pytester.runpytest("--strict-markers")
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(
        [
            "*cannot set db_url/db_table*",
            "*takes MsiloSettings keyword arguments*",
            "*check_time: Input should be greater than 0*",
        ]
    )


SNAPSHOT_TEST = """
from libmsilo.testing import sip

def test_dump(msilo, msilo_phone, msilo_snapshot):
    msilo.store(sip.message("sip:bob@example.org", "sip:alice@example.com", "hi"))
    msilo_snapshot.check(msilo_phone("sip:alice@example.com").register())
"""


def test_snapshots_are_compared_by_default_and_written_on_request(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_snap=SNAPSHOT_TEST)
    missing = pytester.runpytest()
    missing.assert_outcomes(failed=1)
    missing.stdout.fnmatch_lines(["*does not exist; run pytest with --msilo-update-snapshots*"])
    pytester.runpytest("--msilo-update-snapshots").assert_outcomes(passed=1)
    data = (pytester.path / "snapshots" / "test_snap" / "test_dump.sip").read_bytes()
    assert data.startswith(b"MESSAGE sip:alice@192.0.2.") and data.endswith(b"] hi")
    assert b"\r\nContent-Length: 47\r\n\r\n" in data


def test_the_readme_first_policy_test_passes(pytester: pytest.Pytester) -> None:
    section = (ROOT / "README.md").read_text().split("### Test your messaging policies", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 16
    pytester.makepyfile(test_readme=code)
    pytester.runpytest("--strict-markers").assert_outcomes(passed=1)
