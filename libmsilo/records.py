"""The records a store holds and the options a driver opens with: plain values shared by the
core, the facade and the drivers (no I/O, no SIP)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, fields

from .errors import InvalidRequest

__all__ = [
    "CORE_FIELDS",
    "DEFAULT_TTL_DELAY",
    "IDENTIFIER_RE",
    "KAMAILIO_FIELDS",
    "LEASE_FIELDS",
    "MAX_INT64",
    "MAX_TOKEN",
    "MESSAGE_FIELDS",
    "MIN_INT64",
    "DriverOptions",
    "NewMessage",
    "ReleaseResult",
    "StoreLayout",
    "StoreTotals",
    "StoredMessage",
    "check_ints",
    "check_mid",
    "check_text",
    "check_token",
]

#: The largest id and time (epoch seconds) a store holds: every backend keeps signed 64-bit ints.
MAX_INT64 = 2**63 - 1
MIN_INT64 = -(2**63)
#: The longest lease token a store holds (``Silo`` issues 32 hex digits).
MAX_TOKEN = 64

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
    #: Kamailio: header lines (each ending CRLF) put back on the dumped MESSAGE; "" for none.
    extra_hdrs: str = ""
    #: Kamailio ``use_mode`` 1: the stored MESSAGE's Call-ID, reused when it is dumped; "" for none.
    callid: str = ""

    @property
    def is_reminder(self) -> bool:
        """True when the row is a reminder waiting for its send time."""
        return self.snd_time > 0


#: The message fields (columns) in :class:`NewMessage` order.
MESSAGE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(NewMessage))
#: Kamailio's optional fields: "" when unused, and left out of stores that need not keep them.
KAMAILIO_FIELDS: tuple[str, ...] = ("extra_hdrs", "callid")
#: The message fields both C modules write.
CORE_FIELDS: tuple[str, ...] = tuple(f for f in MESSAGE_FIELDS if f not in KAMAILIO_FIELDS)
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
class StoreTotals:
    """What a whole store holds at one time: its unexpired rows (reminders included) and those
    of them under a live lease (None when the backend cannot count leases cheaply)."""

    stored: int
    leased: int | None


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
    #: Kamailio's stored extra header lines and original Call-ID (empty unless stored).
    extra_hdrs: str = "extra_hdrs"
    callid: str = "callid"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, str) or not IDENTIFIER_RE.fullmatch(value):
                raise ValueError(f"{f.name}: {value!r} is not a plain identifier")
        names = [getattr(self, f.name) for f in fields(self) if f.name != "table"]
        if len({n.lower() for n in names}) != len(names):
            raise ValueError("column names must be distinct")


#: Seconds the MongoDB TTL index waits after ``exp_time`` before the server removes a row.
DEFAULT_TTL_DELAY = 86_400


@dataclass(frozen=True, slots=True)
class DriverOptions:
    """Backend-independent connection options."""

    timeout: float = 5.0  # seconds for connecting and for one storage step
    #: Most connections the driver opens to its server at once (a cluster: per node); callers
    #: beyond it wait for a free one at most ``timeout`` seconds, then get StorageUnavailable.
    pool_size: int = 10
    # Redis (other drivers ignore them): each write waits until this many replicas hold it
    # (WAIT), and with wait_aof the local append-only file too (WAITAOF, Redis 7.2+), at most
    # wait_timeout seconds.
    wait_replicas: int = 0
    wait_timeout: float = 1.0
    wait_aof: bool = False
    #: MongoDB (other drivers ignore it): seconds after ``exp_time`` at which the server's TTL
    #: index deletes a row, a backstop behind ``delete_expired``; None: no TTL index (a store
    #: run on a fake clock, whose times may lie in the real past). See docs/mongo-driver.md.
    ttl_delay: int | None = DEFAULT_TTL_DELAY


# ---- the values a store holds: one check each, used by the core and by every driver


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_ints(low: int = MIN_INT64, **values: object) -> None:
    """Raise :class:`InvalidRequest` unless every value is an int (not a bool) in
    ``[low, 2**63 - 1]``."""
    for name, value in values.items():
        if type(value) is int and low <= value <= MAX_INT64:
            continue  # the common case, decided without a call
        if not _is_int(value):
            raise InvalidRequest(f"{name} must be an int, not {type(value).__name__}")
        if not low <= value <= MAX_INT64:  # type: ignore[operator]
            raise InvalidRequest(f"{name}={value} is outside [{low}, 2**63 - 1]")


def check_mid(mid: object) -> bool:
    """Whether some row may have id ``mid``: False for an int outside ``[0, 2**63 - 1]`` (the
    caller answers "not found"); :class:`InvalidRequest` when ``mid`` is not an int."""
    if type(mid) is int:
        return 0 <= mid <= MAX_INT64
    if not _is_int(mid):
        raise InvalidRequest(f"a message id must be an int, not {type(mid).__name__}")
    return 0 <= mid <= MAX_INT64  # type: ignore[operator]


def check_text(name: str, value: str) -> str:
    """``value`` when UTF-8 can encode it (no lone surrogates), else :class:`InvalidRequest`."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(f"{name} cannot be stored: {exc.reason} at {exc.start}") from None
    return value


def check_token(token: object, *, optional: bool = False) -> None:
    """Raise :class:`InvalidRequest` unless ``token`` is a str of 1 to :data:`MAX_TOKEN`
    characters (or None when ``optional``)."""
    if token is None and optional:
        return
    if not isinstance(token, str):
        raise InvalidRequest(f"a lease token must be a str, not {type(token).__name__}")
    if not 0 < len(token) <= MAX_TOKEN:
        raise InvalidRequest(f"a lease token has 1 to {MAX_TOKEN} characters, not {len(token)}")
    check_text("lease token", token)
