"""Tests of libmsilo.timefmt: reminder-time parsing, the ctime prefix string and the Date value."""

from __future__ import annotations

import calendar
import email.utils
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libmsilo import MsiloSettings
from libmsilo.errors import InvalidRequest, InvalidSendTime, SettingsError
from libmsilo.timefmt import (
    ctime24,
    local_zone,
    parse_send_time,
    parse_zone,
    rfc1123,
    send_time_to_epoch,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
UTC_ZONE = ZoneInfo("UTC")
# Digits that str.isdigit() accepts but the 14-ASCII-digit format must not.
FULLWIDTH = {ord(str(d)): 0xFF10 + d for d in range(10)}
ARABIC_INDIC = {ord(str(d)): 0x0660 + d for d in range(10)}
MAX_DATETIME_EPOCH = calendar.timegm((9999, 12, 31, 23, 59, 59))


def utc_epoch(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> int:
    """Epoch of a UTC wall-clock time, computed independently of the code under test."""
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))


@contextmanager
def process_tz(value: str | None) -> Iterator[None]:
    """Run with the process's TZ set to ``value`` (unset for None), then restore it."""
    old = os.environ.get("TZ")
    if value is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = value
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


# --- parse_send_time: daylight saving -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "zone", "expected"),
    [
        # Europe/Berlin: CET (UTC+1) in winter, CEST (UTC+2) in summer.
        ("20240115120000", BERLIN, utc_epoch(2024, 1, 15, 11)),
        ("20240701120000", BERLIN, utc_epoch(2024, 7, 1, 10)),
        # America/New_York: EST (UTC-5) in winter, EDT (UTC-4) in summer.
        ("20240115120000", NEW_YORK, utc_epoch(2024, 1, 15, 17)),
        ("20240704120000", NEW_YORK, utc_epoch(2024, 7, 4, 16)),
        ("20240701120000", UTC_ZONE, utc_epoch(2024, 7, 1, 12)),
        ("19700101000000", UTC_ZONE, 0),
        # Fixed-offset zones work too.
        ("20240701120000", timezone(timedelta(hours=5, minutes=30)), utc_epoch(2024, 7, 1, 6, 30)),
    ],
)
def test_summer_and_winter(text: str, zone: ZoneInfo, expected: int) -> None:
    assert parse_send_time(text, zone) == expected


def test_c_module_dst_bug_is_not_copied() -> None:
    # mktime with tm_isdst=0 turns this into 13:00 CEST (11:00 UTC); the wall clock says 12:00.
    epoch = parse_send_time("20240701120000", BERLIN)
    local = datetime.fromtimestamp(epoch, BERLIN)
    assert (local.hour, local.minute, local.tzname()) == (12, 0, "CEST")
    assert epoch != utc_epoch(2024, 7, 1, 11)


@pytest.mark.parametrize(
    ("text", "zone"),
    [
        ("20240331020000", BERLIN),  # 02:00 -> 03:00 on 31 March 2024
        ("20240331023000", BERLIN),
        ("20240331025959", BERLIN),
        ("20240310020000", NEW_YORK),  # 02:00 -> 03:00 on 10 March 2024
        ("20240310023000", NEW_YORK),
    ],
)
def test_spring_forward_gap_is_refused(text: str, zone: ZoneInfo) -> None:
    with pytest.raises(InvalidSendTime, match="does not exist"):
        parse_send_time(text, zone)


@pytest.mark.parametrize(
    ("text", "zone", "expected"),
    [
        ("20240331015959", BERLIN, utc_epoch(2024, 3, 31, 0, 59, 59)),
        ("20240331030000", BERLIN, utc_epoch(2024, 3, 31, 1)),
        ("20240310015959", NEW_YORK, utc_epoch(2024, 3, 10, 6, 59, 59)),
        ("20240310030000", NEW_YORK, utc_epoch(2024, 3, 10, 7)),
    ],
)
def test_edges_of_the_gap_exist(text: str, zone: ZoneInfo, expected: int) -> None:
    assert parse_send_time(text, zone) == expected


