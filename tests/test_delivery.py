"""BEHAVIOUR.md §4-§6: replies, leases, timers, reminders, statistics and the inbox API."""

from __future__ import annotations

import threading

import pytest

from libmsilo import InvalidRequest, MessageKind, OutgoingMessage, ReplyOutcome, Silo
from tests.helpers import T0, Clock, make_silo, message, register, settings

pytestmark = pytest.mark.usefixtures("backend")  # every backend: tests/conftest.py

ALICE = "sip:alice@example.com"
REMINDERS = {"reminder": "sip:reminder@example.com", "send_time": 60}


# ---- replies


def test_provisional_reply_changes_nothing() -> None:
    silo = make_silo()
    silo.store(message())
    [out] = silo.dump(register())
    assert silo.on_reply(out.mid, 100) is ReplyOutcome.PENDING
    assert silo.on_reply(out.mid, 180) is ReplyOutcome.PENDING
    assert silo.get(out.mid) is not None
    assert silo.on_reply(out.mid, 200) is ReplyOutcome.DELIVERED


def test_2xx_deletes_now() -> None:
    silo = make_silo()
    silo.store(message())
    [out] = silo.dump(register())
    assert silo.on_reply(out.mid, 202) is ReplyOutcome.DELIVERED
    assert silo.get(out.mid) is None
    assert silo.stats.dumped_messages == 1
    # a retransmitted 200 and a reply for an unknown id are ignored
    assert silo.on_reply(out.mid, 200) is ReplyOutcome.IGNORED
    assert silo.on_reply(99999, 200) is ReplyOutcome.IGNORED
    assert silo.on_reply(99999, 500) is ReplyOutcome.IGNORED
    assert silo.stats.dumped_messages == 1


def test_failure_releases_for_the_next_dump() -> None:
    silo = make_silo()
    silo.store(message())
    [out] = silo.dump(register())
    assert silo.on_reply(out.mid, 480) is ReplyOutcome.RETRY
    row = silo.get(out.mid)
    assert row.lease_token is None and row.attempts == 1
    assert silo.stats.failed_messages == 1
    [again] = silo.dump(register())
    assert again.mid == out.mid
    assert silo.on_reply(again.mid, 200) is ReplyOutcome.DELIVERED


def test_max_attempts_drops_the_row() -> None:
    silo = make_silo(max_attempts=2)
    mid = silo.store(message()).mid
    silo.dump(register())
    assert silo.on_reply(mid, 408) is ReplyOutcome.RETRY
    silo.dump(register())
    assert silo.on_reply(mid, 503) is ReplyOutcome.DROPPED
    assert silo.get(mid) is None
    assert (silo.stats.failed_messages, silo.stats.dropped_messages) == (2, 1)


def test_unlimited_attempts_until_expiry() -> None:
    silo = make_silo()
    mid = silo.store(message()).mid
    for _ in range(20):
        silo.dump(register())
        assert silo.on_reply(mid, 486) is ReplyOutcome.RETRY
    assert silo.get(mid).attempts == 20


def test_bad_status_code() -> None:
    silo = make_silo()
    for code in (0, 99, 700, True):
        with pytest.raises(InvalidRequest):
            silo.on_reply(1, code)


def test_late_failure_does_not_release_a_newer_lease() -> None:
    clock = Clock(T0)
    shared = make_silo(clock)
    other = Silo(shared.driver, shared.settings, clock=clock)  # a second server, same store
    mid = shared.store(message()).mid
    [first] = shared.dump(register())
    clock.advance(shared.settings.lease_seconds)  # lease lost without a reply
    [second] = other.dump(register())
    assert second.lease_token != first.lease_token
    assert shared.on_reply(mid, 500) is ReplyOutcome.IGNORED  # stale lease: nothing changes
    assert other.dump(register()) == []  # the second delivery is still leased
    assert other.on_reply(mid, 200) is ReplyOutcome.DELIVERED


def _sent_twice(
    clock: Clock, silo: Silo, gap: int = 0, *, tick: bool = False
) -> tuple[int, OutgoingMessage, OutgoingMessage]:
    """A message dumped (d1), left unanswered until its lease ran out (plus ``gap`` s, then a
    timer tick if asked), and dumped again (d2) at a re-registration."""
    mid = silo.store(message()).mid
    assert mid is not None
    [d1] = silo.dump(register())
    clock.advance(silo.policy.lease_seconds + gap)
    if tick:
        silo.tick()
    [d2] = silo.dump(register())
    assert d1.mid == d2.mid == mid and d2.lease_token != d1.lease_token
    return mid, d1, d2


