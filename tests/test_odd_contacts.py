"""Issue 9.5: one odd Contact must not veto the dump nor the choice of the notice target.

A REGISTER whose Contact list holds a usable SIP contact beside a ``<mailto:…>``, an unquoted
RFC 5626 ``+sip.instance=<urn:uuid:…>`` or a host with ``_`` delivers to the usable contact and
logs a WARNING for each one skipped. Runs on every driver (the dump claims through it).
"""

from __future__ import annotations

import logging

import pytest

from libmsilo import SipRequest
from tests.helpers import make_silo, message, register

pytestmark = pytest.mark.usefixtures("backend")  # every backend: tests/conftest.py

TARGET = "sip:alice@192.0.2.7:5060;transport=udp"
GOOD = f"<{TARGET}>"
INSTANCE = "<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"

CASES = {
    "mailto after": (f"{GOOD}, <mailto:alice@example.com>", TARGET),
    "mailto before": (f'"A" <mailto:alice@example.com>;q=0.1, {GOOD}', TARGET),
    "unquoted instance": (f"{GOOD};+sip.instance={INSTANCE};reg-id=1", TARGET),
    "underscore host": (f"<sip:alice@my_pc.lan>, {GOOD}", TARGET),
    "tel first": (f"<tel:+15550100>, {GOOD}", TARGET),
}  # fmt: skip


def odd_register(contact: str) -> SipRequest:
    return register(contact=contact)


@pytest.mark.parametrize("case", sorted(CASES))
def test_dump_goes_to_the_usable_contact(case: str, caplog: pytest.LogCaptureFixture) -> None:
    contact, target = CASES[case]
    silo = make_silo()
    mids = [silo.store(message(body=f"m{i}".encode())).mid for i in range(2)]
    with caplog.at_level(logging.DEBUG, logger="libmsilo"):
        out = silo.dump(odd_register(contact))
    assert [m.mid for m in out] == mids
    assert {m.ruri for m in out} == {target}
    raw = out[0].to_bytes(call_id="c@x", from_tag="t")
    assert raw.startswith(f"MESSAGE {target} SIP/2.0\r\n".encode())
    skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
    if case == "unquoted instance":
        assert skipped == []  # the contact is fine, its parameter merely unquoted
    else:
        assert skipped and all(r.levelno == logging.WARNING for r in skipped)


def test_only_odd_contacts_dump_nothing_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    silo = make_silo()
    mid = silo.store(message()).mid
    with caplog.at_level(logging.WARNING, logger="libmsilo"):
        assert silo.dump(register(contact="<mailto:alice@example.com>, <sip:a@x_y.lan>")) == []
    assert "mailto:alice@example.com" in caplog.text and "x_y.lan" in caplog.text
    (again,) = silo.dump(register())  # nothing was leased by the refused dump
    assert again.mid == mid


@pytest.mark.parametrize("case", sorted(CASES))
def test_notice_goes_to_the_usable_contact(case: str, caplog: pytest.LogCaptureFixture) -> None:
    contact, target = CASES[case]
    silo = make_silo(
        from_address="sip:registrar@example.com",
        offline_message="offline",
        content_type_hdr="Content-Type: text/plain\r\n",
    )
    with caplog.at_level(logging.WARNING, logger="libmsilo"):
        notice = silo.store(message(extra=[("Contact", contact)])).notice
    assert notice is not None and notice.ruri == target


VIA_NAT = "SIP/2.0/UDP 192.168.1.7:5060;branch=z9hG4bK1;received=198.51.100.9;rport=4000"


@pytest.mark.parametrize(
    ("contact", "extra", "to_contact"),
    [
        ("<sip:alice@192.0.2.7:5060>", [("Path", "<sip:edge.example.com;lr>")], False),
        ("<sip:alice@192.0.2.7:5060;ob>;reg-id=1", [], False),
        ("<sip:k3o5e8qf@x9q.invalid;transport=ws>", [], False),
        ("<sip:alice@192.0.2.7;transport=WSS>", [], False),
        ("<sip:alice@192.168.1.7:5060>", [("Via", VIA_NAT)], False),
        ("<sip:alice@198.51.100.9:4000>", [("Via", VIA_NAT)], True),
        ("<sip:alice@198.51.100.9:5060>", [("Via", VIA_NAT)], False),  # rport 4000: NAT
        ("<sip:alice@198.51.100.9>", [("Via", VIA_NAT.replace("4000", "5060"))], True),
        ("<sip:alice@192.0.2.7:5060>", [], True),
        ("<sip:a@[2001:DB8:0:0::7]>", [("Via", "SIP/2.0/UDP x;received=2001:db8::7")], True),
        ("<sip:a@[2001:db8::8]>", [("Via", "SIP/2.0/UDP x;received=2001:db8::7")], False),
    ],
)
def test_contact_only_the_registrar_reaches_gets_the_dump_at_the_aor(
    contact: str, extra: list[tuple[str, str]], to_contact: bool
) -> None:
    silo = make_silo()
    silo.store(message())
    req = register(contact=contact, extra=extra)
    if any(name == "Via" for name, _ in extra):  # the UA's Via replaces the helper's
        ours = {v for n, v in extra if n == "Via"}
        headers = [(n, v) for n, v in req.headers if n != "Via" or v in ours]
        req = SipRequest("REGISTER", req.ruri, headers)
    (out,) = silo.dump(req)
    assert out.ruri == (str(req.contacts[0].uri) if to_contact else "sip:alice@example.com")


def test_ct_template_skips_an_odd_contact() -> None:
    silo = make_silo(
        from_address="sip:registrar@example.com",
        offline_message="reply to $ct",
        content_type_hdr="Content-Type: text/plain\r\n",
    )
    req = message(extra=[("Contact", f"<mailto:bob@example.org>, {GOOD};q=0.5")])
    notice = silo.store(req).notice
    assert notice is not None and notice.body == f"reply to {GOOD};q=0.5".encode()


def test_dump_prefers_the_contact_with_the_highest_q() -> None:
    silo = make_silo()
    silo.store(message())
    contacts = (
        "<sip:alice@192.0.2.1>;q=0.1, <sip:alice@192.0.2.2>;q=0.9, "
        "<sip:alice@192.0.2.3>;q=bad, <sip:alice@192.0.2.4>;q=0.5"
    )
    (out,) = silo.dump(register(contact=contacts))
    assert out.ruri == "sip:alice@192.0.2.2"
    silo.store(message())
    (plain,) = silo.dump(register(contact="<sip:alice@192.0.2.5>;q=0.7, <sip:alice@192.0.2.6>"))
    assert plain.ruri == "sip:alice@192.0.2.6"  # no q is q=1
