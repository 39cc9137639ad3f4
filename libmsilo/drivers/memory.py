"""In-process driver: a dict and a lock. The reference for policy unit tests (``memory://``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace

from .base import NewMessage, ReleaseResult, StoredMessage, StoreLayout, StoreTotals
from .plumbing import DriverBase, storage_step
from .schema_version import SCHEMA_VERSION

__all__ = ["MemoryDriver", "open_memory"]


class MemoryDriver(DriverBase):
    """Keeps every row in a dict; each method runs under one lock, so every step is atomic."""

    def __init__(self) -> None:
        self._rows: dict[int, StoredMessage] = {}
        self._next_mid = 1
        self._lock = threading.Lock()

    def create_schema(self) -> None:
        """Nothing to create."""

    def drop_schema(self) -> None:
        """Forget every row."""
        with self._lock:
            self._rows.clear()

    def migrate(self) -> None:
        """Nothing to migrate."""

    def schema_version(self) -> int:
        """Always the current version: nothing outlives the process."""
        return SCHEMA_VERSION

    def _owned(self, username: str, domain: str) -> Iterator[StoredMessage]:
        for row in self._rows.values():
            if row.username == username and row.domain == domain:
                yield row

    @storage_step
    def insert(self, msg: NewMessage, max_messages: int = 0) -> int | None:
        """Store ``msg`` unless its owner is at quota."""
        with self._lock:
            if max_messages > 0:
                live = sum(
                    1 for r in self._owned(msg.username, msg.domain) if r.exp_time > msg.inc_time
                )
                if live >= max_messages:
                    return None
            mid = self._next_mid
            self._next_mid += 1
            self._rows[mid] = StoredMessage.from_new(msg, mid)
            return mid

    def _lease(
        self,
        eligible: Callable[[StoredMessage], bool],
        now: int,
        lease_until: int,
        token: str,
        limit: int,
    ) -> list[StoredMessage]:
        with self._lock:
            claimed: list[StoredMessage] = []
            for mid in sorted(self._rows):
                row = self._rows[mid]
                if row.exp_time <= now or not eligible(row):
                    continue
                if row.lease_token is not None and (row.lease_until or 0) > now:
                    continue
                row = replace(row, lease_token=token, lease_until=lease_until)
                self._rows[mid] = row
                claimed.append(row)
                if 0 < limit <= len(claimed):
                    break
            return claimed

    @storage_step
    def claim(
        self, username: str, domain: str, now: int, lease_until: int, token: str, limit: int = 0
    ) -> list[StoredMessage]:
        """Lease the owner's deliverable offline messages."""
        return self._lease(
            lambda r: r.snd_time == 0 and r.username == username and r.domain == domain,
            now,
            lease_until,
            token,
            limit,
        )

    @storage_step
    def claim_due_reminders(
        self, now: int, lease_until: int, token: str, limit: int = 0
    ) -> list[StoredMessage]:
        """Lease the reminders whose send time has come."""
        return self._lease(lambda r: 0 < r.snd_time <= now, now, lease_until, token, limit)

    @storage_step
    def delete(self, mid: int) -> bool:
        """Delete one row."""
        with self._lock:
            return self._rows.pop(mid, None) is not None

    @storage_step
    def release(
        self, mid: int, token: str | None, *, to_offline: bool = False, max_attempts: int = 0
    ) -> ReleaseResult:
        """Clear a failed delivery's lease, or drop the row at ``max_attempts``."""
        with self._lock:
            row = self._rows.get(mid)
            if row is None or row.lease_token is None:
                return ReleaseResult.NOT_FOUND
            if token is not None and row.lease_token != token:
                return ReleaseResult.NOT_FOUND
            attempts = row.attempts + 1
            if 0 < max_attempts <= attempts:
                del self._rows[mid]
                return ReleaseResult.DROPPED
            self._rows[mid] = replace(
                row,
                lease_token=None,
                lease_until=None,
                attempts=attempts,
                snd_time=0 if to_offline else row.snd_time,
            )
            return ReleaseResult.RELEASED

    @storage_step
    def count(self, username: str, domain: str, now: int) -> int:
        """Number of the owner's unexpired messages."""
        with self._lock:
            return sum(1 for r in self._owned(username, domain) if r.exp_time > now)

    @storage_step
    def list(self, username: str, domain: str, now: int, limit: int = 0) -> list[StoredMessage]:
        """The owner's unexpired messages in id order."""
        with self._lock:
            rows = sorted(
                (r for r in self._owned(username, domain) if r.exp_time > now),
                key=lambda r: r.mid,
            )
        return rows[:limit] if limit > 0 else rows

    @storage_step
    def get(self, mid: int) -> StoredMessage | None:
        """One row by id."""
        with self._lock:
            return self._rows.get(mid)

    @storage_step
    def purge(self, username: str, domain: str) -> int:
        """Delete every row of the owner."""
        with self._lock:
            mids = [r.mid for r in self._owned(username, domain)]
            for mid in mids:
                del self._rows[mid]
            return len(mids)

    @storage_step
    def delete_expired(self, now: int) -> int:
        """Delete rows with ``exp_time <= now``."""
        with self._lock:
            mids = [mid for mid, r in self._rows.items() if r.exp_time <= now]
            for mid in mids:
                del self._rows[mid]
            return len(mids)

    @storage_step
    def totals(self, now: int) -> StoreTotals:
        """Unexpired rows and live leases."""
        with self._lock:
            live = [r for r in self._rows.values() if r.exp_time > now]
        leased = sum(1 for r in live if r.lease_token is not None and (r.lease_until or 0) > now)
        return StoreTotals(len(live), leased)

    def close(self) -> None:
        """Nothing to release."""


def open_memory(url: str, layout: StoreLayout, options: object) -> MemoryDriver:
    """Factory for ``memory://`` (every call opens a new, empty store)."""
    return MemoryDriver()