def test_late_reply_of_a_superseded_delivery_does_not_release_the_newer_one() -> None:
    # issue 9.2: d1 unanswered, lease over, re-registration sends d2, then d1's 408 arrives
    clock = Clock(T0)
    silo = make_silo(clock)
    mid, d1, _ = _sent_twice(clock, silo)
    assert silo.on_reply(mid, 408) is ReplyOutcome.IGNORED  # d1's, without a token
    assert silo.dump(register()) == []  # d2's lease lives: nothing is sent a third time
    assert silo.on_reply(mid, 408, token=d1.lease_token) is ReplyOutcome.IGNORED
    assert silo.dump(register()) == []
    assert silo.on_reply(mid, 200) is ReplyOutcome.DELIVERED
    assert silo.get(mid) is None and silo.stats.dumped_messages == 1


def test_late_reply_with_token_after_purge_tick() -> None:
    clock = Clock(T0)
    silo = make_silo(clock)
    # the purge runs between the two: d1 is still remembered as unanswered
    mid, _, d2 = _sent_twice(clock, silo, 1, tick=True)
    assert silo.on_reply(mid, 500) is ReplyOutcome.IGNORED
    assert silo.dump(register()) == []
    assert silo.on_reply(mid, 503, token=d2.lease_token) is ReplyOutcome.RETRY
    [d3] = silo.dump(register())
    assert d3.mid == mid


def test_2xx_of_a_superseded_delivery_deletes() -> None:
    clock = Clock(T0)
    silo = make_silo(clock)
    mid, d1, d2 = _sent_twice(clock, silo)
    assert silo.on_reply(mid, 200, token=d1.lease_token) is ReplyOutcome.DELIVERED
    assert silo.on_reply(mid, 200, token=d2.lease_token) is ReplyOutcome.IGNORED
    assert silo.get(mid) is None and silo.stats.dumped_messages == 1


@pytest.mark.parametrize("mid", [None, "1", True, 1.0])
def test_reply_with_a_mid_that_is_no_int(mid: object) -> None:
    # issue 9.8: the same typed answer on every backend, before any driver call
    silo = make_silo()
    silo.store(message())
    for code in (200, 500, 180):
        with pytest.raises(InvalidRequest):
            silo.on_reply(mid, code)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        silo.get(mid)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        silo.delete(mid)  # type: ignore[arg-type]
    assert silo.count(ALICE) == 1


@pytest.mark.parametrize("mid", [0, -1, 2**63, 2**64 + 1])
def test_ids_no_store_can_hold(mid: int) -> None:
    silo = make_silo()
    silo.store(message())
    assert silo.on_reply(mid, 200) is ReplyOutcome.IGNORED
    assert silo.on_reply(mid, 500, token="a" * 32) is ReplyOutcome.IGNORED
    assert silo.get(mid) is None and silo.delete(mid) is False
    assert silo.count(ALICE) == 1


@pytest.mark.parametrize("token", [5, "", "t" * 65, "a\udcffb"])
def test_reply_with_a_bad_token(token: object) -> None:
    silo = make_silo()
    silo.store(message())
    [out] = silo.dump(register())
    with pytest.raises(InvalidRequest):
        silo.on_reply(out.mid, 500, token=token)  # type: ignore[arg-type]
    assert silo.on_reply(out.mid, 200, token=out.lease_token) is ReplyOutcome.DELIVERED


def test_reply_reaching_another_server() -> None:
    clock = Clock(T0)
    a = make_silo(clock)
    b = Silo(a.driver, a.settings, clock=clock)
    a.store(message())
    [out] = a.dump(register())
    # without the token another server cannot tell this lease from a newer one: it waits
    assert b.on_reply(out.mid, 500) is ReplyOutcome.IGNORED
    assert b.dump(register()) == []
    assert b.on_reply(out.mid, 500, token=out.lease_token) is ReplyOutcome.RETRY
    [out] = a.dump(register())
    assert b.on_reply(out.mid, 200) is ReplyOutcome.DELIVERED


def test_reply_for_a_stored_but_never_sent_message_is_ignored() -> None:
    silo = make_silo()
    mid = silo.store(message()).mid
    assert silo.on_reply(mid, 200) is ReplyOutcome.IGNORED
    assert silo.get(mid) is not None


# ---- timers


def test_purge_schedule() -> None:
    clock = Clock(T0)
    silo = make_silo(clock, check_time=10, clean_period=3, expire_time=5)
    mid = silo.store(message()).mid
    silo.tick()  # the first tick purges: nothing expired yet
    assert silo.get(mid) is not None
    clock.advance(29)
    silo.tick()
    assert silo.get(mid) is not None  # expired, but the next purge is due at +30 s
    clock.advance(1)
    silo.tick()
    assert silo.get(mid) is None


