"""The storage driver contract (the records it stores live in :mod:`libmsilo.records`).

A driver turns each method below into one atomic step on its backend and knows nothing of SIP.
Times are integer epoch seconds (64-bit); bodies are bytes and come back byte-exact.

The built-in drivers share their plumbing, :class:`DriverBase` (from :mod:`.plumbing`): each
declares its backend's exceptions in an :class:`ErrorTable` and decorates its methods with
:func:`storage_step`, which checks the arguments as :class:`Driver` says, translates failures
into libmsilo's errors and retries what the table calls retryable.

Optional steps, outside :class:`Driver` (a driver without them still works): the batch steps
(:mod:`.batch`) and ``totals(now)``, the store's unexpired rows and live leases as a
:class:`~libmsilo.records.StoreTotals` for metrics (:func:`.plumbing.totals` asks for it).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..records import (
    IDENTIFIER_RE,
    LEASE_FIELDS,
    MESSAGE_FIELDS,
    NewMessage,
    ReleaseResult,
    StoredMessage,
    StoreLayout,
    StoreTotals,
)
from .plumbing import DriverBase, ErrorTable, storage_step

__all__ = [
    "IDENTIFIER_RE",
    "LEASE_FIELDS",
    "MESSAGE_FIELDS",
    "Driver",
    "DriverBase",
    "ErrorTable",
    "NewMessage",
    "ReleaseResult",
    "StoreLayout",
    "StoreTotals",
    "StoredMessage",
    "storage_step",
]


@runtime_checkable
class Driver(Protocol):
    """What every storage backend implements; each method is one atomic step.

    Values a driver accepts (checked before the backend is asked anything, the same way on every
    built-in driver; see :mod:`libmsilo.drivers.plumbing`):

    - times (``inc_time``, ``exp_time``, ``snd_time``, ``now``, ``lease_until``) are int epoch
      seconds in int64; a message's times are in ``[0, 2**63 - 1]``; they are stored exactly,
      and compared exactly below ``2**53`` (Redis compares them as doubles);
    - text (addresses, owner, Content-Type, token) is ``str`` that UTF-8 can encode (no lone
      surrogates); bodies are ``bytes``, returned byte-exact; a backend may refuse values its
      columns cannot hold (a legacy table's 32-bit times, ``VARCHAR`` widths);
    - a lease token has 1 to 64 characters;
    - a message id (mid) is an ``int`` (not a ``bool``); an id outside ``[0, 2**63 - 1]`` names
      no row (``get`` returns None, ``delete`` False, ``release`` NOT_FOUND).

    Errors: a value outside these ranges or types raises
    :class:`~libmsilo.errors.InvalidRequest` (nothing stored, no quota slot taken); a backend that
    cannot be reached (refused, timed out, lost, driver closed) raises
    :class:`~libmsilo.errors.StorageUnavailable`; any other backend failure raises
    :class:`~libmsilo.errors.StorageError` with the backend's exception as ``__cause__``. No
    other exception leaves a driver method.
    """

    def create_schema(self) -> None:
        """Create the table (collection, scripts) and its indexes if missing, safely when many
        processes do it at once; a store of an older schema version raises
        :class:`~libmsilo.errors.SchemaOutdated` (see :mod:`.schema_version`)."""

    def drop_schema(self) -> None:
        """Remove the table and everything else ``create_schema`` made (tests, ``msilo init``)."""

    def migrate(self) -> None:
        """Take an existing store (an OpenSIPS/Kamailio table included) to the current schema
        version, one version at a time, keeping its rows; idempotent, safe to run at once from
        several processes."""

    def ping(self) -> None:
        """Return when the backend answers and the store is usable; raise
        :class:`~libmsilo.errors.StorageUnavailable` (or :class:`~libmsilo.errors.StorageError`,
        e.g. no table) otherwise. A health check: it changes nothing."""

    def insert(self, msg: NewMessage, max_messages: int = 0) -> int | None:
        """Store ``msg`` and return its id (``>= 1``, increasing); ``None`` when the owner
        already holds ``max_messages`` unexpired messages (``exp_time > msg.inc_time``), checked
        atomically. ``max_messages <= 0`` means no quota. A failed insert stores nothing and
        leaves no quota slot taken."""

    def claim(
        self, username: str, domain: str, now: int, lease_until: int, token: str, limit: int = 0
    ) -> list[StoredMessage]:
        """Lease the owner's unexpired, non-reminder rows that no live lease holds, in id
        order (at most ``limit`` when > 0) to ``token`` until ``lease_until``; return them.
        ``token`` must be new for every claim call (``Silo`` uses a fresh uuid4)."""

    def claim_due_reminders(
        self, now: int, lease_until: int, token: str, limit: int = 0
    ) -> list[StoredMessage]:
        """The same across owners for unexpired reminders with ``0 < snd_time <= now``."""

    def delete(self, mid: int) -> bool:
        """Delete one row; False when it did not exist."""

    def release(
        self, mid: int, token: str | None, *, to_offline: bool = False, max_attempts: int = 0
    ) -> ReleaseResult:
        """End a failed delivery: count the attempt and clear the lease (only when it is held
        by ``token``; any lease when ``token`` is None). ``to_offline`` turns a reminder into an
        ordinary message (``snd_time = 0``). With ``max_attempts > 0`` and that many attempts
        reached, delete the row instead."""

    def count(self, username: str, domain: str, now: int) -> int:
        """Number of the owner's unexpired messages (reminders included)."""

    def list(self, username: str, domain: str, now: int, limit: int = 0) -> list[StoredMessage]:
        """The owner's unexpired messages in id order, without leasing them."""

    def get(self, mid: int) -> StoredMessage | None:
        """One row by id, expired or not."""

    def purge(self, username: str, domain: str) -> int:
        """Delete every row of the owner; return how many."""

    def delete_expired(self, now: int) -> int:
        """Delete rows with ``exp_time <= now``; return how many."""

    def close(self) -> None:
        """Release connections; the driver is unusable afterwards (later calls raise
        :class:`~libmsilo.errors.StorageUnavailable` or :class:`~libmsilo.errors.StorageError`)."""
