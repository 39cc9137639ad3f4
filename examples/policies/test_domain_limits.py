"""Tests of the per-domain quota and lifetime policy, on every store the kit selects."""

from __future__ import annotations

import threading

from domain_limits import DAY, DomainLimits, DomainLimitsPolicy

from libmsilo import Silo, StoreStatus
from libmsilo.testing import FakeClock, assert_stored, sip

FREE = "sip:alice@free.example.com"
PREMIUM = "sip:bob@premium.example.com"
ELSEWHERE = "sip:carol@example.net"
SENDER = "sip:dave@example.org"


def policy(silo: Silo) -> DomainLimitsPolicy:
    return DomainLimitsPolicy(
        silo,
        {
            "free.example.com": DomainLimits(max_messages=2, lifetime=DAY),
            "Premium.Example.com": DomainLimits(max_messages=50, lifetime=30 * DAY),
        },
        default=DomainLimits(max_messages=1, lifetime=3600),
    )


def test_each_domain_has_its_own_quota(msilo_each: Silo) -> None:
    limits = policy(msilo_each)
    for n in range(3):
        for to in (FREE, PREMIUM, ELSEWHERE):
            limits.on_message(sip.message(SENDER, to, f"{to} {n}"))
    assert_stored(msilo_each, FREE, count=2, body=[f"{FREE} 0", f"{FREE} 1"])
    assert_stored(msilo_each, PREMIUM, count=3)
    assert_stored(msilo_each, ELSEWHERE, count=1, body=f"{ELSEWHERE} 0")
    refused = limits.on_message(sip.message(SENDER, FREE, "one too many"))
    assert refused.status is StoreStatus.QUOTA_EXCEEDED


def test_each_domain_has_its_own_lifetime(msilo_each: Silo, msilo_clock: FakeClock) -> None:
    limits = policy(msilo_each)
    for to in (FREE, PREMIUM, ELSEWHERE):
        limits.on_message(sip.message(SENDER, to, "hello"))
    msilo_clock.advance(3599)
    assert_stored(msilo_each, ELSEWHERE, count=1)
    msilo_clock.advance(1)
    assert_stored(msilo_each, ELSEWHERE, count=0)
    msilo_clock.advance(DAY - 3600)
    assert_stored(msilo_each, FREE, count=0)
    assert_stored(msilo_each, PREMIUM, count=1)
    msilo_clock.advance(29 * DAY)
    assert_stored(msilo_each, PREMIUM, count=0)


def test_expired_messages_free_their_quota_slot(msilo_each: Silo, msilo_clock: FakeClock) -> None:
    limits = policy(msilo_each)
    assert limits.on_message(sip.message(SENDER, ELSEWHERE, "first")).stored
    assert not limits.on_message(sip.message(SENDER, ELSEWHERE, "second")).stored
    msilo_clock.advance(3600)
    assert limits.on_message(sip.message(SENDER, ELSEWHERE, "third")).stored
    assert_stored(msilo_each, ELSEWHERE, body=["third"])


def test_a_shorter_expires_header_still_wins(msilo_each: Silo, msilo_clock: FakeClock) -> None:
    limits = policy(msilo_each)
    limits.on_message(sip.message(SENDER, PREMIUM, "brief", headers={"Expires": "60"}))
    msilo_clock.advance(60)
    assert_stored(msilo_each, PREMIUM, count=0)


def test_the_quota_holds_under_concurrent_senders(msilo_each: Silo) -> None:
    limits = policy(msilo_each)
    results: list[bool] = []
    lock = threading.Lock()

    def send(n: int) -> None:
        stored = limits.on_message(sip.message(f"sip:s{n}@example.org", FREE, f"m{n}")).stored
        with lock:
            results.append(stored)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 8 and results.count(True) == 2
    assert_stored(msilo_each, FREE, count=2)