def test_reminder_is_sent_when_due() -> None:
    clock = Clock(T0)
    silo = make_silo(clock, timezone="UTC", **REMINDERS)
    mid = silo.store(message(body=b"call mom"), send_at=T0 + 120).mid
    assert silo.tick() == []
    assert silo.dump(register()) == []  # reminders are never dumped
    clock.advance(60)
    assert silo.tick() == []  # the sweep at +60 s: not due yet
    clock.advance(59)
    assert silo.tick() == []  # no sweep before +120 s
    clock.advance(1)
    [out] = silo.tick()
    assert isinstance(out, OutgoingMessage)
    assert out.kind is MessageKind.REMINDER and out.mid == mid
    assert out.ruri == out.to_uri == ALICE
    assert out.from_uri == "sip:reminder@example.com"
    assert out.body == b"[Reminder message - Tue Nov 14 22:15:20 2023] call mom"
    assert [n for n, _ in out.headers] == ["Content-Type", "Contact"]
    assert ("Contact", "<sip:reminder@example.com>;msilo=yes") in out.headers
    assert silo.tick() == []  # leased
    assert silo.on_reply(mid, 200) is ReplyOutcome.DELIVERED
    assert silo.stats.dumped_reminders == 1 and silo.stats.dumped_messages == 0


def test_reminder_sweep_period() -> None:
    clock = Clock(T0)
    silo = make_silo(clock, **REMINDERS)
    silo.tick()
    silo.store(message(), send_at=T0 + 1)
    clock.advance(30)
    assert silo.tick() == []  # the next sweep is at +60 s
    clock.advance(30)
    assert len(silo.tick()) == 1


def test_failed_reminder_becomes_offline_message() -> None:
    clock = Clock(T0)
    silo = make_silo(clock, timezone="UTC", **REMINDERS)
    mid = silo.store(message(body=b"x"), send_at=T0).mid
    [reminded] = silo.tick()
    assert reminded.mid == mid
    assert silo.on_reply(mid, 404) is ReplyOutcome.RETRY
    assert silo.get(mid).snd_time == 0
    assert silo.stats.failed_reminders == 1
    [dumped] = silo.dump(register())
    assert dumped.mid == mid and dumped.body.startswith(b"[Offline message - ")


@pytest.mark.parametrize("off", [{"reminder": None, "send_time": 60}, {"send_time": 0}])
def test_reminders_off(off: dict[str, object]) -> None:
    clock = Clock(T0)
    silo = make_silo(clock, **{**REMINDERS, **off})
    silo.store(message(), send_at=T0)
    assert silo.tick() == []


def test_run_forever_sends_and_stops() -> None:
    clock = Clock(T0)
    silo = make_silo(clock, **{**REMINDERS, "send_time": 1})
    silo.store(message(), send_at=T0)
    sent: list[OutgoingMessage] = []
    got = threading.Event()

    def send(msg: OutgoingMessage) -> None:
        sent.append(msg)
        got.set()

    thread = silo.start(send, poll=0.05)
    assert got.wait(10)
    thread.stop()
    assert not thread.is_alive()
    assert [m.kind for m in sent] == [MessageKind.REMINDER]


def test_send_failure_releases_the_message() -> None:
    clock = Clock(T0)
    silo = make_silo(clock, **REMINDERS)
    mid = silo.store(message(), send_at=T0).mid
    stop = threading.Event()

    def send(msg: OutgoingMessage) -> None:
        stop.set()
        raise OSError("network down")

    silo.run_forever(send, stop, poll=0.05)
    row = silo.get(mid)
    assert row.lease_token is None and row.snd_time == 0


# ---- statistics and the inbox


def test_statistics_are_per_event_and_not_swapped() -> None:
    clock = Clock(T0)
    silo = make_silo(clock, **REMINDERS)
    silo.store(message())
    silo.store(message())
    silo.store(message(), send_at=T0)
    reminder = silo.tick()[0]
    silo.on_reply(reminder.mid, 200)
    a, b = silo.dump(register())
    silo.on_reply(a.mid, 200)
    silo.on_reply(b.mid, 500)
    s = silo.stats
    assert (s.stored_messages, s.dumped_messages, s.dumped_reminders) == (3, 1, 1)
    assert (s.failed_messages, s.failed_reminders) == (1, 0)


def test_inbox_api() -> None:
    clock = Clock(T0)
    silo = make_silo(clock)
    mids = [silo.store(message(body=bytes([i]))).mid for i in range(3)]
    silo.store(message(to="sip:carol@example.com"))
    short = silo.store(message(extra=[("Expires", "5")])).mid
    assert silo.count(ALICE) == 4
    assert [r.mid for r in silo.list(ALICE, limit=2)] == mids[:2]
    assert silo.get(mids[0]).body == b"\x00"
    assert silo.delete(mids[0]) is True and silo.delete(mids[0]) is False
    clock.advance(5)
    assert silo.count(ALICE) == 2
    assert silo.purge_expired() == 1 and silo.get(short) is None
    assert silo.purge(ALICE) == 2
    assert silo.count("sip:carol@example.com") == 1


def test_from_settings_opens_the_url() -> None:
    silo = Silo.from_settings(settings(db_url="memory://"))
    assert silo.store(message()).stored
    silo.close()


def test_reminder_for_a_tel_owner_escapes_the_user() -> None:
    clock = Clock(T0)
    silo = make_silo(clock, **REMINDERS)
    silo.store(message(), owner="tel:*21#;phone-context=example.com", send_at=T0)
    [out] = silo.tick()
    assert out.ruri == "sip:*21%23@example.com"
