"""The benchmark's data: rows to seed, requests to store, and the raw baseline's rendering.

Everything here is deterministic so both sides of a comparison see the same rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, tzinfo
from email.utils import formatdate

from ..message import SipRequest

__all__ = [
    "DOMAIN",
    "TARGET",
    "RawMessage",
    "Row",
    "other_rows",
    "render_dump",
    "render_reminder",
    "store_requests",
    "store_rows",
    "unique_name",
]

DOMAIN = "bench.example"
TARGET = "target"  # the owner whose queue the dump benchmark drains
REMINDER_FROM = "sip:reminder@bench.example"
EXPIRE_TIME = 259200  # the msilo default, used by both sides
BODY = b"Hello, this is a stored benchmark message number %d."

# src_addr, dst_addr, username, domain, body, ctype, inc_time, exp_time, snd_time:
# the column order of the silo table [BEHAVIOUR.md §8.2].
Row = tuple[str, str, str, str, bytes, str, int, int, int]
#: A row without its times (src_addr ... ctype): what parsing a MESSAGE gives.
Fields = tuple[str, str, str, str, bytes, str]


def unique_name(prefix: str = "msilo_bench_") -> str:
    """A table / key-prefix name no other run uses."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _fields(user: str, n: int) -> Fields:
    """Message ``n`` to ``user`` (from one of 97 senders)."""
    return (
        f"sip:sender{n % 97}@{DOMAIN}",
        f"sip:{user}@{DOMAIN}",
        user,
        DOMAIN,
        BODY % n,
        "text/plain",
    )


def _row(user: str, n: int, inc: int, exp: int, snd: int = 0) -> Row:
    return (*_fields(user, n), inc, exp, snd)


def other_rows(count: int, now: int, *, per_owner: int = 10) -> Iterator[Row]:
    """``count`` live messages of other owners (``per_owner`` each): the table's bulk."""
    for n in range(count):
        yield _row(f"user{n // per_owner}", n, now - 60, now + EXPIRE_TIME)


def queue_rows(count: int, now: int) -> Iterator[Row]:
    """``count`` live messages of the target owner."""
    for n in range(count):
        yield _row(TARGET, n, now - 60, now + EXPIRE_TIME)


def expired_rows(count: int, now: int) -> Iterator[Row]:
    """``count`` expired messages of other owners (what the purge removes)."""
    for n in range(count):
        yield _row(f"expired{n // 10}", n, now - 2 * EXPIRE_TIME, now - 3600)


def reminder_rows(count: int, now: int) -> Iterator[Row]:
    """``count`` reminders across owners that are due at ``now``."""
    for n in range(count):
        yield _row(f"reminded{n // 10}", n, now - 120, now + EXPIRE_TIME, snd=now - 60)


def _owner(n: int, owners: int) -> str:
    return f"store{n % max(1, owners)}"


def store_requests(count: int, owners: int) -> list[SipRequest]:
    """The MESSAGE requests the store benchmark hands to :meth:`Silo.store`."""
    out = []
    for n in range(count):
        to = f"sip:{_owner(n, owners)}@{DOMAIN}"
        headers = [
            ("Via", f"SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bK{n:08d}"),
            ("From", f"<sip:sender{n % 97}@{DOMAIN}>;tag=b{n}"),
            ("To", f"<{to}>"),
            ("Call-ID", f"bench{n}@192.0.2.4"),
            ("CSeq", "1 MESSAGE"),
            ("Content-Type", "text/plain"),
        ]
        out.append(SipRequest("MESSAGE", to, headers, BODY % n))
    return out


def store_rows(count: int, owners: int) -> list[Fields]:
    """What a hand-written store has once its SIP stack parsed the same requests: the From and
    To URIs, the owner, body and Content-Type (times are added when storing)."""
    return [_fields(_owner(n, owners), n) for n in range(count)]


@dataclass(frozen=True, slots=True)
class RawMessage:
    """What the raw baseline renders for one delivery: the same fields as an OutgoingMessage."""

    mid: int
    ruri: str
    from_uri: str
    to_uri: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


def _ctime(epoch: int, zone: tzinfo) -> str:
    moment = datetime.fromtimestamp(epoch, zone)
    return f"{moment:%a %b} {moment.day:2d} {moment:%H:%M:%S %Y}"


def _plain(ctype: str) -> bool:
    return ctype.split(";", 1)[0].strip().lower() == "text/plain"


def render_dump(
    mid: int, src: str, dst: str, ctype: str, body: bytes, inc: int, zone: tzinfo
) -> RawMessage:
    """A hand-written m_dump rendering: Date, Content-Type, Contact and the date prefix."""
    headers = (
        ("Date", formatdate(inc, usegmt=True)),
        ("Content-Type", ctype),
        ("Contact", f"<{src}>;msilo=yes"),
    )
    if _plain(ctype):
        body = f"[Offline message - {_ctime(inc, zone)}] ".encode() + body
    return RawMessage(mid, dst, src, dst, headers, body)


def render_reminder(
    mid: int, user: str, domain: str, ctype: str, body: bytes, snd: int, zone: tzinfo
) -> RawMessage:
    """A hand-written reminder rendering: to ``sip:user@domain`` from the reminder URI."""
    target = f"sip:{user}@{domain}"
    headers = (("Content-Type", ctype), ("Contact", f"<{REMINDER_FROM}>;msilo=yes"))
    if _plain(ctype):
        body = f"[Reminder message - {_ctime(snd, zone)}] ".encode() + body
    return RawMessage(mid, target, REMINDER_FROM, target, headers, body)
