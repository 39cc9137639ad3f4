"""The driver conformance suite on the SQL driver: SQLite (a file), PostgreSQL and MariaDB."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from libmsilo.drivers import Driver, DriverOptions, StoreLayout, open_driver
from libmsilo.testing import DriverConformance, unique_table
from tests.backends import backend_url


def _open(url: str) -> Iterator[Driver]:
    d = open_driver(url, StoreLayout(table=unique_table()), DriverOptions(timeout=10))
    d.create_schema()
    try:
        yield d
    finally:
        d.drop_schema()
        d.close()


class TestSqliteDriver(DriverConformance):
    @pytest.fixture
    def driver(self, tmp_path: Path) -> Iterator[Driver]:
        yield from _open(f"sqlite:///{tmp_path / 'msilo.db'}")


class TestSqliteMemoryDriver(DriverConformance):
    @pytest.fixture
    def driver(self) -> Iterator[Driver]:
        yield from _open("sqlite://")


class TestPostgresDriver(DriverConformance):
    @pytest.fixture
    def driver(self) -> Iterator[Driver]:
        yield from _open(backend_url("postgresql"))


class TestMysqlDriver(DriverConformance):
    @pytest.fixture
    def driver(self) -> Iterator[Driver]:
        yield from _open(backend_url("mysql"))
