"""Tests of the policy that moves reminders into the recipient's business hours."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from business_hours import BusinessHours, BusinessHoursReminders, next_business_time

from libmsilo import Silo
from libmsilo.testing import FakeClock, SimulatedPhone, SnapshotChecker, assert_stored, sip

pytestmark = pytest.mark.msilo(reminder="sip:reminders@example.com", send_time=60)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
ANNA = "sip:anna@berlin.example.com"
NED = "sip:ned@nyc.example.com"
BOSS = "sip:boss@example.com"
Phones = Callable[..., SimulatedPhone]


def policy(silo: Silo) -> BusinessHoursReminders:
    zones = {"berlin.example.com": "Europe/Berlin", "nyc.example.com": "America/New_York"}
    return BusinessHoursReminders(silo, zones)


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        (datetime(2026, 3, 6, 18, 40), datetime(2026, 3, 9, 9, 0)),  # Friday evening
        (datetime(2026, 3, 9, 7, 15), datetime(2026, 3, 9, 9, 0)),  # Monday, too early
        (datetime(2026, 3, 9, 12, 30), datetime(2026, 3, 9, 12, 30)),  # already in hours
        (datetime(2026, 3, 9, 17, 0), datetime(2026, 3, 10, 9, 0)),  # closing time
        (datetime(2026, 3, 7, 10, 0), datetime(2026, 3, 9, 9, 0)),  # Saturday
        (datetime(2026, 3, 28, 12, 0), datetime(2026, 3, 30, 9, 0)),  # across the DST change
    ],
)
def test_next_business_time(asked: datetime, expected: datetime) -> None:
    moved = next_business_time(asked.replace(tzinfo=BERLIN), BusinessHours(), BERLIN)
    assert moved == expected.replace(tzinfo=BERLIN)


def test_a_week_without_working_days_is_an_error() -> None:
    with pytest.raises(ValueError, match="no working day"):
        next_business_time(datetime.now(UTC), BusinessHours(days=frozenset()), BERLIN)


def test_friday_evening_reminder_rings_on_monday_morning(
    msilo: Silo, msilo_clock: FakeClock, msilo_phone: Phones
) -> None:
    msilo_clock.set(datetime(2026, 3, 6, 18, 30, tzinfo=BERLIN))
    anna = msilo_phone(ANNA)
    anna.register()
    asked = msilo_clock.now(BERLIN).replace(minute=40)
    assert policy(msilo).on_reminder(sip.message(BOSS, ANNA, "call the bank"), asked).stored
    msilo_clock.set(datetime(2026, 3, 9, 8, 59, 59, tzinfo=BERLIN))
    assert anna.deliver_all() == []
    msilo_clock.advance(60)  # the reminder sweep runs every send_time seconds
    [reminder] = anna.deliver_all()
    assert reminder.body == b"[Reminder message - Mon Mar  9 08:00:00 2026] call the bank"
    assert_stored(msilo, ANNA, count=0)


def test_the_same_moment_in_two_zones(
    msilo: Silo, msilo_clock: FakeClock, msilo_phone: Phones
) -> None:
    msilo_clock.set(datetime(2026, 3, 9, 8, 30, tzinfo=UTC))  # 09:30 Berlin, 04:30 New York
    anna, ned = msilo_phone(ANNA), msilo_phone(NED)
    anna.register()
    ned.register()
    reminders = policy(msilo)
    for who in (ANNA, NED):
        reminders.on_reminder(sip.message(BOSS, who, "stand-up"), msilo_clock.now())
    assert [m.to_uri for m in anna.deliver_all()] == [ANNA]  # at once: Anna is at work
    assert ned.deliver_all() == []
    msilo_clock.set(datetime(2026, 3, 9, 9, 0, tzinfo=NEW_YORK))  # EDT since 8 March
    assert [m.to_uri for m in ned.deliver_all()] == [NED]


def test_the_reminder_bytes(
    msilo: Silo, msilo_clock: FakeClock, msilo_phone: Phones, msilo_snapshot: SnapshotChecker
) -> None:
    msilo_clock.set(datetime(2026, 3, 7, 11, 0, tzinfo=BERLIN))  # Saturday
    ned = msilo_phone(NED)
    ned.register()
    policy(msilo).on_reminder(
        sip.message(BOSS, NED, "Quarterly report is due", ctype="text/plain; charset=utf-8"),
        msilo_clock.now(),
    )
    msilo_clock.set(datetime(2026, 3, 9, 9, 0, tzinfo=NEW_YORK))
    msilo_snapshot.check(ned.deliver_all())


def test_reminders_wait_on_every_store(msilo_each: Silo, msilo_clock: FakeClock) -> None:
    msilo_clock.set(datetime(2026, 3, 6, 18, 30, tzinfo=BERLIN))
    policy(msilo_each).on_reminder(sip.message(BOSS, ANNA, "x"), msilo_clock.now())
    [row] = assert_stored(msilo_each, ANNA, count=1)
    assert row.snd_time == int(datetime(2026, 3, 9, 9, 0, tzinfo=BERLIN).timestamp())
