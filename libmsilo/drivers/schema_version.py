"""libmsilo's schema versions: what each one adds, and the check every driver makes.

Each store records the version of the libmsilo schema it holds (SQL: a row of the table
``msilo_version``; MongoDB: a document of ``<table>_counters``; Redis: the key ``{P:version}``).
``create_schema`` creates the current version or accepts a store already at it, and refuses an
older one with :class:`~libmsilo.errors.SchemaOutdated`; ``migrate`` (``msilo migrate``) takes a
store up one version at a time. Version 0 is a C module's ``silo`` table (OpenSIPS version 6,
Kamailio version 8), which only SQL stores can hold.

A new version is a new entry in :data:`VERSIONS` plus its step in each driver: the SQL columns it
adds in :data:`.sql_schema.VERSION_COLUMNS`; MongoDB and Redis, being schemaless, only record it
unless their documents or keys change shape: :class:`RecordedVersion` is their frame.
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

from ..errors import SchemaOutdated, SchemaVersionError
from .plumbing import DriverBase, storage_step

__all__ = ["SCHEMA_VERSION", "VERSIONS", "RecordedVersion", "Versioned", "check_version"]

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


class RecordedVersion(DriverBase):
    """The version steps of a schemaless store that records its version as one value (Redis,
    MongoDB). A driver names its store (:attr:`_store_kind`, :attr:`_store_name`) and reads,
    seeds and raises that value; :meth:`_settle_version` ends its ``create_schema`` and
    :meth:`_migrate_version` is its ``migrate``'s version step."""

    #: What the store is, in errors: "Redis store", "MongoDB collection".
    _store_kind: ClassVar[str]
    #: Its name (the layout's table).
    _store_name: str

    def _read_version(self) -> int | bytes | None:
        """The recorded version as stored; None when none is."""
        raise NotImplementedError

    def _seed_version(self) -> None:
        """Record :data:`SCHEMA_VERSION` unless a version is recorded."""
        raise NotImplementedError

    def _raise_version(self) -> int | bytes | None:
        """Record :data:`SCHEMA_VERSION` unless a higher version is recorded; the version
        recorded before or after (they differ only when it was lower)."""
        raise NotImplementedError

    def _describe(self) -> str:
        return f"the {self._store_kind} {self._store_name!r}"

    @storage_step
    def schema_version(self) -> int | None:
        """The store's libmsilo schema version; None when none is recorded."""
        found = self._read_version()
        return None if found is None else int(found)

    def _settle_version(self) -> None:
        """Record the version of a store that has none (one made before versions were recorded
        holds the same data: it is current); refuse a store at another version."""
        self._seed_version()
        found = self.schema_version()
        check_version(SCHEMA_VERSION if found is None else found, self._describe())

    def _migrate_version(self) -> None:
        """Take the store up to :data:`SCHEMA_VERSION`; refuse one at a newer version."""
        found = self._raise_version()
        if found is not None and int(found) > SCHEMA_VERSION:
            check_version(int(found), self._describe())
