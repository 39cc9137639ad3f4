"""Fuzz targets shared by the atheris harnesses (``fuzz/fuzz_*.py``) and ``tests/test_fuzz.py``.

Each target takes raw bytes and returns normally, or raises what it found: only libmsilo's own
errors (:class:`~libmsilo.errors.MsiloError`) are allowed to leave the library; anything else, or
a broken property (a round trip that changes a value), propagates as the crash. Importing this
module needs no atheris.
"""

from __future__ import annotations

import contextlib
from datetime import UTC

from libmsilo import MsiloError, MsiloSettings, Silo, SipRequest
from libmsilo.core import build_notice, build_row, choose_owner, plan_dump
from libmsilo.drivers.memory import MemoryDriver
from libmsilo.templating import compile_template
from libmsilo.uri import aor, parse_contact_list, parse_name_addr, parse_uri

__all__ = ["sip_request", "store_and_dump", "template", "template_source", "uri", "uri_text"]

NOW = 1_700_000_000
_SETTINGS = MsiloSettings(
    db_url="memory://",
    timezone="UTC",
    from_address="sip:registrar@example.com",
    contact_hdr="Contact: <sip:registrar@example.com>;msilo=yes\r\n",
    offline_message="$fu: $rU is offline (sent $Tf) $hdr(Subject) $(avp(x)[*])",
    content_type_hdr="Content-Type: text/plain\r\n",
    snd_time_avp="$avp(snd_time)",
)
_POLICY = _SETTINGS.policy()
_PLAIN_SETTINGS = _SETTINGS.model_copy(update={"add_date": False})
_BASE_REQUEST = SipRequest.parse(
    b"MESSAGE sip:alice@example.com SIP/2.0\r\n"
    b'From: "Bob" <sip:bob@example.org>;tag=1\r\nTo: <sip:alice@example.com>\r\n'
    b"Contact: <sip:bob@192.0.2.4>\r\nCall-ID: a@b\r\nCSeq: 7 MESSAGE\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi",
    avps={"x": ["1", 2]},
    vars={"v": "w"},
    source=("192.0.2.4", 5060),
)


def _exercise(req: SipRequest) -> None:
    """Every accessor and core decision on a parsed request; each may refuse with MsiloError."""
    for getter in (
        lambda: req.ruri_uri,
        lambda: req.from_addr,
        lambda: req.to_addr,
        lambda: req.contacts,
        lambda: req.contact_star,
        lambda: req.expires,
        lambda: req.allow,
        lambda: req.content_type,
        lambda: req.call_id,
        lambda: req.header_list("Contact"),
        lambda: plan_dump(req),
        lambda: choose_owner(req),
        lambda: build_row(req, _POLICY, NOW, choose_owner(req)),
        lambda: build_notice(req, _POLICY, NOW),
    ):
        with contextlib.suppress(MsiloError):
            getter()


def sip_request(data: bytes) -> None:
    """``SipRequest.parse`` and everything read from the result."""
    try:
        req = SipRequest.parse(data)
    except MsiloError:
        return
    _exercise(req)


def store_and_dump(data: bytes) -> None:
    """A parsed request stored and dumped on memory: filed under the owner the core chose, found
    again through the printed owner URI, and the dumped MESSAGE re-parses with the same body."""
    try:
        req = SipRequest.parse(data)
        owner = choose_owner(req)
        to_uri = req.to_addr.uri
    except MsiloError:
        return
    silo = Silo(MemoryDriver(), _PLAIN_SETTINGS, clock=lambda: NOW)
    try:
        mid = silo.store(req).mid
    except MsiloError:
        return
    assert mid is not None
    row = silo.get(mid)
    assert row is not None and (row.username, row.domain) == owner, (row, owner)
    # The owner came from the Request-URI when complete, else from To; either printed URI must
    # name it again.
    source = to_uri if aor(to_uri) == owner else req.ruri_uri
    out = silo.dump(owner=f"<{source}>")
    assert [m.mid for m in out] == [mid], (source, owner)
    for msg in out:
        try:
            wire = msg.to_bytes(call_id="c", from_tag="t")
        except MsiloError:
            continue
        back = SipRequest.parse(wire)
        assert back.body == msg.body, "the dumped MESSAGE's body changed on the wire"


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def uri(data: bytes) -> None:
    """:func:`uri_text` on the bytes decoded (undecodable bytes become lone surrogates)."""
    uri_text(_text(data))


def uri_text(text: str) -> None:
    """URI, name-addr and Contact-list parsing; a parsed URI prints as text that parses back to
    the same URI."""
    try:
        parsed = parse_uri(text)
    except MsiloError:
        parsed = None
    if parsed is not None:
        again = parse_uri(str(parsed))
        assert again == parsed, f"{text!r} -> {str(parsed)!r} -> {again!r}"
    try:
        addr = parse_name_addr(text)
    except MsiloError:
        addr = None
    if addr is not None:
        again_addr = parse_name_addr(str(addr))
        assert again_addr == addr, f"{text!r} -> {str(addr)!r} -> {again_addr!r}"
    with contextlib.suppress(MsiloError):
        parse_contact_list(text)


def template(data: bytes) -> None:
    """:func:`template_source` on ``<source>\\n--\\n<raw request>``."""
    source, _, rest = data.partition(b"\n--\n")
    template_source(_text(source), rest)


def template_source(source: str, raw_request: bytes = b"") -> None:
    """Compiling may refuse with SettingsError; rendering a compiled template never raises,
    whatever the request holds."""
    try:
        compiled = compile_template(source)
    except MsiloError:
        return
    requests = [_BASE_REQUEST]
    with contextlib.suppress(MsiloError):
        requests.append(SipRequest.parse(raw_request, avps={"x": _text(raw_request[:20])}))
    for req in requests:
        compiled.render(req, now=NOW, tz=UTC)