@pytest.mark.parametrize(
    ("text", "zone", "first", "second"),
    [
        # Berlin: 03:00 CEST -> 02:00 CET on 27 October 2024; 02:30 happens twice.
        (
            "20241027023000",
            BERLIN,
            utc_epoch(2024, 10, 27, 0, 30),
            utc_epoch(2024, 10, 27, 1, 30),
        ),
        # New York: 02:00 EDT -> 01:00 EST on 3 November 2024; 01:30 happens twice.
        ("20241103013000", NEW_YORK, utc_epoch(2024, 11, 3, 5, 30), utc_epoch(2024, 11, 3, 6, 30)),
    ],
)
def test_fall_back_overlap_takes_first_occurrence(
    text: str, zone: ZoneInfo, first: int, second: int
) -> None:
    epoch = parse_send_time(text, zone)
    assert epoch == first
    assert epoch != second
    # Both instants really do show that wall-clock time, so the choice was meaningful.
    for instant in (first, second):
        shown = datetime.fromtimestamp(instant, zone).strftime("%Y%m%d%H%M%S")
        assert shown == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20380119031407", 2**31 - 1),
        ("20380119031408", 2**31),
        ("21060207062816", 2**32),
        ("29991231235959", utc_epoch(2999, 12, 31, 23, 59, 59)),
        ("99991231235959", MAX_DATETIME_EPOCH),
    ],
)
def test_years_beyond_2038(text: str, expected: int) -> None:
    assert parse_send_time(text, UTC_ZONE) == expected


def test_far_future_daylight_saving() -> None:
    # Beyond the table's last transition the zone's POSIX rule still applies DST.
    assert parse_send_time("21000701120000", BERLIN) == utc_epoch(2100, 7, 1, 10)
    assert parse_send_time("21000115120000", BERLIN) == utc_epoch(2100, 1, 15, 11)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2024",  # the C module reads this as 2023-12-31 00:00
        "2024070112000",  # 13 digits
        "202407011200000",  # 15 digits
        "2024-07-01 12:00",
        "20240701T12000",
        "2024070112000a",
        " 20240701120000",
        "20240701120000 ",
        "20240701120000\n",
        "+2024070112000",
        "-2024070112000",
        "20240701120000".translate(FULLWIDTH),
        "20240701120000".translate(ARABIC_INDIC),
        "2024_701120000",
    ],
)
def test_malformed_strings(text: str) -> None:
    with pytest.raises(InvalidSendTime, match="14 digits"):
        parse_send_time(text, UTC_ZONE)


@pytest.mark.parametrize(
    "text",
    [
        "20240230120000",  # 30 February (the C module turns it into 1 March)
        "20230229120000",  # 29 February in a common year
        "21000229120000",  # 2100 is not a leap year
        "20240431120000",  # 31 April
        "20241301120000",  # month 13
        "20240001120000",  # month 00
        "20240100120000",  # day 00
        "20240132120000",  # day 32
        "20240701240000",  # hour 24
        "20240701126000",  # minute 60
        "20240701120060",  # second 60 (no leap seconds)
        "00000101000000",  # year 0
    ],
)
def test_impossible_dates(text: str) -> None:
    with pytest.raises(InvalidSendTime, match="not a valid date"):
        parse_send_time(text, UTC_ZONE)


def test_leap_day_is_valid() -> None:
    assert parse_send_time("20240229120000", UTC_ZONE) == utc_epoch(2024, 2, 29, 12)
    assert parse_send_time("20000229000000", UTC_ZONE) == utc_epoch(2000, 2, 29)


@pytest.mark.parametrize(
    ("text", "zone"),
    [("19691231235959", UTC_ZONE), ("19700101000000", BERLIN), ("00010101000000", UTC_ZONE)],
)
def test_before_the_epoch_is_refused(text: str, zone: ZoneInfo) -> None:
    with pytest.raises(InvalidSendTime, match="outside"):
        parse_send_time(text, zone)


