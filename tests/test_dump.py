"""BEHAVIOUR.md §3: m_dump — the REGISTER gate, owner, target, rows, the MESSAGE per row."""

from __future__ import annotations

import pytest

from libmsilo import InvalidRequest, MessageKind, SipRequest
from libmsilo.drivers.base import NewMessage
from tests.helpers import T0, Clock, make_silo, message, register

pytestmark = pytest.mark.usefixtures("backend")  # every backend: tests/conftest.py

ALICE = "sip:alice@example.com"


def stored(silo, n: int = 1, **kw) -> list[int]:
    return [silo.store(message(body=f"m{i}".encode(), **kw)).mid for i in range(n)]


# ---- the REGISTER gate


@pytest.mark.parametrize(
    ("req", "dumps"),
    [
        (register(), True),
        (register(expires=None), True),  # no Expires anywhere: the registrar default
        (register(expires="0"), False),
        (register(contact="<sip:alice@192.0.2.7>;expires=0", expires=None), False),
        (register(contact="<sip:a@192.0.2.7>;expires=0, <sip:a@192.0.2.8>;expires=0"), False),
        (register(contact="<sip:a@192.0.2.7>;expires=0, <sip:a@192.0.2.8>"), True),
        (register(contact="<sip:a@192.0.2.7>;expires=60", expires="0"), True),
        (register(contact="*", expires="0"), False),
        (register(contact=None), False),
        (register(extra=[("Allow", "INVITE, ACK, BYE")]), False),
        (register(extra=[("Allow", "INVITE, ACK"), ("Allow", "message")]), True),
        (register(contact='<sip:a@192.0.2.7>;methods="INVITE,BYE"'), False),
        (register(contact='<sip:a@192.0.2.7>;methods="INVITE,MESSAGE"'), True),
        (
            register(
                contact='<sip:a@192.0.2.7>;methods="MESSAGE"',
                extra=[("Allow", "INVITE")],
            ),
            True,
        ),
    ],
)
def test_register_gate(req: SipRequest, dumps: bool) -> None:
    silo = make_silo()
    stored(silo)
    assert len(silo.dump(req)) == (1 if dumps else 0)
    # a refused dump leases nothing
    if not dumps:
        assert len(silo.dump(register())) == 1


def test_non_register_requests_pass_the_gate() -> None:
    silo = make_silo()
    stored(silo)
    out = silo.dump(message(to=ALICE))
    assert len(out) == 1 and out[0].ruri == ALICE


# ---- owner and target


def test_owner_is_the_to_uri_or_argument() -> None:
    silo = make_silo()
    stored(silo)
    assert silo.dump(register("sip:bob@example.com")) == []
    assert len(silo.dump(owner="sip:alice@EXAMPLE.com")) == 1


def test_owner_needs_user_and_host() -> None:
    silo = make_silo()
    with pytest.raises(InvalidRequest):
        silo.dump(register("sip:example.com"))
    with pytest.raises(InvalidRequest):
        silo.dump()


def test_target_is_the_register_contact() -> None:
    silo = make_silo()
    stored(silo)
    req = register(contact='<sip:alice@192.0.2.9>;expires=0, "A" <sip:alice@192.0.2.7:5070>')
    [out] = silo.dump(req)
    assert out.ruri == "sip:alice@192.0.2.7:5070"
    assert out.to_uri == ALICE


def test_target_first_contact_accepting_message() -> None:
    silo = make_silo()
    stored(silo)
    req = register(
        contact='<sip:a@192.0.2.1>;methods="INVITE", <sip:a@192.0.2.2>;methods="MESSAGE"'
    )
    assert silo.dump(req)[0].ruri == "sip:a@192.0.2.2"


def test_contact_argument_overrides() -> None:
    silo = make_silo()
    stored(silo)
    out = silo.dump(register(), contact="sip:alice@203.0.113.5:5062;transport=tls")
    assert out[0].ruri == "sip:alice@203.0.113.5:5062;transport=tls"


@pytest.mark.parametrize("profile", ["opensips", "kamailio"])
def test_c_profiles_send_to_the_stored_to_uri(profile: str) -> None:
    silo = make_silo(profile=profile)
    stored(silo, to="sip:alice@example.com;x=1")
    assert silo.dump(register())[0].ruri == "sip:alice@example.com;x=1"


def test_outbound_proxy_is_next_hop() -> None:
    silo = make_silo(outbound_proxy="sip:127.0.0.1:5060;lr")
    stored(silo)
    assert silo.dump(register())[0].next_hop == "sip:127.0.0.1:5060;lr"
    plain = make_silo()
    stored(plain)
    assert plain.dump(register())[0].next_hop is None


# ---- rows


def test_rows_in_mid_order_without_expired_or_reminders() -> None:
    clock = Clock(T0)
    silo = make_silo(clock)
    short = silo.store(message(body=b"short", extra=[("Expires", "10")])).mid
    mids = stored(silo, 3)
    silo.store(message(body=b"later"), send_at=T0 + 3600)
    clock.advance(10)  # `short` expires now and is never sent, purged or not
    out = silo.dump(register())
    assert [m.mid for m in out] == mids
    assert short not in [m.mid for m in out]


