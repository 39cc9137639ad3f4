"""Time handling: reminder times, the body-prefix ``ctime`` string and the RFC 1123 Date value.

All times are integer epoch seconds. The C modules read ``YYYYMMDDHHMMSS`` with ``mktime`` and
``tm_isdst = 0`` (so reminders fire an hour late during daylight saving) and silently accept short
strings and impossible dates [BEHAVIOUR.md §2.3]; here the wall-clock time is read in an
explicit zone with daylight saving applied, and anything malformed raises :class:`InvalidSendTime`.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import time
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from libmsilo.errors import InvalidSendTime, SettingsError

__all__ = [
    "ctime24",
    "local_zone",
    "parse_send_time",
    "parse_zone",
    "rfc1123",
    "send_time_to_epoch",
]

# English names, fixed: the output must not depend on the process locale (C ctime does not).
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_EPOCH = 2**63  # exclusive: the time columns are signed 64-bit
_SEND_TIME = re.compile(r"[0-9]{14}", re.ASCII)

# The Gregorian calendar repeats every 400 years (146097 days, a whole number of weeks), and so do
# the POSIX rules a zone uses beyond its last transition. Epochs outside what ``datetime`` can hold
# are shifted by whole cycles into range, formatted, and the year shifted back, as C would print.
_CYCLE_SECONDS = 146097 * 86400
_CYCLE_YEARS = 400
# One day of margin on each side keeps any UTC offset (at most +-26 h) inside datetime's range.
_LOW = int((datetime(1, 1, 3, tzinfo=UTC) - _EPOCH).total_seconds())
_HIGH = int((datetime(9999, 12, 29, tzinfo=UTC) - _EPOCH).total_seconds())


def _zone_or_none(key: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError: malformed key (absolute path, ".."); OSError: a directory such as "America".
        return None


def _key_from_path(path: str) -> ZoneInfo | None:
    """The zone named by a path inside a zoneinfo tree, e.g. ``/usr/share/zoneinfo/Etc/UTC``."""
    marker = "zoneinfo/"
    where = path.rfind(marker)
    if where < 0:
        return None
    key = path[where + len(marker) :]
    # "posix/Europe/Berlin" and "right/Europe/Berlin" are copies of the plain zone.
    for prefix in ("posix/", "right/"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return _zone_or_none(key)


# Where the C library finds the local zone when TZ is unset (tests point these elsewhere).
_LOCALTIME = "/etc/localtime"
_TIMEZONE_FILE = "/etc/timezone"


def _zone_from_file(path: str) -> ZoneInfo | None:
    """The zone a TZif file holds, its daylight-saving rules included (None if unreadable)."""
    try:
        with open(path, "rb") as fh:
            return ZoneInfo.from_file(fh, key=path)
    except (OSError, ValueError):
        return None


def _zone_at_path(path: str) -> ZoneInfo | None:
    """The zone of a TZif file: by its IANA name when it lies in a zoneinfo tree (symlinks
    followed), else loaded from the file itself (a copied ``/etc/localtime``)."""
    real = os.path.realpath(path)
    zone = _key_from_path(real)
    return zone if zone is not None else _zone_from_file(real)


def _zone_from_rule(rule: str) -> ZoneInfo | None:
    """The zone a POSIX TZ rule describes (``CET-1CEST,M3.5.0,M10.5.0/3``), daylight saving
    included: a TZif file without transitions whose footer is the rule, read by zoneinfo."""
    if not rule.isascii() or "\n" in rule or len(rule) > 256:
        return None
    header = b"TZif2" + bytes(15) + struct.pack(">6l", 0, 0, 0, 0, 1, 4)
    block = header + struct.pack(">lbb", 0, 0, 0) + b"UTC\0"  # one local time type, unused
    try:
        return ZoneInfo.from_file(
            io.BytesIO(block + block + b"\n" + rule.encode() + b"\n"), key=rule
        )
    except ValueError:
        return None


def _fixed_local_offset() -> tzinfo:
    """The local zone's current offset, for when the zone has no IANA name."""
    now = time.localtime()
    return timezone(timedelta(seconds=now.tm_gmtoff), now.tm_zone)