def test_non_string_is_refused() -> None:
    with pytest.raises(InvalidSendTime):
        parse_send_time(20240701120000, UTC_ZONE)  # type: ignore[arg-type]


def test_invalid_send_time_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest):
        parse_send_time("nope", UTC_ZONE)


@given(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9999, 12, 30)),
    st.sampled_from([BERLIN, NEW_YORK, UTC_ZONE, ZoneInfo("Australia/Lord_Howe")]),
)
def test_round_trip_against_zoneinfo(moment: datetime, zone: ZoneInfo) -> None:
    moment = moment.replace(microsecond=0)
    text = f"{moment:%Y%m%d%H%M%S}"
    aware = moment.replace(tzinfo=zone)
    exists = aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == moment
    if not exists:
        with pytest.raises(InvalidSendTime):
            parse_send_time(text, zone)
        return
    epoch = parse_send_time(text, zone)
    assert datetime.fromtimestamp(epoch, zone).replace(tzinfo=None) == moment
    # First occurrence: one hour (or Lord Howe's half hour) earlier does not show the same time,
    # unless that earlier instant is also this wall-clock time, which would make it the first.
    for back in (1800, 3600):
        assert datetime.fromtimestamp(epoch - back, zone).replace(tzinfo=None) != moment


# --- send_time_to_epoch ---------------------------------------------------------------------------


def test_epoch_numbers() -> None:
    assert send_time_to_epoch(0, UTC_ZONE) == 0
    assert send_time_to_epoch(1_700_000_000, BERLIN) == 1_700_000_000
    assert send_time_to_epoch(2**63 - 1, UTC_ZONE) == 2**63 - 1
    assert send_time_to_epoch(1_700_000_000.9, UTC_ZONE) == 1_700_000_000
    assert send_time_to_epoch(0.5, UTC_ZONE) == 0
    assert isinstance(send_time_to_epoch(12.0, UTC_ZONE), int)


def test_strings_go_through_parse_send_time() -> None:
    assert send_time_to_epoch("20240701120000", BERLIN) == utc_epoch(2024, 7, 1, 10)
    with pytest.raises(InvalidSendTime):
        send_time_to_epoch("2024", BERLIN)


@pytest.mark.parametrize(
    "value",
    [
        -1,
        2**63,
        2**70,
        -0.5,
        float(2**63),
        float("nan"),
        float("inf"),
        float("-inf"),
        True,
        False,
        None,
        b"20240701120000",
        Decimal("1700000000"),
        date(2024, 7, 1),
        [1700000000],
        datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC),
    ],
)
def test_invalid_values(value: object) -> None:
    with pytest.raises(InvalidSendTime):
        send_time_to_epoch(value, UTC_ZONE)  # type: ignore[arg-type]


def test_aware_datetime_is_its_instant() -> None:
    moment = datetime(2024, 7, 1, 12, tzinfo=NEW_YORK)  # 16:00 UTC
    assert send_time_to_epoch(moment, BERLIN) == utc_epoch(2024, 7, 1, 16)
    fixed = datetime(2024, 1, 1, 0, 0, 0, 999_999, tzinfo=timezone(timedelta(hours=-3)))
    assert send_time_to_epoch(fixed, BERLIN) == utc_epoch(2024, 1, 1, 3)


def test_naive_datetime_is_wall_clock_in_zone() -> None:
    assert send_time_to_epoch(datetime(2024, 7, 1, 12), BERLIN) == utc_epoch(2024, 7, 1, 10)
    assert send_time_to_epoch(datetime(2024, 1, 15, 12, 0, 0, 500_000), NEW_YORK) == utc_epoch(
        2024, 1, 15, 17
    )
    # Overlap: the first occurrence, even when the caller set fold=1.
    overlap = datetime(2024, 10, 27, 2, 30, fold=1)
    assert send_time_to_epoch(overlap, BERLIN) == utc_epoch(2024, 10, 27, 0, 30)
    with pytest.raises(InvalidSendTime, match="does not exist"):
        send_time_to_epoch(datetime(2024, 3, 31, 2, 30), BERLIN)


