"""The driver conformance suite on the MongoDB driver.

Here it runs on mongomock (no MongoDB server exists on these machines); with
``MSILO_TEST_MONGO_URL`` set it also runs on that server. The suite's clock is fixed in 2023, so
its rows would look long expired to a TTL index working on the real clock: both fixtures open
the driver without the TTL backstop (``tests/test_mongo_driver.py`` covers the TTL index).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pymongo import MongoClient

from libmsilo.drivers import DriverOptions, StoreLayout
from libmsilo.drivers.mongo import MongoDriver, open_mongomock
from libmsilo.testing import DriverConformance, unique_table
from tests.backends import backend_url


class TestMongomockDriver(DriverConformance):
    @pytest.fixture
    def driver(self) -> Iterator[MongoDriver]:
        d = open_mongomock(unique_table("db"), StoreLayout(table=unique_table()), ttl_delay=None)
        d.create_schema()
        yield d
        d.drop_schema()
        d.close()


class TestMongoServerDriver(DriverConformance):
    @pytest.fixture
    def driver(self) -> Iterator[MongoDriver]:
        url = backend_url("mongo")  # skips when MSILO_TEST_MONGO_URL is not set
        timeout = DriverOptions().timeout
        client: MongoClient[dict[str, object]] = MongoClient(
            url, serverSelectionTimeoutMS=int(timeout * 1000)
        )
        database = client.get_default_database("msilo_test")
        d = MongoDriver(
            database,
            StoreLayout(table=unique_table()),
            client=client,
            ttl_delay=None,
        )
        d.create_schema()
        yield d
        d.drop_schema()
        d.close()
