"""libmsilo's schema versions: what each one adds, and the check every driver makes.

Each store records the version of the libmsilo schema it holds (SQL: a row of the table
``msilo_version``; MongoDB: a document of ``<table>_counters``; Redis: the key ``{P:version}``).
``create_schema`` creates the current version or accepts a store already at it, and refuses an
older one with :class:`~libmsilo.errors.SchemaOutdated`; ``migrate`` (``msilo migrate``) takes a
store up one version at a time. Version 0 is a C module's ``silo`` table (OpenSIPS version 6,
Kamailio version 8), which only SQL stores can hold.

A new version is a new entry in :data:`VERSIONS` plus its step in each driver: the SQL columns it
adds in :data:`.sql_schema.VERSION_COLUMNS`; MongoDB and Redis, being schemaless, only record it
unless their documents or keys change shape.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..errors import SchemaOutdated, SchemaVersionError

__all__ = ["SCHEMA_VERSION", "VERSIONS", "Versioned", "check_version"]

#: What each libmsilo schema version adds to the one before it.
VERSIONS: dict[int, str] = {
    1: "lease columns (lease_token, lease_until, attempts), expiry and send-time indexes",
    2: "Kamailio's extra_hdrs and callid columns",
}
#: The version this libmsilo creates and uses.
SCHEMA_VERSION = max(VERSIONS)


def check_version(found: int, store: str) -> None:
    """Raise unless ``found``, the version ``store`` holds, is :data:`SCHEMA_VERSION`."""
    if found < SCHEMA_VERSION:
        raise SchemaOutdated(
            f"{store} holds libmsilo schema version {found}; this libmsilo needs version "
            f"{SCHEMA_VERSION}: run `msilo migrate` (or libmsilo.migrate()) to upgrade it",
            found,
            SCHEMA_VERSION,
        )
    if found > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{store} holds libmsilo schema version {found}, newer than this libmsilo's "
            f"{SCHEMA_VERSION}: upgrade libmsilo",
            found,
            SCHEMA_VERSION,
        )


@runtime_checkable
class Versioned(Protocol):
    """A driver that can tell the schema version its store holds (every built-in one)."""

    def schema_version(self) -> int | None:
        """The store's libmsilo schema version; None when it has none yet."""