# --- zones ----------------------------------------------------------------------------------------


def test_parse_zone() -> None:
    assert parse_zone("Europe/Berlin") == BERLIN
    assert parse_zone("UTC").utcoffset(datetime(2024, 7, 1)) == timedelta(0)
    assert parse_zone(" America/New_York ").key == "America/New_York"


@pytest.mark.parametrize(
    "name", ["Mars/Olympus_Mons", "", "   ", "America", "../etc/passwd", "/etc/passwd", "CET-1CEST"]
)
def test_parse_zone_unknown(name: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse_zone(name)
    assert repr(name) in str(info.value)


def test_parse_zone_non_string() -> None:
    with pytest.raises(SettingsError):
        parse_zone(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("tz_value", "key"),
    [
        ("Europe/Berlin", "Europe/Berlin"),
        (":America/New_York", "America/New_York"),
        ("Asia/Tokyo", "Asia/Tokyo"),
    ],
)
def test_local_zone_from_tz_variable(tz_value: str, key: str) -> None:
    with process_tz(tz_value):
        zone = local_zone()
    assert isinstance(zone, ZoneInfo)
    assert zone.key == key


def test_local_zone_from_tz_path() -> None:
    path = "/usr/share/zoneinfo/Asia/Tokyo"
    if not Path(path).exists():
        pytest.skip("no system zoneinfo tree")
    with process_tz(path):
        zone = local_zone()
    assert isinstance(zone, ZoneInfo)
    assert zone.key == "Asia/Tokyo"


def test_empty_tz_means_utc() -> None:
    with process_tz(""):
        zone = local_zone()
        assert time.localtime(1_700_000_000).tm_gmtoff == 0
    assert zone.utcoffset(datetime(2024, 7, 1)) == timedelta(0)


@pytest.mark.parametrize(
    "rule",
    [
        "CET-1CEST,M3.5.0,M10.5.0/3",
        "XYZ-7",
        "<+0530>-5:30",
        "AEST-10AEDT,M10.1.0,M4.1.0/3",  # southern hemisphere: summer time over new year
        "NZST-12NZDT-13,M9.5.0,M4.1.0/3",
        "PST8PDT,J60/2,J300/2",
    ],
)
def test_posix_tz_rule_keeps_daylight_saving_like_the_c_library(rule: str) -> None:
    epochs = [utc_epoch(2024, m, 15, h) for m in range(1, 13) for h in (0, 12)]
    epochs += [utc_epoch(2024, 3, 31, 0, 59, 59), utc_epoch(2024, 3, 31, 1), 0]
    with process_tz(rule):
        zone = local_zone()
        expected = [time.localtime(e).tm_gmtoff for e in epochs]
    assert isinstance(zone, ZoneInfo)
    got = [datetime.fromtimestamp(e, zone).utcoffset() for e in epochs]
    assert got == [timedelta(seconds=s) for s in expected]
    assert MsiloSettings(timezone=rule).zone.utcoffset(datetime(2024, 7, 1)) == got[13]


@pytest.mark.parametrize("value", [":CET-1CEST,M3.5.0,M10.5.0/3", "Nowhere"])
def test_what_no_rule_describes_falls_back_to_the_current_offset(value: str) -> None:
    with process_tz(value):
        zone = local_zone()
        expected = time.localtime().tm_gmtoff
    assert not isinstance(zone, ZoneInfo)
    assert zone.utcoffset(None) == timedelta(seconds=expected)


def test_local_zone_without_tz_matches_the_c_library() -> None:
    with process_tz(None):
        zone = local_zone()
        for epoch in (0, 1_700_000_000, utc_epoch(2024, 7, 1), utc_epoch(2024, 1, 15)):
            offset = datetime.fromtimestamp(epoch, zone).utcoffset()
            assert offset == timedelta(seconds=time.localtime(epoch).tm_gmtoff)


# --- ctime24 and rfc1123 --------------------------------------------------------------------------


def test_ctime24_reference_examples() -> None:
    assert ctime24(1_700_000_000, UTC_ZONE) == "Tue Nov 14 22:13:20 2023"
    assert ctime24(0, UTC_ZONE) == "Thu Jan  1 00:00:00 1970"
    assert ctime24(0, UTC) == "Thu Jan  1 00:00:00 1970"


def test_ctime24_uses_the_zone() -> None:
    assert ctime24(utc_epoch(2024, 7, 1, 10), BERLIN) == "Mon Jul  1 12:00:00 2024"
    assert ctime24(utc_epoch(2024, 1, 15, 17), NEW_YORK) == "Mon Jan 15 12:00:00 2024"
    # The two passes through 02:30 in Berlin print the same wall-clock time.
    first = ctime24(utc_epoch(2024, 10, 27, 0, 30), BERLIN)
    assert first == ctime24(utc_epoch(2024, 10, 27, 1, 30), BERLIN) == "Sun Oct 27 02:30:00 2024"


def test_ctime24_layout() -> None:
    for epoch in (0, 9 * 86400, 10 * 86400, 2**31, 2**33, MAX_DATETIME_EPOCH):
        text = ctime24(epoch, UTC_ZONE)
        assert len(text) == 24
        assert text[7] == " " and text[8] != "0"


def test_ctime24_beyond_2038() -> None:
    assert ctime24(2**31, UTC_ZONE) == "Tue Jan 19 03:14:08 2038"
    assert ctime24(utc_epoch(2100, 7, 1, 10), BERLIN) == "Thu Jul  1 12:00:00 2100"
    # Past year 9999 the year simply grows, as C prints it with %d.
    assert ctime24(MAX_DATETIME_EPOCH + 1, UTC_ZONE) == "Sat Jan  1 00:00:00 10000"


CTIME_ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/St_Johns",
]
CTIME_EPOCHS = [
    0,
    1_700_000_000,
    utc_epoch(2024, 3, 31, 0, 59, 59),
    utc_epoch(2024, 3, 31, 1),
    utc_epoch(2024, 10, 27, 0, 59, 59),
    utc_epoch(2024, 10, 27, 1),
    utc_epoch(2024, 3, 10, 7),
    utc_epoch(2024, 11, 3, 6),
    2**31 - 1,
    2**31,
    utc_epoch(2100, 7, 1, 10),
    MAX_DATETIME_EPOCH,
]


