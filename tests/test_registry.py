"""The driver registry: URL schemes, third-party drivers, missing extras."""

from __future__ import annotations

import importlib
import sys
import warnings
from importlib.metadata import EntryPoint

import pytest

from libmsilo import SettingsError, StoreLayout, open_driver, register_driver
from libmsilo.drivers import DriverOptions, url_scheme
from libmsilo.drivers.memory import MemoryDriver
from libmsilo.drivers.plumbing import DriverBase, ErrorTable, ping, storage_step
from libmsilo.drivers.schemes import SCHEMES, scheme_of
from libmsilo.errors import InvalidRequest, StorageError, StorageUnavailable


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("sqlite:///x.db", "sqlite"),
        ("postgresql+psycopg://u@h/db", "postgresql"),
        ("MySQL+pymysql://u@h/db", "mysql"),
        ("mariadb://u@h/db", "mariadb"),
        ("redis+cluster://h:7000,h:7001", "redis+cluster"),
        ("mongodb+srv://cluster.example.com/db", "mongodb+srv"),
        ("memory://", "memory"),
    ],
)
def test_url_scheme(url: str, scheme: str) -> None:
    assert url_scheme(url) == scheme


@pytest.mark.parametrize("url", ["msilo.db", "", "://x"])
def test_not_a_url(url: str) -> None:
    with pytest.raises(SettingsError, match="db_url"):
        open_driver(url)


def test_unknown_scheme() -> None:
    with pytest.raises(SettingsError, match="no driver for the URL scheme 'cassandra'"):
        open_driver("cassandra://h/ks")


def test_register_driver() -> None:
    seen: list[tuple[str, StoreLayout, DriverOptions]] = []

    def factory(url: str, layout: StoreLayout, options: DriverOptions) -> MemoryDriver:
        seen.append((url, layout, options))
        return MemoryDriver()

    register_driver("Custom", factory)
    driver = open_driver("custom://x", StoreLayout(table="inbox"), DriverOptions(timeout=2))
    assert isinstance(driver, MemoryDriver)
    assert seen == [("custom://x", StoreLayout(table="inbox"), DriverOptions(timeout=2))]


def test_entry_point_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = EntryPoint(
        name="viaentry", value="libmsilo.drivers.memory:open_memory", group="libmsilo.drivers"
    )
    monkeypatch.setattr(
        "libmsilo.drivers.entry_points",
        lambda group: [ep] if group == "libmsilo.drivers" else [],
    )
    assert isinstance(open_driver("viaentry://"), MemoryDriver)


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "libmsilo.drivers.redis", raising=False)
    monkeypatch.setitem(sys.modules, "redis", None)  # importing it now raises ImportError
    with pytest.raises(SettingsError, match=r"pip install 'libmsilo\[redis\]'"):
        open_driver("redis://127.0.0.1:6379/0")


# ---- the scheme table and the shared plumbing ---------------------------------------------------


def _extras() -> set[str]:
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    return set(data["project"]["optional-dependencies"])


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_every_scheme_names_a_factory_and_an_existing_extra(name: str) -> None:
    scheme = SCHEMES[name]
    assert scheme.name == name and url_scheme(f"{name}://x") == name
    assert callable(getattr(importlib.import_module(scheme.module), scheme.factory))
    assert scheme.extra is None or scheme.extra in _extras()
    assert scheme_of(f"{name}://x", scheme.family) is scheme


def test_scheme_of_a_family_refuses_other_schemes() -> None:
    with pytest.raises(SettingsError, match="not a sql URL scheme"):
        scheme_of("redis://h", "sql")
    with pytest.raises(SettingsError, match="not a built-in URL scheme"):
        scheme_of("cassandra://h")


def test_a_driver_without_ping_is_read_from_with_a_deprecation_warning() -> None:
    reads: list[int] = []

    class Legacy:
        def get(self, mid: int) -> None:
            reads.append(mid)

    with pytest.warns(DeprecationWarning, match="Legacy has no ping"):
        ping(Legacy())
    assert reads == [0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ping(MemoryDriver())  # a driver with ping(): no warning


class _Flaky(DriverBase):
    errors = ErrorTable(
        "flaky",
        unavailable=(ConnectionError,),
        failed=(LookupError,),
        invalid=(UnicodeError,),
        retryable=lambda exc: isinstance(exc, KeyError),
        tries=3,
    )

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.calls = 0

    @storage_step
    def get(self, mid: int) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (ConnectionRefusedError("refused"), StorageUnavailable),
        (IndexError("bad"), StorageError),
        (UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed"), InvalidRequest),
    ],
)
def test_the_error_table_translates_with_the_cause_kept(
    raised: BaseException, expected: type[Exception]
) -> None:
    driver = _Flaky([raised])
    with pytest.raises(expected) as info:
        driver.get(1)
    assert info.value.__cause__ is raised and driver.calls == 1


def test_retryable_failures_are_retried_up_to_the_tries() -> None:
    driver = _Flaky([KeyError("a"), KeyError("b")])
    assert driver.get(1) == "ok" and driver.calls == 3
    driver = _Flaky([KeyError(n) for n in range(3)])
    with pytest.raises(StorageError):  # KeyError is a LookupError: "failed" once out of tries
        driver.get(1)
    assert driver.calls == 3


def test_arguments_are_checked_before_the_step_runs() -> None:
    driver = _Flaky([])
    with pytest.raises(InvalidRequest):
        driver.get(None)  # type: ignore[arg-type]
    assert driver.get(-1) is None  # no row can have it: "not found" without asking
    assert driver.calls == 0
    # Anything the table does not name is raised as it is (a bug, not a backend failure).
    driver = _Flaky([ZeroDivisionError()])
    with pytest.raises(ZeroDivisionError):
        driver.get(1)
