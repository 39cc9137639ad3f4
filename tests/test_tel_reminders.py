"""Issue 9.7: reminders for a ``tel:`` owner.

A ``tel:`` owner without phone-context has no host: its reminder is sent to the ``tel:`` URI,
which only a proxy can route (RFC 3261 §19.1.6 leaves tel: routing to the proxy), so such a
reminder needs ``outbound_proxy`` and is refused at store time without one. A ``tel:`` owner with
a phone-context domain gets ``sip:number@domain``, as every owner with a host. Runs on every
backend (the reminder is claimed through the driver).
"""

from __future__ import annotations

import pytest

from libmsilo import InvalidRequest, MessageKind, SipRequest
from libmsilo.silo import ReplyOutcome
from tests.helpers import T0, Clock, make_silo, message

pytestmark = pytest.mark.usefixtures("backend")  # every backend: tests/conftest.py

REMINDERS = {"reminder": "sip:reminder@example.com", "send_time": 60}
PROXY = "sip:proxy.example.com;lr"


def test_tel_owner_reminder_goes_to_the_tel_uri_through_the_proxy() -> None:
    clock = Clock(T0)
    silo = make_silo(clock, outbound_proxy=PROXY, **REMINDERS)
    mid = silo.store(message(), "tel:+1-555-0100", send_at=T0 + 60).mid
    assert silo.count("tel:+15550100") == 1
    clock.advance(60)
    (out,) = silo.tick()
    assert (out.kind, out.mid) == (MessageKind.REMINDER, mid)
    assert out.ruri == out.to_uri == "tel:+15550100"
    assert out.next_hop == PROXY
    sent = SipRequest.parse(out.to_bytes(call_id="c@x", from_tag="t"))
    assert sent.ruri == "tel:+15550100" and str(sent.to_addr.uri) == "tel:+15550100"
    assert silo.on_reply(mid or 0, 200) is ReplyOutcome.DELIVERED
    assert (silo.stats.dumped_reminders, silo.stats.failed_reminders) == (1, 0)


def test_tel_owner_reminder_without_a_proxy_is_refused_at_store_time() -> None:
    silo = make_silo(**REMINDERS)
    with pytest.raises(InvalidRequest, match="outbound_proxy"):
        silo.store(message(), "tel:+1-555-0100", send_at=T0 + 60)
    assert silo.count("tel:+15550100") == 0
    # An ordinary message for the same owner is fine: it is dumped, never sent by number.
    assert silo.store(message(), "tel:+1-555-0100").stored


def test_tel_owner_with_phone_context_gets_a_sip_target() -> None:
    clock = Clock(T0)
    silo = make_silo(clock, **REMINDERS)
    silo.store(message(), "tel:555-0100;phone-context=example.com", send_at=T0 + 60)
    clock.advance(60)
    (out,) = silo.tick()
    assert out.ruri == "sip:5550100@example.com"