def local_zone() -> tzinfo:
    """The process's local zone: a ``ZoneInfo`` when it can be named, else its current offset.

    Looks at ``TZ`` (as the C library does, it takes precedence; ``TZ=:/path`` names a TZif
    file), then the ``/etc/localtime`` symlink, then ``/etc/timezone``, then the zone held in a
    copied ``/etc/localtime`` file. A POSIX rule in ``TZ`` keeps its daylight-saving rule;
    only what no rule describes falls back to the current offset. Never raises.
    """
    try:
        tz_env = os.environ.get("TZ")
        if tz_env is not None:
            # POSIX: an empty TZ means UTC; a leading ':' introduces an implementation name.
            name = tz_env.removeprefix(":").strip()
            if not name:
                return UTC
            zone = _zone_at_path(name) if name.startswith("/") else _zone_or_none(name)
            if zone is None and not tz_env.startswith(":"):
                zone = _zone_from_rule(name)  # a POSIX rule: "CET-1CEST,M3.5.0,M10.5.0/3"
            return zone if zone is not None else _fixed_local_offset()
        if os.path.islink(_LOCALTIME):
            zone = _key_from_path(os.path.realpath(_LOCALTIME))
            if zone is not None:
                return zone
        try:
            with open(_TIMEZONE_FILE, encoding="utf-8") as fh:
                name = fh.readline().strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        if name:
            zone = _zone_or_none(name)
            if zone is not None:
                return zone
        zone = _zone_from_file(_LOCALTIME)
        return zone if zone is not None else _fixed_local_offset()
    except Exception:  # never raise: a broken environment still has UTC
        return UTC


def parse_zone(name: str) -> ZoneInfo:
    """The ``ZoneInfo`` for an IANA zone name, a TZif file path (``/…`` or ``:/…``) or a POSIX
    rule (``CET-1CEST,M3.5.0,M10.5.0/3``), as ``TZ`` takes them; ``SettingsError`` naming the
    value when unknown."""
    if not isinstance(name, str) or not name.strip():
        raise SettingsError(
            f"timezone: expected an IANA zone name such as 'Europe/Berlin', got {name!r}"
        )
    path = name.strip().removeprefix(":")
    if path.startswith("/"):
        zone = _zone_at_path(path)
        if zone is None:
            raise SettingsError(f"timezone: {path!r} is not a readable TZif zone file")
        return zone
    zone = _zone_or_none(name.strip()) or _zone_from_rule(name.strip())
    if zone is None:
        raise SettingsError(f"timezone: unknown IANA zone name {name!r}")
    return zone


def _epoch_of(moment: datetime) -> int:
    """Whole epoch seconds of an aware datetime (floor), exact for every representable year."""
    return (moment - _EPOCH) // timedelta(seconds=1)


def _checked(epoch: int, what: object) -> int:
    if not 0 <= epoch < _MAX_EPOCH:
        raise InvalidSendTime(f"send time {what!r} is outside 1970-01-01 .. 2**63 epoch seconds")
    return epoch


def _wall_clock_epoch(naive: datetime, tz: tzinfo, what: object) -> int:
    """Epoch of a wall-clock time in ``tz``: first occurrence when ambiguous, error in a gap."""
    local = naive.replace(tzinfo=tz, fold=0)
    # In a spring-forward gap the wall clock does not exist; the round trip then lands elsewhere.
    back = local.astimezone(UTC).astimezone(tz)
    if back.replace(tzinfo=None, fold=0) != naive.replace(fold=0):
        raise InvalidSendTime(
            f"send time {what!r} does not exist in {tz}: "
            "the clocks skip it when daylight saving starts"
        )
    return _checked(_epoch_of(local), what)


