"""A fixture giving a fresh, empty driver of every kind: behaviour tests that go through a driver
(store, dump, reminders) run on each. Network backends fail in CI when unreachable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from libmsilo.drivers import Driver, StoreLayout, open_driver
from libmsilo.drivers.memory import MemoryDriver
from libmsilo.drivers.mongo import open_mongomock
from libmsilo.testing import unique_table
from tests.backends import backend_url

KINDS = ["memory", "sqlite", "postgresql", "mysql", "redis", "mongomock"]


@pytest.fixture(params=KINDS)
def any_driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Driver]:
    """A fresh driver with its schema created, dropped afterwards."""
    kind: str = request.param
    layout = StoreLayout(table=unique_table())
    driver: Driver
    if kind == "memory":
        driver = MemoryDriver()
    elif kind == "mongomock":
        driver = open_mongomock(unique_table("db"), layout, ttl_delay=None)
    elif kind == "sqlite":
        driver = open_driver(f"sqlite:///{tmp_path / 'store.db'}", layout)
    else:
        driver = open_driver(backend_url(kind), layout)
    driver.create_schema()
    try:
        yield driver
    finally:
        driver.drop_schema()
        driver.close()
