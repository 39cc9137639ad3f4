"""BEHAVIOUR.md §2: m_store — owner, columns, reminders, quota, limits, the offline notice."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from libmsilo import (
    InvalidRequest,
    InvalidSendTime,
    InvalidURI,
    MessageKind,
    SipRequest,
    StoreStatus,
)
from tests.helpers import T0, Clock, make_silo, message

pytestmark = pytest.mark.usefixtures("backend")  # every backend: tests/conftest.py

NOTICE = {
    "from_address": "sip:registrar@example.com",
    "offline_message": "$rU is offline; your message will be delivered later",
    "content_type_hdr": "Content-Type: text/plain\r\n",
}


def only_row(silo, aor="sip:alice@example.com"):
    rows = silo.list(aor)
    assert len(rows) == 1
    return rows[0]


# ---- owner


def test_owner_argument_wins() -> None:
    silo = make_silo()
    res = silo.store(message(), owner="sip:carol@Example.NET")
    row = silo.get(res.mid)
    assert (row.username, row.domain) == ("carol", "example.net")


@pytest.mark.parametrize("owner", ["alice@example.com", "http://x", "sip:@example.com", ""])
def test_bad_owner_is_refused(owner: str) -> None:
    silo = make_silo()
    with pytest.raises(InvalidRequest):
        silo.store(message(), owner=owner)
    assert silo.count("sip:alice@example.com") == 0


def test_owner_without_scheme_is_invalid_uri() -> None:
    with pytest.raises(InvalidURI):
        make_silo().store(message(), owner="alice@example.com")


def test_tel_owner() -> None:
    silo = make_silo()
    res = silo.store(message(), owner="tel:+1-201-555-0123")
    row = silo.get(res.mid)
    assert row.username == "+12015550123"


def test_owner_from_request_uri() -> None:
    silo = make_silo()
    res = silo.store(message(to="sip:alice@example.com", ruri="sip:bob2@Example.COM"))
    row = silo.get(res.mid)
    assert (row.username, row.domain) == ("bob2", "example.com")


def test_owner_falls_back_to_to_uri() -> None:
    silo = make_silo()
    res = silo.store(message(to="sip:alice@example.com", ruri="sip:example.com"))
    row = silo.get(res.mid)
    assert (row.username, row.domain) == ("alice", "example.com")


def test_to_without_user_is_refused() -> None:
    silo = make_silo()
    with pytest.raises(InvalidRequest):
        silo.store(message(to="sip:example.com", ruri="sip:example.com"))


def test_user_kept_as_written_escapes_decoded_domain_lowercased() -> None:
    silo = make_silo()
    silo.store(message(to="sip:Al%69ce@EXAMPLE.com"))
    assert silo.count("sip:Alice@example.com") == 1
    assert silo.count("sip:alice@example.com") == 0  # the user part is case-sensitive


# ---- columns


def test_columns_written() -> None:
    silo = make_silo(Clock(T0))
    req = message(
        frm='"Bob \\"B\\"" <sip:bob@example.org;transport=tcp>;tag=1928301774',
        ctype="text/plain; charset=UTF-8",
        body=b"gr\xc3\xbc\xc3\x9fe \x00\xff\r\n",
    )
    res = silo.store(req)
    row = silo.get(res.mid)
    assert row.src_addr == "sip:bob@example.org;transport=tcp"
    assert row.dst_addr == "sip:alice@example.com"
    assert row.ctype == "text/plain; charset=UTF-8"
    assert row.body == req.body
    assert row.inc_time == T0
    assert row.exp_time == T0 + 259200
    assert row.snd_time == 0


def test_missing_content_type_defaults_to_text_plain() -> None:
    silo = make_silo()
    row = silo.get(silo.store(message(ctype=None)).mid)
    assert row.ctype == "text/plain"


@pytest.mark.parametrize(
    ("expires", "lifetime"),
    [("60", 60), ("999999", 259200), ("0", 259200), ("-5", 259200), ("abc", 259200)],
)
def test_expires_header_only_shortens(expires: str, lifetime: int) -> None:
    silo = make_silo(Clock(T0))
    row = silo.get(silo.store(message(extra=[("Expires", expires)])).mid)
    assert row.exp_time == T0 + lifetime


def test_expire_time_setting() -> None:
    silo = make_silo(Clock(T0), expire_time=100)
    assert silo.get(silo.store(message()).mid).exp_time == T0 + 100


def test_a_replaced_policy_sets_the_limits_of_the_next_store() -> None:
    silo = make_silo(Clock(T0), expire_time=100)
    assert silo.get(silo.store(message()).mid).exp_time == T0 + 100
    silo.policy = dataclasses.replace(silo.policy, expire_time=40)
    assert silo.get(silo.store(message()).mid).exp_time == T0 + 40


def test_expire_time_per_call_replaces_the_setting() -> None:
    silo = make_silo(Clock(T0), expire_time=100)
    assert silo.get(silo.store(message(), expire_time=7).mid).exp_time == T0 + 7
    # the request's Expires still only shortens it
    short = silo.store(message(extra=[("Expires", "3")]), expire_time=50)
    assert silo.get(short.mid).exp_time == T0 + 3


@pytest.mark.parametrize("bad", [0, -5, True, "60", 1.5, 2**63])
def test_bad_expire_time_per_call(bad: object) -> None:
    silo = make_silo()
    with pytest.raises(InvalidRequest):
        silo.store(message(), expire_time=bad)  # type: ignore[arg-type]
    assert silo.count("sip:alice@example.com") == 0


# ---- reminders


def test_reminder_from_avp_in_zone_with_dst() -> None:
    silo = make_silo(Clock(T0), snd_time_avp="$avp(snd_time)", timezone="Europe/Berlin")
    req = message(avps={"snd_time": "20240701120000"})
    row = silo.get(silo.store(req).mid)
    assert row.snd_time == int(datetime(2024, 7, 1, 10, 0, tzinfo=UTC).timestamp())
    # a reminder lives from its send time, so it cannot be purged before it fires
    assert row.exp_time == row.snd_time + 259200


def test_reminder_avp_stack_uses_latest_value() -> None:
    silo = make_silo(snd_time_avp="snd_time")
    req = message(avps={"snd_time": ["20240101000000", "20250101000000"]})
    row = silo.get(silo.store(req).mid)
    assert row.snd_time == int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())


def test_integer_avp_is_read_as_digits() -> None:
    silo = make_silo(snd_time_avp="snd_time")
    row = silo.get(silo.store(message(avps={"snd_time": 20250101000000})).mid)
    assert row.snd_time == int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    "value", ["2024", "20240230120000", "2024010112000a", "202401011200000", ""]
)
def test_bad_reminder_time_stores_nothing(value: str) -> None:
    silo = make_silo(snd_time_avp="snd_time")
    with pytest.raises(InvalidSendTime):
        silo.store(message(avps={"snd_time": value}))
    assert silo.count("sip:alice@example.com") == 0
    assert silo.stats.stored_messages == 0


def test_send_at_argument() -> None:
    silo = make_silo(Clock(T0))
    when = datetime(2030, 5, 1, 8, 30, tzinfo=UTC)
    row = silo.get(silo.store(message(), send_at=when).mid)
    assert row.snd_time == int(when.timestamp())
    assert silo.get(silo.store(message(), send_at=T0 + 50).mid).snd_time == T0 + 50


def test_no_avp_means_ordinary_message() -> None:
    silo = make_silo(snd_time_avp="snd_time")
    assert silo.get(silo.store(message()).mid).snd_time == 0


# ---- quota


def test_quota() -> None:
    clock = Clock(T0)
    silo = make_silo(clock, max_messages=2, expire_time=100)
    assert silo.store(message()).status is StoreStatus.STORED
    assert silo.store(message()).stored
    res = silo.store(message())
    assert res.status is StoreStatus.QUOTA_EXCEEDED and res.mid is None and res.notice is None
    assert silo.count("sip:alice@example.com") == 2
    assert silo.stats.stored_messages == 2
    clock.advance(100)  # both expired: the quota counts unexpired messages only
    assert silo.store(message()).stored


def test_quota_per_call_replaces_the_setting() -> None:
    silo = make_silo(max_messages=1)
    assert silo.store(message(), max_messages=3).stored
    assert silo.store(message(), max_messages=3).stored
    assert not silo.store(message()).stored  # the setting: 1
    assert silo.store(message(), max_messages=3).stored
    assert not silo.store(message(), max_messages=3).stored
    assert silo.store(message(), max_messages=0).stored  # <= 0: no limit for this call
    assert silo.store(message(), max_messages=-1).stored
    assert silo.count("sip:alice@example.com") == 5


@pytest.mark.parametrize("bad", [True, "3", 2.0])
def test_bad_quota_per_call(bad: object) -> None:
    with pytest.raises(InvalidRequest):
        make_silo().store(message(), max_messages=bad)  # type: ignore[arg-type]


# ---- limits


def test_body_over_max_body_size() -> None:
    silo = make_silo(max_body_size=10)
    assert silo.store(message(body=b"x" * 10)).stored
    with pytest.raises(InvalidRequest):
        silo.store(message(body=b"x" * 11))
    assert silo.count("sip:alice@example.com") == 1


def test_default_max_body_size_is_64k() -> None:
    silo = make_silo()
    assert silo.store(message(body=b"x" * 65536)).stored
    with pytest.raises(InvalidRequest):
        silo.store(message(body=b"x" * 65537))


@pytest.mark.parametrize("value", ["text/plain\r\nX-Evil: 1", "a\nb", "nul\x00"])
def test_header_values_with_control_characters(value: str) -> None:
    with pytest.raises(InvalidRequest):
        SipRequest("MESSAGE", "sip:a@b", [("Subject", value)])


def test_too_long_uris_are_refused_not_truncated() -> None:
    silo = make_silo()
    long_user = "u" * 300
    with pytest.raises(InvalidRequest):
        silo.store(message(frm=f"<sip:{long_user}@example.org>"))
    with pytest.raises(InvalidRequest):
        silo.store(message(to="sip:" + "a" * 65 + "@example.com"))
    assert silo.stats.stored_messages == 0


# ---- offline notice


def test_notice_to_contact() -> None:
    silo = make_silo(**NOTICE, contact_hdr="Contact: <sip:registrar@example.com>\r\n")
    req = message(extra=[("Contact", "<sip:bob@198.51.100.3:5070;transport=tcp>")])
    notice = silo.store(req).notice
    assert notice is not None
    assert notice.kind is MessageKind.NOTICE and notice.mid is None
    assert notice.ruri == "sip:bob@198.51.100.3:5070;transport=tcp"
    assert notice.to_uri == "sip:bob@example.org"
    assert notice.from_uri == "sip:registrar@example.com"
    assert notice.body == b"alice is offline; your message will be delivered later"
    # both contact_hdr and content_type_hdr are applied (OpenSIPS 3.x drops contact_hdr)
    assert notice.headers == (
        ("Contact", "<sip:registrar@example.com>"),
        ("Content-Type", "text/plain"),
    )
    assert notice.content_type == "text/plain"


def test_notice_to_from_without_usable_contact() -> None:
    silo = make_silo(**NOTICE)
    assert silo.store(message()).notice.ruri == "sip:bob@example.org"
    tel = message(extra=[("Contact", "<tel:+123>")])
    assert silo.store(tel).notice.ruri == "sip:bob@example.org"
    sips = message(extra=[("Contact", "<sips:bob@198.51.100.3>")])
    assert silo.store(sips).notice.ruri == "sips:bob@198.51.100.3"


def test_notice_use_contact_off() -> None:
    silo = make_silo(**NOTICE, use_contact=0)
    req = message(extra=[("Contact", "<sip:bob@198.51.100.3>")])
    assert silo.store(req).notice.ruri == "sip:bob@example.org"


def test_notice_next_hop_is_outbound_proxy() -> None:
    silo = make_silo(**NOTICE, outbound_proxy="sip:proxy.example.com;lr")
    assert silo.store(message()).notice.next_hop == "sip:proxy.example.com;lr"


def test_no_notice_when_not_configured_or_not_wanted() -> None:
    assert make_silo().store(message()).notice is None
    silo = make_silo(**NOTICE)
    res = silo.store(message(), notify=False)
    assert res.stored and res.notice is None


def test_loop_guard() -> None:
    silo = make_silo(**NOTICE)
    from_us = message(frm="<sip:registrar@EXAMPLE.com>;tag=1")
    assert silo.store(from_us).notice is None
    marked = message(extra=[("Contact", "<sip:x@example.com>;msilo=yes")])
    assert silo.store(marked).notice is None
    unguarded = make_silo(**NOTICE, notify_loop_guard=False)
    assert unguarded.store(from_us).notice is not None


def test_notice_header_injection_is_refused() -> None:
    evil = message(body=b"a\r\nX-Evil: 1")
    evil_silo = make_silo(**{**NOTICE, "content_type_hdr": "Content-Type: $rb\r\n"})
    res = evil_silo.store(evil)
    assert res.stored and res.notice is None


def test_stored_messages_statistic() -> None:
    silo = make_silo()
    for _ in range(3):
        silo.store(message())
    assert silo.stats.stored_messages == 3


def test_notice_with_a_non_sip_contact_goes_to_from() -> None:
    silo = make_silo(**NOTICE)
    req = message(extra=[("Contact", "<mailto:bob@example.org>")])
    assert silo.store(req).notice.ruri == "sip:bob@example.org"


def test_tel_owner_keeps_its_phone_context() -> None:
    silo = make_silo()
    row = silo.get(silo.store(message(), owner="tel:7042;phone-context=Example.COM").mid)
    assert (row.username, row.domain) == ("7042", "example.com")


# ---- values no backend can store (issue 9.10), refused before any driver call


@pytest.mark.parametrize("send_at", [2**63 - 1, 2**63 - 100])
def test_send_time_whose_expiry_passes_int64_is_refused(send_at: int) -> None:
    silo = make_silo(Clock(T0))
    with pytest.raises(InvalidSendTime):
        silo.store(message(), send_at=send_at)
    assert silo.count("sip:alice@example.com") == 0


def test_latest_storable_send_time() -> None:
    silo = make_silo(Clock(T0), expire_time=10)
    row = silo.get(silo.store(message(), send_at=2**63 - 11).mid)
    assert (row.snd_time, row.exp_time) == (2**63 - 11, 2**63 - 1)


@pytest.mark.parametrize(
    "kw",
    [
        {"ctype": "text/plain; x=\udcff"},
        {"frm": '"Bob" <sip:b\udcffob@example.org>;tag=1'},
        {"to": "sip:al\udcffice@example.com"},
    ],
)
def test_lone_surrogates_are_refused_before_the_driver(kw: dict[str, str]) -> None:
    silo = make_silo(max_messages=1)
    with pytest.raises(InvalidRequest):
        silo.store(message(**kw))
    # no quota slot is left behind: the next message fits
    assert silo.store(message()).stored
    assert silo.count("sip:alice@example.com") == 1


def test_lone_surrogate_in_an_owner_is_refused() -> None:
    silo = make_silo()
    with pytest.raises(InvalidRequest):
        silo.store(message(), owner="sip:x\udcff@example.com")
    with pytest.raises(InvalidRequest):
        silo.dump(owner="sip:x\udcff@example.com")
    with pytest.raises(InvalidRequest):
        silo.count("sip:x\udcff@example.com")


# ---- store never raises once the row is stored (issue 9.9)


@pytest.mark.parametrize(
    "kw",
    [
        {"frm": '"B\udcffob" <sip:bob@example.org>;tag=1'},
        {"avps": {"who": "\udcff"}},
    ],
)
def test_notice_that_cannot_be_rendered_is_reported_not_raised(kw: dict[str, object]) -> None:
    silo = make_silo(**{**NOTICE, "offline_message": "$fn $avp(who) is offline"})
    res = silo.store(message(**kw))  # type: ignore[arg-type]
    assert res.stored and res.notice is None
    assert res.notice_error is not None and "Unicode" in res.notice_error
    assert silo.get(res.mid) is not None and silo.stats.stored_messages == 1


def test_notice_error_is_none_when_all_is_well() -> None:
    res = make_silo(**NOTICE).store(message())
    assert res.notice is not None and res.notice_error is None
    assert make_silo(**NOTICE).store(message(), notify=False).notice_error is None
