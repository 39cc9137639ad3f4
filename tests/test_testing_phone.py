"""The kit's fixtures in use: msilo, msilo_clock, simulated phones, the marker."""

from __future__ import annotations

from datetime import datetime

import pytest

from libmsilo import MessageKind, ReplyOutcome, Silo
from libmsilo.testing import FakeClock, PhoneNetwork, assert_stored, sip

ALICE = "sip:alice@example.com"
BOB = "sip:bob@example.org"


def test_msilo_is_a_memory_silo_on_the_test_clock(msilo: Silo, msilo_clock: FakeClock) -> None:
    assert msilo.settings.db_url == "memory://"
    assert msilo.settings.timezone == "UTC"
    result = msilo.store(sip.message(BOB, ALICE, "hi"))
    row = msilo.get(result.mid or 0)
    assert row is not None and row.inc_time == int(msilo_clock())


def test_msilo_ignores_the_environment(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    monkeypatch.setenv("MSILO_MAX_MESSAGES", "1")
    silo: Silo = request.getfixturevalue("msilo")
    assert silo.settings.max_messages == 0


@pytest.mark.msilo(max_messages=5, timezone="Asia/Tokyo")
class TestMarker:
    @pytest.mark.msilo(max_messages=1)
    def test_the_closest_marker_wins(self, msilo: Silo, msilo_clock: FakeClock) -> None:
        assert msilo.settings.max_messages == 1
        assert msilo.settings.timezone == "Asia/Tokyo"
        assert msilo_clock.zone.key == "Asia/Tokyo"  # type: ignore[attr-defined]
        msilo.store(sip.message(BOB, ALICE, "1"))
        assert not msilo.store(sip.message(BOB, ALICE, "2")).stored

    def test_class_marker(self, msilo: Silo) -> None:
        assert msilo.settings.max_messages == 5


def test_phone_register_answer_and_retry(msilo: Silo, msilo_phone, msilo_clock: FakeClock) -> None:  # type: ignore[no-untyped-def]
    for body in ("one", "two"):
        msilo.store(sip.message(BOB, ALICE, body))
    alice = msilo_phone(ALICE, contact="sip:alice@192.0.2.7:5062")
    delivered = alice.register()
    assert [m.ruri for m in delivered] == ["sip:alice@192.0.2.7:5062"] * 2
    assert alice.online and alice.pending == delivered
    assert alice.answer(180) == [ReplyOutcome.PENDING] * 2 and len(alice.pending) == 2
    assert alice.answer(480) == [ReplyOutcome.RETRY] * 2 and alice.pending == []
    assert_stored(msilo, ALICE, count=2)
    assert len(alice.register()) == 2  # released by the 480: sent again
    assert alice.register() == []  # leased to the unanswered delivery
    msilo_clock.advance(60)  # the lease runs out
    got = alice.deliver_all()
    assert sorted(m.body.rsplit(b"] ", 1)[1] for m in got) == [b"one", b"two"]
    assert_stored(msilo, ALICE, count=0)
    assert len(alice.received) == 6 and alice.pending == []


def test_deregistered_phone_gets_nothing(msilo: Silo, msilo_phone) -> None:  # type: ignore[no-untyped-def]
    bob = msilo_phone(BOB)
    bob.register()
    assert bob.deregister() == [] and not bob.online
    msilo.store(sip.message(ALICE, BOB, "later"))
    assert msilo_phone(BOB) is bob
    with pytest.raises(ValueError, match="already has a phone"):
        msilo_phone(BOB, contact="sip:bob@192.0.2.99")
    assert [m.body.endswith(b"later") for m in bob.deliver_all()] == [True]


@pytest.mark.msilo(reminder="sip:reminder@example.com", send_time=60)
def test_reminders_reach_online_phones_and_fail_over_to_offline_storage(
    msilo: Silo, msilo_network: PhoneNetwork, msilo_clock: FakeClock
) -> None:
    alice = msilo_network.phone(ALICE)
    carol = msilo_network.phone("sip:carol@example.com")
    alice.register()
    msilo_clock.set(datetime(2026, 1, 5, 9, 30))
    for who in (ALICE, "sip:carol@example.com"):
        msilo.store(sip.message(BOB, who, "stand-up"), send_at=datetime(2026, 1, 5, 10, 0))
    assert msilo_network.run_timers() == []
    msilo_clock.advance(1800)
    due = msilo_network.run_timers()
    assert {m.to_uri for m in due} == {ALICE, "sip:carol@example.com"}
    assert [m.kind for m in alice.pending] == [MessageKind.REMINDER]
    assert alice.answer() == [ReplyOutcome.DELIVERED]
    # carol was offline: the network answered 480 and the reminder became an offline message
    assert [m.to_uri for m in msilo_network.unanswered] == ["sip:carol@example.com"]
    assert_stored(msilo, "sip:carol@example.com", count=1)
    [stored] = carol.deliver_all()
    assert stored.kind is MessageKind.DUMP and stored.body.endswith(b"stand-up")
