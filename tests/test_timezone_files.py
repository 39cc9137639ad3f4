"""Issue 9.3: a zone given as a TZif file keeps its daylight-saving rules.

``TZ=:/path``, ``TZ=:/etc/localtime`` and a copied (not symlinked) ``/etc/localtime`` without
``/etc/timezone`` are read from the file itself, so reminders fire and body prefixes print in
local summer time. The files are the real tzdata ones (the ``tzdata`` package libmsilo needs).
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path

import pytest

from libmsilo import MessageKind, MsiloSettings, Silo, timefmt
from libmsilo.drivers.memory import MemoryDriver
from libmsilo.timefmt import local_zone, parse_zone
from tests.helpers import Clock, message
from tests.test_timefmt import process_tz

SUMMER = datetime(2024, 7, 1, 12)
WINTER = datetime(2024, 1, 15, 12)


def tzif(name: str) -> bytes:
    """The TZif bytes of an IANA zone, from the tzdata package."""
    return (resources.files("tzdata") / "zoneinfo" / name).read_bytes()


@pytest.fixture
def berlin_copy(tmp_path: Path) -> Path:
    """Europe/Berlin copied to a path outside any zoneinfo tree."""
    path = tmp_path / "localtime"
    path.write_bytes(tzif("Europe/Berlin"))
    return path


@pytest.fixture
def container_etc(
    berlin_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """A container's /etc: /etc/localtime copied from Berlin, no /etc/timezone, TZ unset."""
    monkeypatch.setattr(timefmt, "_LOCALTIME", str(berlin_copy), raising=False)
    monkeypatch.setattr(
        timefmt, "_TIMEZONE_FILE", str(tmp_path / "no-such-timezone"), raising=False
    )
    with process_tz(None):
        yield


def assert_berlin_rules(zone: object) -> None:
    assert isinstance(zone, timefmt.tzinfo)
    assert zone.utcoffset(SUMMER) == timedelta(hours=2)
    assert zone.utcoffset(WINTER) == timedelta(hours=1)


def test_tz_colon_path_to_a_copied_file(berlin_copy: Path) -> None:
    with process_tz(f":{berlin_copy}"):
        assert_berlin_rules(local_zone())
    with process_tz(str(berlin_copy)):  # without the colon, as glibc also accepts
        assert_berlin_rules(local_zone())


def test_tz_colon_path_to_a_symlink(berlin_copy: Path, tmp_path: Path) -> None:
    link = tmp_path / "etc-localtime"
    link.symlink_to(berlin_copy)
    with process_tz(f":{link}"):
        assert_berlin_rules(local_zone())


def test_copied_etc_localtime_without_etc_timezone(container_etc: None) -> None:
    assert_berlin_rules(local_zone())


def test_etc_timezone_still_names_the_zone(
    container_etc: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = tmp_path / "timezone"
    named.write_text("America/New_York\n")
    monkeypatch.setattr(timefmt, "_TIMEZONE_FILE", str(named))
    assert local_zone().utcoffset(SUMMER) == timedelta(hours=-4)


def test_timezone_setting_takes_a_file_path(berlin_copy: Path) -> None:
    assert_berlin_rules(parse_zone(str(berlin_copy)))
    assert_berlin_rules(MsiloSettings(timezone=f":{berlin_copy}").zone)


def test_unreadable_zone_file_is_a_settings_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus"
    bogus.write_bytes(b"not a TZif file")
    for value in (str(bogus), f":{tmp_path / 'missing'}"):
        with pytest.raises(timefmt.SettingsError, match="TZif"):
            MsiloSettings(timezone=value)


@pytest.mark.parametrize("how", ["tz_path", "container"])
def test_reminder_and_prefix_follow_summer_time(
    how: str, berlin_copy: Path, container_etc: None
) -> None:
    if how == "tz_path":
        with process_tz(f":{berlin_copy}"):
            settings = MsiloSettings(db_url="memory://", reminder="sip:r@example.com", send_time=1)
    else:
        settings = MsiloSettings(db_url="memory://", reminder="sip:r@example.com", send_time=1)
    noon_utc = calendar.timegm((2024, 7, 1, 10, 0, 0))  # 12:00 in Berlin summer time
    clock = Clock(noon_utc - 3600)
    silo = Silo(MemoryDriver(), settings, clock=clock)
    mid = silo.store(message(), send_at="20240701120000").mid
    assert silo.get(mid).snd_time == noon_utc  # type: ignore[union-attr]
    clock.now = noon_utc - 1
    assert silo.tick() == []
    clock.now = noon_utc
    (due,) = silo.tick()
    assert due.kind is MessageKind.REMINDER
    assert due.body.startswith(b"[Reminder message - Mon Jul  1 12:00:00 2024] ")
