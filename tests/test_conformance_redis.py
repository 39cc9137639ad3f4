"""The driver conformance suite on standalone Redis and on a 3-master Redis Cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from libmsilo.drivers import Driver, StoreLayout, open_driver
from libmsilo.testing import DriverConformance, unique_table
from tests.backends import backend_url
from tests.redis_cluster import redis_cluster_url

__all__ = ["redis_cluster_url"]  # the fixture, imported for pytest


def _fresh(url: str) -> Iterator[Driver]:
    d = open_driver(url, StoreLayout(table=unique_table("silo_")))
    d.create_schema()
    try:
        yield d
    finally:
        d.drop_schema()
        d.close()


class TestRedisStandalone(DriverConformance):
    @pytest.fixture
    def driver(self) -> Iterator[Driver]:
        yield from _fresh(backend_url("redis"))


class TestRedisCluster(DriverConformance):
    @pytest.fixture
    def driver(self, redis_cluster_url: str) -> Iterator[Driver]:
        yield from _fresh(redis_cluster_url)