def test_max_messages_per_dump() -> None:
    silo = make_silo()
    mids = stored(silo, 5)
    assert [m.mid for m in silo.dump(register(), max_messages=2)] == mids[:2]
    assert [m.mid for m in silo.dump(register(), max_messages=2)] == mids[2:4]
    assert [m.mid for m in silo.dump(register())] == mids[4:]


def test_leased_rows_are_not_dumped_twice() -> None:
    clock = Clock(T0)
    silo = make_silo(clock, check_time=40)
    stored(silo, 2)
    assert len(silo.dump(register())) == 2
    assert silo.dump(register()) == []
    clock.advance(39)
    assert silo.dump(register()) == []
    clock.advance(1)  # the lease ran out without a reply: at-least-once delivery
    assert len(silo.dump(register())) == 2


@pytest.mark.parametrize(
    ("values", "lease"),
    [
        ({"check_time": 5}, 32),
        ({"check_time": 30}, 32),
        ({"check_time": 60}, 60),
        ({"check_time": 5, "lease_time": 3}, 3),
    ],
)
def test_the_lease_outlives_a_sip_transaction(values: dict[str, int], lease: int) -> None:
    clock = Clock(T0)
    silo = make_silo(clock, **values)
    stored(silo)
    [out] = silo.dump(register())
    assert silo.get(out.mid).lease_until == T0 + lease
    clock.advance(lease - 1)
    assert silo.dump(register()) == []
    clock.advance(1)
    assert len(silo.dump(register())) == 1


# ---- the MESSAGE


def test_message_layout() -> None:
    silo = make_silo(Clock(T0), timezone="UTC")
    silo.store(message(ctype="text/plain;charset=UTF-8", body=b"hi"))
    [out] = silo.dump(register(), contact=None)
    assert out.kind is MessageKind.DUMP
    assert out.from_uri == "sip:bob@example.org"
    assert out.to_uri == ALICE
    assert out.headers == (
        ("Date", "Tue, 14 Nov 2023 22:13:20 GMT"),
        ("Content-Type", "text/plain;charset=UTF-8"),
        ("Contact", "<sip:bob@example.org>;msilo=yes"),
    )
    assert out.body == b"[Offline message - Tue Nov 14 22:13:20 2023] hi"
    assert out.content_type == "text/plain;charset=UTF-8"
    assert out.lease_token


def test_prefix_uses_the_time_zone() -> None:
    silo = make_silo(Clock(T0), timezone="America/New_York")
    silo.store(message(body=b"hi"))
    [out] = silo.dump(register())
    assert out.body == b"[Offline message - Tue Nov 14 17:13:20 2023] hi"
    assert ("Date", "Tue, 14 Nov 2023 22:13:20 GMT") in out.headers


def test_prefix_for_every_body_size() -> None:
    silo = make_silo()
    big = b"x" * 5000
    silo.store(message(body=big))
    [out] = silo.dump(register())
    assert out.body.endswith(b"] " + big) and len(out.body) == len(big) + 45


@pytest.mark.parametrize(
    "ctype", ["message/cpim", "application/im-iscomposing+xml", "text/html", "text/plainx"]
)
def test_other_types_are_never_altered(ctype: str) -> None:
    silo = make_silo()
    silo.store(message(ctype=ctype, body=b"<raw/>"))
    assert silo.dump(register())[0].body == b"<raw/>"


def test_add_date_off() -> None:
    silo = make_silo(add_date=0)
    silo.store(message(body=b"hi"))
    assert silo.dump(register())[0].body == b"hi"


def test_kamailio_profile_adds_contact_only_with_add_contact() -> None:
    silo = make_silo(profile="kamailio")
    silo.store(message())
    assert [n for n, _ in silo.dump(register())[0].headers] == ["Date", "Content-Type"]
    with_contact = make_silo(profile="kamailio", add_contact=1)
    with_contact.store(message())
    assert "Contact" in [n for n, _ in with_contact.dump(register())[0].headers]


def test_a_row_that_cannot_be_built_does_not_block_the_others() -> None:
    silo = make_silo()
    good1 = silo.store(message(body=b"1")).mid
    bad = silo.driver.insert(
        NewMessage("", "", "alice", "example.com", b"?", "text/plain", T0, T0 + 100)
    )
    good2 = silo.store(message(body=b"2")).mid
    out = silo.dump(register())
    assert [m.mid for m in out] == [good1, good2]
    assert silo.stats.failed_messages == 1
    assert silo.get(bad).attempts == 1


def test_unparsable_contact_refuses_the_dump() -> None:
    silo = make_silo()
    stored(silo)
    assert silo.dump(register(contact="<mailto:alice@example.com>")) == []
    assert len(silo.dump(register())) == 1