@pytest.mark.parametrize("zone_name", CTIME_ZONES)
def test_ctime24_matches_time_ctime(zone_name: str) -> None:
    zone = ZoneInfo(zone_name)
    with process_tz(zone_name):
        for epoch in CTIME_EPOCHS:
            assert ctime24(epoch, zone) == time.ctime(epoch), epoch


@settings(max_examples=200)
@given(
    st.integers(min_value=0, max_value=MAX_DATETIME_EPOCH + 400 * 366 * 86400),
    st.sampled_from(CTIME_ZONES),
)
def test_ctime24_matches_time_ctime_everywhere(epoch: int, zone_name: str) -> None:
    zone = ZoneInfo(zone_name)
    with process_tz(zone_name):
        expected = time.ctime(epoch)
    assert ctime24(epoch, zone) == expected


def test_rfc1123_examples() -> None:
    assert rfc1123(1_700_000_000) == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert rfc1123(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert rfc1123(2**31) == "Tue, 19 Jan 2038 03:14:08 GMT"


def test_rfc1123_ignores_the_process_zone() -> None:
    with process_tz("America/New_York"):
        assert rfc1123(1_700_000_000) == "Tue, 14 Nov 2023 22:13:20 GMT"


@settings(max_examples=500)
@given(st.integers(min_value=0, max_value=MAX_DATETIME_EPOCH))
def test_rfc1123_matches_email_utils(epoch: int) -> None:
    assert rfc1123(epoch) == email.utils.formatdate(epoch, usegmt=True)
