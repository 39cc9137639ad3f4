"""The storage driver contract and the records drivers store.

A driver turns each method below into one atomic step on its backend and knows nothing of SIP.
Times are integer epoch seconds (64-bit); bodies are bytes and come back byte-exact.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

__all__ = [
    "IDENTIFIER_RE",
    "LEASE_FIELDS",
    "MESSAGE_FIELDS",
    "Driver",
    "NewMessage",
    "ReleaseResult",
    "StoreLayout",
    "StoredMessage",
]

#: A plain SQL identifier: what table and column names must look like.
IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


@dataclass(frozen=True, slots=True)
class NewMessage:
    """One message to store: every column of the ``silo`` table except the id."""

    src_addr: str
    dst_addr: str
    username: str
    domain: str
    body: bytes
    ctype: str
    inc_time: int
    exp_time: int
    snd_time: int = 0

    @property
    def is_reminder(self) -> bool:
        """True when the row is a reminder waiting for its send time."""
        return self.snd_time > 0


#: The message fields (columns) in :class:`NewMessage` order.
MESSAGE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(NewMessage))
#: The delivery-state fields a stored row adds, besides its id.
LEASE_FIELDS: tuple[str, ...] = ("lease_token", "lease_until", "attempts")


@dataclass(frozen=True, slots=True)
class StoredMessage(NewMessage):
    """A stored row: the message plus its id and delivery state."""

    mid: int = 0
    lease_token: str | None = None
    lease_until: int | None = None
    attempts: int = 0

    @classmethod
    def from_new(
        cls,
        msg: NewMessage,
        mid: int,
        lease_token: str | None = None,
        lease_until: int | None = None,
        attempts: int = 0,
    ) -> StoredMessage:
        """Build a stored record from ``msg`` and the delivery fields."""
        values = {name: getattr(msg, name) for name in MESSAGE_FIELDS}
        return cls(
            **values,
            mid=mid,
            lease_token=lease_token,
            lease_until=lease_until,
            attempts=attempts,
        )


class ReleaseResult(enum.Enum):
    """What :meth:`Driver.release` did."""

    RELEASED = "released"  # lease cleared, attempt counted; eligible again
    DROPPED = "dropped"  # max_attempts reached: the row was deleted
    NOT_FOUND = "not_found"  # no such row, or leased to another token


@dataclass(frozen=True, slots=True)
class StoreLayout:
    """Where a driver keeps messages: table (collection, key prefix) and column (field) names."""

    table: str = "silo"
    mid: str = "mid"
    src_addr: str = "src_addr"
    dst_addr: str = "dst_addr"
    username: str = "username"
    domain: str = "domain"
    body: str = "body"
    ctype: str = "ctype"
    exp_time: str = "exp_time"
    inc_time: str = "inc_time"
    snd_time: str = "snd_time"
    lease_token: str = "lease_token"
    lease_until: str = "lease_until"
    attempts: str = "attempts"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, str) or not IDENTIFIER_RE.fullmatch(value):
                raise ValueError(f"{f.name}: {value!r} is not a plain identifier")
        names = [getattr(self, f.name) for f in fields(self) if f.name != "table"]
        if len({n.lower() for n in names}) != len(names):
            raise ValueError("column names must be distinct")


@runtime_checkable
class Driver(Protocol):
    """What every storage backend implements; each method is one atomic step."""

    def create_schema(self) -> None:
        """Create the table (collection, scripts) and its indexes if missing."""

    def drop_schema(self) -> None:
        """Remove the table and everything else ``create_schema`` made (tests, ``msilo init``)."""

    def migrate(self) -> None:
        """Add the lease columns to an existing OpenSIPS/Kamailio table, keeping its rows."""

    def insert(self, msg: NewMessage, max_messages: int = 0) -> int | None:
        """Store ``msg`` and return its id; ``None`` when the owner already holds
        ``max_messages`` unexpired messages (``exp_time > msg.inc_time``), checked atomically.
        ``max_messages <= 0`` means no quota."""

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
        """Release connections; the driver is unusable afterwards."""
