"""Policy: reminders fire only in business hours, in the recipient's own time zone.

A reminder asked for 18:40 on a Friday reaches its recipient at 09:00 on Monday, in whatever
zone the recipient lives; daylight-saving changes are the zone's business, not ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

from libmsilo import Silo, SipRequest, StoreResult
from libmsilo.core import choose_owner


@dataclass(frozen=True, slots=True)
class BusinessHours:
    """Opening hours, the same on every working day (0 = Monday)."""

    opens: time = time(9, 0)
    closes: time = time(17, 0)
    days: frozenset[int] = frozenset(range(5))


def next_business_time(moment: datetime, hours: BusinessHours, zone: tzinfo) -> datetime:
    """``moment`` when it falls in business hours in ``zone``, else the next opening time."""
    local = moment.astimezone(zone)
    if local.weekday() in hours.days and hours.opens <= local.time() < hours.closes:
        return local
    day = local.date()
    if local.time() >= hours.opens or local.weekday() not in hours.days:
        day += timedelta(days=1)
    for _ in range(7):
        if day.weekday() in hours.days:
            # A wall-clock time read in the zone: ZoneInfo applies the offset of that date.
            return datetime.combine(day, hours.opens, tzinfo=zone)
        day += timedelta(days=1)
    raise ValueError("BusinessHours has no working day")


class BusinessHoursReminders:
    """Stores reminders moved into the recipient's business hours."""

    def __init__(
        self,
        silo: Silo,
        zones: Mapping[str, str],
        *,
        default_zone: str = "UTC",
        hours: BusinessHours | None = None,
    ) -> None:
        self.silo = silo
        self.zones = {domain.lower(): ZoneInfo(name) for domain, name in zones.items()}
        self.default_zone = ZoneInfo(default_zone)
        self.hours = hours or BusinessHours()

    def zone_of(self, request: SipRequest) -> tzinfo:
        """The recipient's zone, by the domain the reminder is filed under."""
        _, domain = choose_owner(request)
        return self.zones.get(domain.lower(), self.default_zone)

    def on_reminder(self, request: SipRequest, when: datetime) -> StoreResult:
        """Store ``request`` as a reminder for ``when`` (aware), moved into business hours."""
        if when.tzinfo is None:
            raise ValueError("when must be an aware datetime")
        send_at = next_business_time(when, self.hours, self.zone_of(request))
        return self.silo.store(request, send_at=send_at, notify=False)