def parse_send_time(text: str, tz: tzinfo) -> int:
    """Epoch seconds of a ``YYYYMMDDHHMMSS`` string read as wall-clock time in ``tz``.

    Ambiguous times (clocks going back) give the first occurrence; times skipped by a
    spring-forward change, malformed strings and impossible dates raise ``InvalidSendTime``.
    """
    if not isinstance(text, str):
        raise InvalidSendTime(
            f"send time must be a YYYYMMDDHHMMSS string, got {type(text).__name__}"
        )
    if _SEND_TIME.fullmatch(text) is None:
        detail = f"{len(text)} characters" if len(text) != 14 else "a character that is not 0-9"
        raise InvalidSendTime(
            f"send time {text!r} must be exactly 14 digits YYYYMMDDHHMMSS (got {detail})"
        )
    month, day, hour, minute, second = (int(text[i : i + 2]) for i in range(4, 14, 2))
    try:
        naive = datetime(int(text[:4]), month, day, hour, minute, second)
    except ValueError as exc:
        raise InvalidSendTime(f"send time {text!r} is not a valid date and time: {exc}") from None
    return _wall_clock_epoch(naive, tz, text)


def send_time_to_epoch(value: str | int | float | datetime, tz: tzinfo) -> int:
    """Epoch seconds of a reminder time given as a string, an epoch number or a datetime.

    A naive datetime is wall-clock time in ``tz`` (same rules as :func:`parse_send_time`).
    """
    if isinstance(value, str):
        return parse_send_time(value, tz)
    if isinstance(value, bool):
        raise InvalidSendTime(f"send time must not be a bool, got {value!r}")
    if isinstance(value, int):
        return _checked(int(value), value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidSendTime(f"send time {value!r} is not a finite number")
        if not 0 <= value < _MAX_EPOCH:
            raise InvalidSendTime(f"send time {value!r} is outside 0 .. 2**63 epoch seconds")
        return _checked(math.floor(value), value)
    if isinstance(value, datetime):
        if value.tzinfo is not None and value.utcoffset() is not None:
            return _checked(_epoch_of(value), value)
        return _wall_clock_epoch(value.replace(tzinfo=None), tz, value)
    raise InvalidSendTime(
        f"send time must be a YYYYMMDDHHMMSS string, an epoch number or a datetime, "
        f"got {type(value).__name__}"
    )


def _wall_fields(epoch: int, tz: tzinfo) -> tuple[datetime, int]:
    """The wall-clock datetime of ``epoch`` in ``tz`` and the true year (may exceed 9999)."""
    shift = 0  # whole 400-year cycles moved out of the epoch (ceiling division both ways)
    if epoch > _HIGH:
        shift = -((_HIGH - epoch) // _CYCLE_SECONDS)
    elif epoch < _LOW:
        shift = (epoch - _LOW) // _CYCLE_SECONDS
    moment = (_EPOCH + timedelta(seconds=epoch - shift * _CYCLE_SECONDS)).astimezone(tz)
    return moment, moment.year + shift * _CYCLE_YEARS


def ctime24(epoch: int, tz: tzinfo) -> str:
    """C ``ctime_r`` in ``tz`` without the newline: ``Thu Jan  1 00:00:00 1970`` (English names)."""
    m, year = _wall_fields(epoch, tz)
    return (
        f"{_DAYS[m.weekday()]} {_MONTHS[m.month - 1]} {m.day:2d} "
        f"{m.hour:02d}:{m.minute:02d}:{m.second:02d} {year}"
    )


def rfc1123(epoch: int) -> str:
    """The SIP/HTTP Date value in UTC: ``Tue, 14 Nov 2023 22:13:20 GMT`` (English names)."""
    m, year = _wall_fields(epoch, UTC)
    return (
        f"{_DAYS[m.weekday()]}, {m.day:02d} {_MONTHS[m.month - 1]} {year} "
        f"{m.hour:02d}:{m.minute:02d}:{m.second:02d} GMT"
    )
