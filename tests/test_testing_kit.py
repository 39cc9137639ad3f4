"""The policy kit's parts without pytest machinery: clock, SIP builders, assertions, snapshots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from libmsilo import (
    InvalidRequest,
    MessageKind,
    OutgoingMessage,
    SettingsError,
    Silo,
    StoreStatus,
)
from libmsilo.drivers.memory import MemoryDriver
from libmsilo.drivers.mongo import MongoDriver
from libmsilo.testing import (
    FakeClock,
    SnapshotChecker,
    assert_no_notice,
    assert_notice,
    assert_stored,
    isolated_settings,
    open_test_silo,
    render_messages,
    sip,
)

ALICE = "sip:alice@example.com"
BOB = "sip:bob@example.org"
NOTICES = {
    "from_address": "sip:registrar@example.com",
    "offline_message": "$rU is offline",
    "content_type_hdr": "Content-Type: text/plain\r\n",
}


def silo(clock: FakeClock | None = None, **values: object) -> Silo:
    return Silo(MemoryDriver(), isolated_settings(**values), clock=clock or FakeClock())


# ---- clock


def test_clock_starts_monday_morning_utc_and_moves_by_hand() -> None:
    clock = FakeClock()
    assert clock.now() == datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    assert clock() == clock.time() == datetime(2026, 1, 5, 9, 0, tzinfo=UTC).timestamp()
    start = clock()
    assert clock.advance(90) == start + 90
    clock.advance(timedelta(hours=1))
    assert clock() == start + 3690
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(-1)


def test_clock_reads_naive_times_in_its_zone_and_reports_in_any_zone() -> None:
    clock = FakeClock(zone="Europe/Berlin")
    clock.set(datetime(2026, 7, 1, 12, 0))  # CEST, UTC+2
    assert clock.now(UTC) == datetime(2026, 7, 1, 10, 0, tzinfo=UTC)
    assert clock.now().tzinfo == ZoneInfo("Europe/Berlin")
    clock.set(datetime(2026, 7, 1, 12, 0, tzinfo=ZoneInfo("America/New_York")))  # aware wins
    assert clock.now(UTC) == datetime(2026, 7, 1, 16, 0, tzinfo=UTC)
    clock.set(0)
    assert clock() == 0.0
    with pytest.raises(TypeError):
        clock.set("2026-01-01")  # type: ignore[arg-type]
    with pytest.raises(SettingsError):
        FakeClock(zone="Mars/Olympus")


def test_a_silo_on_the_clock_expires_and_reminds_when_the_clock_says() -> None:
    clock = FakeClock()
    store = silo(clock, expire_time=600, reminder="sip:rem@example.com", send_time=10)
    store.store(sip.message(BOB, ALICE, "soon gone"))
    store.store(sip.message(BOB, ALICE, "ring"), send_at=clock() + 300)
    assert store.tick() == []
    clock.advance(300)
    due = store.tick()
    assert [m.body for m in due] == [b"[Reminder message - Mon Jan  5 09:05:00 2026] ring"]
    clock.advance(300)
    assert_stored(store, ALICE, count=1, body="ring")  # the reminder lives from its send time


# ---- SIP builders


def test_open_test_silo_leaves_out_the_mongo_ttl_index() -> None:
    # The fake clock's Monday lies in the real past: a TTL index would delete its rows.
    with open_test_silo("mongomock://", FakeClock()) as kit:
        assert isinstance(kit.driver, MongoDriver)
        indexes = kit.driver.database[kit.settings.db_table].index_information()
    assert len(indexes) > 1 and "exp_at_1" not in indexes  # the others are made


def test_message_builder_makes_a_complete_request() -> None:
    req = sip.message('"Bob" <sip:bob@example.org>', ALICE, "héllo", headers={"Subject": "hi"})
    assert req.method == "MESSAGE" and req.ruri == ALICE
    assert req.body == "héllo".encode()
    assert req.header("Content-Length") == str(len(req.body))
    assert req.header("Content-Type") == "text/plain"
    assert req.header("Subject") == "hi"
    assert req.from_addr.params and req.from_addr.display_name == "Bob"
    assert str(req.to_addr.uri) == ALICE
    # The same call builds the same request; another body another transaction.
    again = sip.message('"Bob" <sip:bob@example.org>', ALICE, "héllo", headers={"Subject": "hi"})
    assert again.headers == req.headers
    assert sip.message(BOB, ALICE, "x").call_id != sip.message(BOB, ALICE, "y").call_id


def test_message_builder_options() -> None:
    req = sip.message(
        "<sip:bob@example.org>;tag=mine",
        "<sip:alice@example.com>",
        b"\x00bin",
        ruri="sip:alice@192.0.2.7",
        ctype=None,
        avps={"snd": "20260105100000"},
        source=("192.0.2.4", 5060),
    )
    assert req.ruri == "sip:alice@192.0.2.7"
    assert req.header("Content-Type") is None
    assert req.from_addr.param("tag") == "mine"
    assert req.avps["snd"] == "20260105100000" and req.source == ("192.0.2.4", 5060)
    with pytest.raises(InvalidRequest):
        sip.message(BOB, ALICE, "x", headers=[("Bad Name", "v")])


def test_register_and_deregister_drive_the_dump_gate() -> None:
    store = silo()
    store.store(sip.message(BOB, ALICE, "one"))
    assert store.dump(sip.register(ALICE, allow=["INVITE", "ACK"])) == []  # no MESSAGE support
    assert store.dump(sip.deregister(ALICE)) == []
    assert store.dump(sip.deregister(ALICE, "sip:alice@192.0.2.7")) == []
    reg = sip.register(ALICE, "sip:alice@192.0.2.7:5070", expires=600)
    assert reg.header("Expires") == "600" and reg.ruri == "sip:example.com"
    [msg] = store.dump(reg)
    assert msg.ruri == "sip:alice@192.0.2.7:5070"
    assert sip.register(ALICE).contacts[0].uri.host.startswith("192.0.2.")
    assert sip.register(ALICE, expires=None).header("Expires") is None


def test_parse_fixes_line_endings_indentation_and_content_length() -> None:
    req = sip.parse(
        """
        MESSAGE sip:alice@example.com SIP/2.0
        From: <sip:bob@example.org>;tag=1
        To: <sip:alice@example.com>
        Subject: folded
          line
        Content-Length: 999

        line one
        line two
        """
    )
    assert req.body == b"line one\r\nline two"
    assert req.header("Content-Length") == "18"
    assert req.header("Subject") == "folded line"
    raw = b"MESSAGE sip:a@b.c SIP/2.0\r\nFrom: <sip:x@y.z>;tag=2\nTo: <sip:a@b.c>\nl: 1\n\nabc"
    assert sip.parse(raw).body == b"abc"
    assert sip.parse(raw, avps={"a": "1"}).avps["a"] == "1"
    with pytest.raises(InvalidRequest):
        sip.parse("SIP/2.0 200 OK\n\n")


# ---- assertions


def test_assert_stored_checks_count_and_bodies_and_says_what_is_there() -> None:
    store = silo()
    for body in ("one", "two"):
        store.store(sip.message(BOB, ALICE, body))
    rows = assert_stored(store, ALICE, count=2, body="two")
    assert [r.body for r in rows] == [b"one", b"two"]
    assert_stored(store, ALICE, body=[b"one", "two"])
    assert_stored(store, "sip:carol@example.com", count=0)
    with pytest.raises(AssertionError, match=r"expected 3 stored messages, found 2.*b'one'"):
        assert_stored(store, ALICE, count=3)
    with pytest.raises(AssertionError, match="no stored message has the body b'three'"):
        assert_stored(store, ALICE, body="three")
    with pytest.raises(AssertionError, match="expected the bodies"):
        assert_stored(store, ALICE, body=["two", "one"])


def test_assert_notice_checks_recipient_and_text() -> None:
    store = silo(**NOTICES)
    result = store.store(sip.message(BOB, ALICE, "hi"))
    notice = assert_notice(result, to=BOB, contains="alice is offline")
    assert notice.kind is MessageKind.NOTICE
    assert_notice(notice, to="<sip:bob@example.org>")
    with pytest.raises(AssertionError, match=r"goes to sip:bob@example\.org"):
        assert_notice(result, to="sip:carol@example.org")
    with pytest.raises(AssertionError, match="does not contain"):
        assert_notice(result, contains="online")
    with pytest.raises(AssertionError, match="expected no offline notice"):
        assert_no_notice(result)
    quiet = store.store(sip.message(BOB, ALICE, "hi"), notify=False)
    assert_no_notice(quiet)
    with pytest.raises(AssertionError, match="got none"):
        assert_notice(quiet)
    full = silo(max_messages=1, **NOTICES)
    full.store(sip.message(BOB, ALICE, "1"))
    refused = full.store(sip.message(BOB, ALICE, "2"))
    assert refused.status is StoreStatus.QUOTA_EXCEEDED
    with pytest.raises(AssertionError, match="quota_exceeded"):
        assert_notice(refused)


# ---- snapshots


def dumped(body: str = "hi") -> list[OutgoingMessage]:
    store = silo()
    store.store(sip.message(BOB, ALICE, body))
    return store.dump(sip.register(ALICE, "sip:alice@192.0.2.7"))


def test_render_frames_messages_like_a_stream(tmp_path: Path) -> None:
    data = render_messages(dumped() + dumped("second"))
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"MESSAGE sip:alice@192.0.2.7 SIP/2.0\r\n")
    assert b"Call-ID: snapshot-1@msilo.test" in first and b"CSeq: 1 MESSAGE" in first
    assert b"Call-ID: snapshot-2@msilo.test" in rest and b"tag=tag2" in rest
    assert render_messages(dumped()[0]) == render_messages(dumped())


def test_snapshot_checker_writes_compares_and_diffs(tmp_path: Path) -> None:
    seen: dict[Path, bytes] = {}
    writer = SnapshotChecker(tmp_path, "test_x[a/b]", update=True, seen=seen)
    writer.check(dumped())
    writer.check(dumped("named"), name="other one")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["test_x_a_b_-other_one.sip", "test_x_a_b_.sip"]
    checker = SnapshotChecker(tmp_path, "test_x[a/b]", update=False)
    assert checker.check(dumped()) == (tmp_path / "test_x_a_b_.sip").read_bytes()
    with pytest.raises(AssertionError, match=r"(?s)differ from snapshot.*-\[Offline.*\+\[Offline"):
        SnapshotChecker(tmp_path, "test_x[a/b]").check(dumped("changed"))
    with pytest.raises(AssertionError, match="does not exist; run pytest with --msilo-update"):
        SnapshotChecker(tmp_path, "test_y").check(dumped())
    second = SnapshotChecker(tmp_path, "test_x[a/b]", update=True, seen=seen)
    with pytest.raises(AssertionError, match="checked twice in this run with different bytes"):
        second.check(dumped("changed"))
