"""The schema-version life cycle every versioned driver follows, checked the same way for each."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from libmsilo.drivers.schema_version import SCHEMA_VERSION
from libmsilo.errors import SchemaOutdated, SchemaVersionError


def check_version_cycle(driver: Any, record: Callable[[int | None], None]) -> None:
    """On a created store: an older recorded version is refused until ``migrate`` (idempotent)
    takes it up; a newer one is refused by ``create_schema`` and ``migrate`` alike and never
    lowered; a store without a record (``record(None)`` removes it) is taken as current.
    ``record(v)`` writes version ``v`` into the store behind the driver's back."""
    assert driver.schema_version() == SCHEMA_VERSION
    record(1)
    with pytest.raises(SchemaOutdated, match="msilo migrate") as older:
        driver.create_schema()
    assert (older.value.found, older.value.expected) == (1, SCHEMA_VERSION)
    driver.migrate()
    driver.migrate()  # idempotent
    assert driver.schema_version() == SCHEMA_VERSION
    driver.create_schema()
    record(SCHEMA_VERSION + 1)
    for step in (driver.create_schema, driver.migrate):
        with pytest.raises(SchemaVersionError, match="upgrade libmsilo") as newer:
            step()
        assert not isinstance(newer.value, SchemaOutdated)
    assert driver.schema_version() == SCHEMA_VERSION + 1  # a newer store is never lowered
    record(None)  # a store from before versions were recorded
    driver.create_schema()
    assert driver.schema_version() == SCHEMA_VERSION
