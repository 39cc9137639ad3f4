"""A fake clock for policy tests: a ``Silo`` built with it reads the time from it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo

from ..timefmt import parse_zone

__all__ = ["DEFAULT_START", "FakeClock"]

#: Where a new clock starts: Monday 5 January 2026, 09:00 UTC.
DEFAULT_START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def _zone(zone: str | tzinfo) -> tzinfo:
    return parse_zone(zone) if isinstance(zone, str) else zone


class FakeClock:
    """Epoch seconds that move only when the test says so.

    Call it (it is the ``clock`` a :class:`~libmsilo.Silo` takes). Naive datetimes given to
    :meth:`set` are read in the clock's ``zone``; :meth:`now` returns an aware datetime.
    """

    def __init__(self, start: datetime | float = DEFAULT_START, zone: str | tzinfo = "UTC") -> None:
        self._zone = _zone(zone)
        self._now = 0.0
        self.set(start)

    @property
    def zone(self) -> tzinfo:
        """The zone naive datetimes are read in and :meth:`now` reports in."""
        return self._zone

    def __call__(self) -> float:
        return self._now

    def time(self) -> float:
        """The current time in epoch seconds."""
        return self._now

    def now(self, zone: str | tzinfo | None = None) -> datetime:
        """The current time as an aware datetime in ``zone`` (default: the clock's zone)."""
        return datetime.fromtimestamp(self._now, self._zone if zone is None else _zone(zone))

    def set(self, when: datetime | float) -> None:
        """Jump to ``when`` (an epoch, an aware datetime, or a naive one in the clock's zone);
        backwards too."""
        if isinstance(when, datetime):
            if when.tzinfo is None:
                when = when.replace(tzinfo=self._zone)
            self._now = when.timestamp()
        elif isinstance(when, int | float) and not isinstance(when, bool):
            self._now = float(when)
        else:
            raise TypeError(f"set() takes a datetime or epoch seconds, not {type(when).__name__}")

    def advance(self, seconds: float | timedelta) -> float:
        """Move forward by ``seconds`` (or a timedelta) and return the new time."""
        step = seconds.total_seconds() if isinstance(seconds, timedelta) else float(seconds)
        if step < 0:
            raise ValueError(f"advance({seconds!r}): the clock only moves forward; use set()")
        self._now += step
        return self._now

    def __repr__(self) -> str:
        return f"<FakeClock {self.now().isoformat()}>"
