"""The driver registry: URL schemes, third-party drivers, missing extras."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint

import pytest

from libmsilo import SettingsError, StoreLayout, open_driver, register_driver
from libmsilo.drivers import DriverOptions, url_scheme
from libmsilo.drivers.memory import MemoryDriver


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
