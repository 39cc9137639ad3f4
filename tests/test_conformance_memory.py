"""The driver conformance suite on the in-memory driver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from libmsilo.drivers import Driver, open_driver
from libmsilo.testing import DriverConformance


class TestMemoryDriver(DriverConformance):
    @pytest.fixture
    def driver(self) -> Iterator[Driver]:
        d = open_driver("memory://")
        d.create_schema()
        yield d
        d.drop_schema()
        d.close()
