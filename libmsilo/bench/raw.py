"""The raw baselines: msilo's storage work written by hand against the bare database client.

Each baseline does what a hand-written msilo needs and no more: the same rows and indexes, one
round trip or transaction where a careful implementation would use one. libmsilo's numbers are
divided by these.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import tzinfo
from typing import Protocol

from ..drivers.schemes import scheme_of
from ..errors import SettingsError
from .workload import RawMessage, Row

__all__ = ["RawStore", "open_raw"]


class RawStore(Protocol):
    """One backend's hand-written msilo storage, on its own table (key prefix, collection)."""

    client: str  # the bare client library, e.g. "psycopg"

    def create(self) -> None:
        """Create the table and its indexes (the same DDL as libmsilo's)."""

    def drop(self) -> None:
        """Remove everything ``create`` and the benchmark made."""

    def bulk_load(self, rows: Iterable[Row]) -> None:
        """Seed rows quickly (COPY, multi-row INSERT, pipelines); not a measured path."""

    def analyze(self) -> None:
        """Refresh planner statistics after seeding (no-op where there is no planner)."""

    def server_version(self) -> str:
        """The server's (or embedded engine's) version, for the report."""

    def store(self, row: tuple[str, str, str, str, bytes, str], now: int) -> int:
        """Insert one message (quota off) and return its id."""

    def dump(
        self, username: str, domain: str, now: int, lease: int, token: str
    ) -> list[RawMessage]:
        """Claim the owner's deliverable messages (lease them) and render each."""

    def reply_ok(self, mid: int) -> None:
        """A 200 OK came back: delete the row."""

    def sweep(self, now: int, lease: int, token: str) -> list[RawMessage]:
        """Claim and render the due reminders of every owner."""

    def purge(self, now: int) -> int:
        """Delete the expired rows; return how many."""

    def close(self) -> None:
        """Close the connection."""


def open_raw(url: str, table: str, zone: tzinfo) -> RawStore:
    """The raw baseline for the backend ``url`` names, working on ``table``."""
    scheme = scheme_of(url)
    if scheme.family == "sql":
        from .raw_sql import open_raw_sql

        return open_raw_sql(url, table, zone)
    if scheme.backend == "redis":
        from .raw_redis import RawRedis

        return RawRedis(url, table, zone)
    if scheme.family == "mongo":
        from .raw_mongo import RawMongo

        return RawMongo(url, table, zone)
    raise SettingsError(f"bench: no raw baseline for {scheme.name!r} URLs")
