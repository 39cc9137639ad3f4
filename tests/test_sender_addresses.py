"""Issue 9.4: name-addr settings for the From of notices and reminders; bad addresses refused.

``from_address``, ``reminder`` and ``outbound_proxy`` may be written as a bare URI or as a
name-addr. The display name and the URI each land in their place of the From header (checked by
parsing the bytes sent); a value that is no SIP address fails when the settings are built.
"""

from __future__ import annotations

import logging

import pytest

from libmsilo import MessageKind, SettingsError, SipRequest
from tests.helpers import T0, Clock, make_silo, message, settings

TCP = ";transport=tcp"
NOTICE = {
    "offline_message": "$rU is offline",
    "content_type_hdr": "Content-Type: text/plain\r\n",
}


def sent(msg: object) -> SipRequest:
    """The outgoing MESSAGE as the peer parses it."""
    raw = msg.to_bytes(call_id="c1@msilo", from_tag="t1")  # type: ignore[attr-defined]
    return SipRequest.parse(raw)


@pytest.mark.parametrize(
    ("setting", "name", "uri"),
    [
        ('"Msg Service" <sip:registrar@example.org>', "Msg Service", "sip:registrar@example.org"),
        ("Msg <sip:registrar@example.org;transport=tcp>", "Msg", "sip:registrar@example.org" + TCP),
        ("<sips:registrar@example.org>", None, "sips:registrar@example.org"),
        ("sip:registrar@example.org;transport=tcp", None, "sip:registrar@example.org" + TCP),
        ('"Dienst \\"Ö\\"" <sip:r@example.org>', 'Dienst "Ö"', "sip:r@example.org"),
    ],
)  # fmt: skip
def test_notice_from_keeps_name_and_uri(setting: str, name: str | None, uri: str) -> None:
    silo = make_silo(from_address=setting, **NOTICE)
    notice = silo.store(message()).notice
    assert notice is not None
    assert (notice.from_uri, notice.from_name) == (uri, name)
    frm = sent(notice).from_addr
    assert (str(frm.uri), frm.display_name, frm.tag) == (uri, name, "t1")


def test_templated_from_address_with_a_display_name() -> None:
    silo = make_silo(from_address='"Offline for $rU" <sip:msilo@$fd>', **NOTICE)
    notice = silo.store(message()).notice
    assert notice is not None
    frm = sent(notice).from_addr
    assert (str(frm.uri), frm.display_name) == ("sip:msilo@example.org", "Offline for alice")


def test_templated_from_address_that_renders_no_address_sends_no_notice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    silo = make_silo(from_address="$hdr(X-Notice-From)", **NOTICE)
    with caplog.at_level(logging.WARNING, logger="libmsilo"):
        result = silo.store(message(extra=[("X-Notice-From", "not an address")]))
    assert result.stored and result.notice is None
    assert "from_address" in caplog.text
    ok = silo.store(message(extra=[("X-Notice-From", '"N" <sip:n@example.org>')])).notice
    assert ok is not None and ok.from_name == "N"


def test_reminder_from_keeps_name_and_uri() -> None:
    clock = Clock(T0)
    silo = make_silo(clock, reminder='"Reminders" <sip:reminder@example.com>', send_time=60)
    mid = silo.store(message(body=b"call mom"), send_at=T0 + 60).mid
    clock.advance(60)
    (out,) = silo.tick()
    assert out.kind is MessageKind.REMINDER and out.mid == mid
    assert (out.from_uri, out.from_name) == ("sip:reminder@example.com", "Reminders")
    assert ("Contact", "<sip:reminder@example.com>;msilo=yes") in out.headers
    req = sent(out)
    assert (str(req.from_addr.uri), req.from_addr.display_name) == (
        "sip:reminder@example.com",
        "Reminders",
    )
    assert str(req.contacts[0].uri) == "sip:reminder@example.com"


@pytest.mark.parametrize(
    ("value", "next_hop"),
    [
        ("sip:proxy.example.com;lr", "sip:proxy.example.com;lr"),
        ("<sip:proxy.example.com:5070;lr>", "sip:proxy.example.com:5070;lr"),
        ('"Edge" <sips:[2001:db8::1];lr>', "sips:[2001:db8::1];lr"),
    ],
)
def test_outbound_proxy_name_addr_becomes_the_next_hop_uri(value: str, next_hop: str) -> None:
    silo = make_silo(outbound_proxy=value, from_address="sip:r@example.org", **NOTICE)
    notice = silo.store(message()).notice
    assert notice is not None and notice.next_hop == next_hop


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("from_address", '"Msg Service" <sip:registrar@example.org'),
        ("from_address", "registrar@example.org"),
        ("from_address", "Msg Service"),
        ("reminder", "sip:"),
        ("reminder", '"R" <mailto:r@example.org>'),
        ("reminder", "sip:r@exa mple.org"),
        ("outbound_proxy", "proxy.example.com"),
        ("outbound_proxy", "tel:+15550100"),
        ("outbound_proxy", "<sip:proxy.example.com;lr"),
    ],
)
def test_invalid_sip_addresses_are_refused_at_start_up(name: str, value: str) -> None:
    extra = NOTICE if name == "from_address" else {}
    with pytest.raises(SettingsError, match=name):
        settings(**{name: value}, **extra)
