"""Tests of libmsilo.message: SipRequest (from fields and from the wire) and OutgoingMessage."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libmsilo.errors import InvalidRequest, InvalidURI
from libmsilo.message import (
    MAX_HEADERS,
    MAX_LINE_LENGTH,
    MessageKind,
    OutgoingMessage,
    SipRequest,
)
from libmsilo.uri import parse_name_addr, parse_uri


def wire(*lines: str, body: bytes = b"") -> bytes:
    """A request from its start line and header lines, CRLF-terminated, then the body."""
    return "".join(line + "\r\n" for line in lines).encode() + b"\r\n" + body


# RFC 3428 §4: the example MESSAGE request (From and To written as addr-spec).
RFC3428_MESSAGE = wire(
    "MESSAGE sip:user2@domain.com SIP/2.0",
    "Via: SIP/2.0/TCP user1pc.domain.com;branch=z9hG4bK776sgdkse",
    "Max-Forwards: 70",
    "From: sip:user1@domain.com;tag=49583",
    "To: sip:user2@domain.com",
    "Call-ID: asd88asd77a@1.2.3.4",
    "CSeq: 1 MESSAGE",
    "Content-Type: text/plain",
    "Content-Length: 18",
    body=b"Watson, come here.",
)

# RFC 3261 §24.1: Bob's registration.
RFC3261_REGISTER = wire(
    "REGISTER sip:registrar.biloxi.com SIP/2.0",
    "Via: SIP/2.0/UDP bobspc.biloxi.com:5060;branch=z9hG4bKnashds7",
    "Max-Forwards: 70",
    "To: Bob <sip:bob@biloxi.com>",
    "From: Bob <sip:bob@biloxi.com>;tag=456248",
    "Call-ID: 843817637684230@998sdasdh09",
    "CSeq: 1826 REGISTER",
    "Contact: <sip:bob@192.0.2.4>",
    "Expires: 7200",
    "Content-Length: 0",
)


def request(*headers: tuple[str, str], body: bytes = b"") -> SipRequest:
    return SipRequest("MESSAGE", "sip:bob@b.example", headers, body)


# ---- parsing real examples -------------------------------------------------------------------


def test_rfc3428_message() -> None:
    req = SipRequest.parse(RFC3428_MESSAGE)
    assert (req.method, req.ruri, req.original_ruri) == (
        "MESSAGE",
        "sip:user2@domain.com",
        "sip:user2@domain.com",
    )
    assert req.ruri_uri == parse_uri("sip:user2@domain.com")
    assert str(req.from_addr.uri) == "sip:user1@domain.com"  # the tag is a header param
    assert req.from_addr.tag == "49583"
    assert str(req.to_addr.uri) == "sip:user2@domain.com"
    assert req.to_addr.tag is None
    assert req.call_id == "asd88asd77a@1.2.3.4"
    assert req.content_type == "text/plain"
    assert req.body == b"Watson, come here."
    assert req.expires is None
    assert req.allow is None
    assert req.contacts == ()
    assert not req.contact_star
    assert req.headers[0] == ("Via", "SIP/2.0/TCP user1pc.domain.com;branch=z9hG4bK776sgdkse")
    assert [name for name, _ in req.headers] == [
        "Via", "Max-Forwards", "From", "To", "Call-ID", "CSeq", "Content-Type", "Content-Length",
    ]  # fmt: skip
    assert req.avps == {}
    assert req.vars == {}
    assert req.source is None
    assert req.dst_uri is None


def test_rfc3261_register() -> None:
    req = SipRequest.parse(RFC3261_REGISTER)
    assert req.method == "REGISTER"
    assert req.contacts == (parse_name_addr("<sip:bob@192.0.2.4>"),)
    assert req.expires == 7200
    assert req.from_addr.display_name == "Bob"
    assert req.from_addr.tag == "456248"
    assert req.header("cseq") == "1826 REGISTER"
    assert req.body == b""


def test_rfc3261_folded_subject() -> None:
    # RFC 3261 §7.3.1: the folded Subject is equivalent to the one-line form.
    req = SipRequest.parse(
        wire(
            "MESSAGE sip:b@b.example SIP/2.0",
            "Subject: I know you're there,",
            "         pick up the phone   ",
            "\t and talk to me!",
            "To: <sip:b@b.example>",
            "From:",
            "  <sip:a@a.example>",
            "  ;tag=1",
        )
    )
    assert req.header("Subject") == "I know you're there, pick up the phone and talk to me!"
    assert req.from_addr.tag == "1"
    assert req.header_all("from") == ["<sip:a@a.example> ;tag=1"]
    assert req.headers[0][0] == "Subject"
    assert len(req.headers) == 3


@pytest.mark.parametrize(
    ("compact", "full"),
    [
        ("f", "From"), ("t", "To"), ("m", "Contact"), ("c", "Content-Type"), ("i", "Call-ID"),
        ("l", "Content-Length"), ("v", "Via"), ("k", "Supported"), ("s", "Subject"),
        ("e", "Content-Encoding"), ("o", "Event"), ("r", "Refer-To"), ("u", "Allow-Events"),
        ("x", "Session-Expires"),
    ],
)  # fmt: skip
def test_compact_forms_are_the_same_header(compact: str, full: str) -> None:
    value = "0" if full == "Content-Length" else "v1"
    for written in (compact, compact.upper()):
        req = SipRequest.parse(wire("OPTIONS sip:b.example SIP/2.0", f"{written}: {value}"))
        for asked in (full, full.lower(), full.upper(), compact, compact.upper()):
            assert req.header(asked) == value
        assert req.headers == ((written, value),)
        fields = request((written, value))
        assert fields.header(full) == value


def test_compact_headers_message() -> None:
    req = SipRequest.parse(
        wire(
            "MESSAGE sip:bob@b.example SIP/2.0",
            "v: SIP/2.0/UDP a.example;branch=z9hG4bK1",
            'f: "Al" <sip:al@a.example>;tag=9',
            "t: sip:bob@b.example",
            "i: 77@a.example",
            "m: <sip:al@192.0.2.7:5070>;expires=60",
            "c: text/plain ; charset=utf-8 ",
            "l: 2",
            body=b"hi",
        )
    )
    assert req.from_addr.display_name == "Al"
    assert req.to_addr.uri.user == "bob"
    assert req.call_id == "77@a.example"
    assert req.content_type == "text/plain ; charset=utf-8"
    assert req.contacts[0].uri.port == 5070
    assert req.body == b"hi"


def test_repeated_headers_keep_their_order() -> None:
    req = SipRequest.parse(
        wire(
            "MESSAGE sip:b@b.example SIP/2.0",
            "Via: SIP/2.0/UDP first.example;branch=z9hG4bK1",
            "X-Note: one",
            "v: SIP/2.0/UDP second.example;branch=z9hG4bK2, SIP/2.0/UDP third.example",
            "VIA: SIP/2.0/UDP fourth.example",
        )
    )
    assert req.header("via") == "SIP/2.0/UDP first.example;branch=z9hG4bK1"
    assert req.header_all("Via") == [
        "SIP/2.0/UDP first.example;branch=z9hG4bK1",
        "SIP/2.0/UDP second.example;branch=z9hG4bK2, SIP/2.0/UDP third.example",
        "SIP/2.0/UDP fourth.example",
    ]
    assert req.header_list("Via") == [
        "SIP/2.0/UDP first.example;branch=z9hG4bK1",
        "SIP/2.0/UDP second.example;branch=z9hG4bK2",
        "SIP/2.0/UDP third.example",
        "SIP/2.0/UDP fourth.example",
    ]
    assert [n for n, _ in req.headers] == ["Via", "X-Note", "v", "VIA"]
    assert req.header("x-note") == "one"
    assert req.header("X-Missing") is None
    assert req.header_all("X-Missing") == []
    assert req.header_list("X-Missing") == []


def test_header_list_respects_quotes_and_brackets() -> None:
    req = request(
        ("Contact", '"Watson, Jr." <sip:w@x.example>;q=0.7, <sip:a,b@c.example>'),
        ("Contact", r'"esc \" ,quote" <sip:e@f.example>,,  '),
        ("Allow", "INVITE,ACK , ,MESSAGE"),
    )
    assert req.header_list("m") == [
        '"Watson, Jr." <sip:w@x.example>;q=0.7',
        "<sip:a,b@c.example>",
        r'"esc \" ,quote" <sip:e@f.example>',
    ]
    assert req.header_list("allow") == ["INVITE", "ACK", "MESSAGE"]


def test_contacts_over_several_headers() -> None:
    req = SipRequest.parse(
        wire(
            "REGISTER sip:r.example SIP/2.0",
            'Contact: <sip:a@192.0.2.1>;expires=0, sip:b@192.0.2.2;methods="MESSAGE"',
            "m: Carol <sips:c@[2001:db8::3]:5061>;q=0.1",
        )
    )
    assert [str(c.uri) for c in req.contacts] == [
        "sip:a@192.0.2.1",
        "sip:b@192.0.2.2",
        "sips:c@[2001:db8::3]:5061",
    ]
    assert req.contacts[0].param("expires") == "0"
    assert req.contacts[1].param("methods") == '"MESSAGE"'
    assert req.contacts[2].display_name == "Carol"
    assert req.contacts is req.contacts  # parsed once, cached
    assert not req.contact_star


def test_contact_star() -> None:
    req = SipRequest.parse(wire("REGISTER sip:r.example SIP/2.0", "Contact:   *  ", "Expires: 0"))
    assert req.contact_star
    assert req.contacts == ()
    assert req.expires == 0


def test_bad_contact_raises_invalid_uri() -> None:
    req = request(("Contact", "<sip:a@b.example"))
    with pytest.raises(InvalidURI):
        _ = req.contacts


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3600", 3600),
        ("  60", 60),
        ("60abc", 60),
        ("007", 7),
        ("+15", 15),
        ("-5", -5),
        ("abc", 0),
        ("- 5", 0),
        ("0", 0),
        ("99999999999999999999999", 2**31 - 1),
        ("-99999999999999999999999", -(2**31)),
        ("2147483648", 2**31 - 1),
        ("0" * 50 + "12", 12),
        ("", None),
        ("   ", None),
    ],
)
def test_expires_reads_like_atoi(value: str, expected: int | None) -> None:
    assert request(("Expires", value)).expires == expected
    assert request(("Expires", value), ("Expires", "10")).expires == expected  # the first one


def test_expires_absent() -> None:
    assert request(("Subject", "x")).expires is None


def test_allow() -> None:
    assert request(("Allow", "INVITE, ack"), ("Allow", "message ,BYE")).allow == frozenset(
        {"INVITE", "ACK", "MESSAGE", "BYE"}
    )
    assert request(("allow", "")).allow == frozenset()  # present but empty: allows nothing
    assert request(("Subject", "x")).allow is None


def test_content_type_and_call_id() -> None:
    req = request(("Content-Type", '  message/cpim; charset="utf-8"  '), ("i", " abc "))
    assert req.content_type == 'message/cpim; charset="utf-8"'
    assert req.call_id == "abc"
    empty = request()
    assert empty.content_type is None
    assert empty.call_id is None


def test_missing_and_bad_from_to() -> None:
    req = request(("To", "<sip:b@b.example>"))
    with pytest.raises(InvalidRequest) as caught:
        _ = req.from_addr
    assert not isinstance(caught.value, InvalidURI)
    assert req.to_addr.uri.user == "b"
    with pytest.raises(InvalidURI):
        _ = request(("From", "<sip:a@a.example")).from_addr
    with pytest.raises(InvalidRequest):
        _ = request(("From", "<sip:a@a.example>")).to_addr


def test_parsed_values_are_cached() -> None:
    req = SipRequest.parse(RFC3428_MESSAGE)
    assert req.from_addr is req.from_addr
    assert req.to_addr is req.to_addr
    assert req.ruri_uri is req.ruri_uri


def test_ruri_uri_of_other_schemes_raises_invalid_uri() -> None:
    req = SipRequest.parse(wire("MESSAGE im:alice@a.example SIP/2.0", "To: <sip:a@a.example>"))
    assert req.ruri == "im:alice@a.example"
    with pytest.raises(InvalidURI):
        _ = req.ruri_uri


# ---- Content-Length and the body -------------------------------------------------------------


def test_content_length_cuts_the_body() -> None:
    raw = wire("MESSAGE sip:b@b.example SIP/2.0", "Content-Length: 5", body=b"hello world")
    assert SipRequest.parse(raw).body == b"hello"


def test_no_content_length_takes_the_rest() -> None:
    raw = wire("MESSAGE sip:b@b.example SIP/2.0", "To: <sip:b@b.example>", body=b"\r\n\r\nx\x00")
    assert SipRequest.parse(raw).body == b"\r\n\r\nx\x00"


def test_binary_body_is_kept_as_bytes() -> None:
    body = bytes(range(256))
    raw = wire("MESSAGE sip:b@b.example SIP/2.0", f"l: {len(body)}", body=body)
    assert SipRequest.parse(raw).body == body


def test_equal_repeated_content_lengths_are_fine() -> None:
    raw = wire("MESSAGE sip:b@b.example SIP/2.0", "Content-Length: 2", "l: 2", body=b"hi")
    assert SipRequest.parse(raw).body == b"hi"


@pytest.mark.parametrize(
    "lengths", [("Content-Length: 05",), ("Content-Length: 05", "l: 5"), ("l: 000000000005",)]
)
def test_leading_zeros_in_content_length_do_not_count(lengths: tuple[str, ...]) -> None:
    raw = wire("MESSAGE sip:b@b.example SIP/2.0", *lengths, body=b"helloXX")
    assert SipRequest.parse(raw).body == b"hello"


@pytest.mark.parametrize("name", ["To", "t", "From", "f"])
def test_a_second_to_or_from_header_is_invalid(name: str) -> None:
    full = {"t": "To", "f": "From"}.get(name, name)
    raw = wire(
        "MESSAGE sip:b@b.example SIP/2.0",
        "From: <sip:a@a.example>;tag=1",
        "To: <sip:b@b.example>",
        f"{name}: <sip:c@c.example>",
        "Content-Length: 0",
    )
    req = SipRequest.parse(raw)
    attr = "to_addr" if full == "To" else "from_addr"
    with pytest.raises(InvalidRequest, match=f"2 {full} headers"):
        getattr(req, attr)


def test_store_refuses_a_message_with_two_to_headers() -> None:
    from tests.helpers import make_silo, message

    silo = make_silo()
    with pytest.raises(InvalidRequest, match="To headers"):
        silo.store(message(extra=[("To", "<sip:mallory@example.com>")]))
    assert silo.count("sip:alice@example.com") == 0


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (("Content-Length: 10",), b"short"),
        (("Content-Length: abc",), b""),
        (("Content-Length: -1",), b""),
        (("Content-Length: 1.5",), b"ab"),
        (("Content-Length: 99999999999",), b""),
        (("Content-Length: 2", "l: 3"), b"abc"),
        (("Content-Length:",), b""),
    ],
)
def test_bad_content_length(headers: tuple[str, ...], body: bytes) -> None:
    with pytest.raises(InvalidRequest):
        SipRequest.parse(wire("MESSAGE sip:b@b.example SIP/2.0", *headers, body=body))


# ---- start line and tolerated variations -------------------------------------------------------


def test_leading_crlfs_are_ignored() -> None:
    req = SipRequest.parse(b"\r\n\r\n" + RFC3428_MESSAGE)
    assert req.method == "MESSAGE"
    assert req.body == b"Watson, come here."


def test_bare_lf_line_endings_are_accepted() -> None:
    raw = RFC3428_MESSAGE.replace(b"\r\n", b"\n")
    req = SipRequest.parse(raw)
    assert req.body == b"Watson, come here."
    assert req.from_addr.tag == "49583"
    assert req.header("Max-Forwards") == "70"


def test_bare_lf_message_whose_body_holds_crlf() -> None:
    raw = b"MESSAGE sip:b@b.example SIP/2.0\nl: 6\n\nab\r\n\r\n"
    assert SipRequest.parse(raw).body == b"ab\r\n\r\n"


def test_whitespace_around_the_colon_and_empty_values() -> None:
    req = SipRequest.parse(
        wire("MESSAGE sip:b@b.example SIP/2.0", "Subject \t:\t hi there \t", "X-Empty:")
    )
    assert req.headers == (("Subject", "hi there"), ("X-Empty", ""))


def test_version_and_method_case() -> None:
    req = SipRequest.parse(wire("message sip:b@b.example sip/2.0"))
    assert req.method == "message"  # methods are case-sensitive: kept as written


def test_bytes_like_input() -> None:
    assert SipRequest.parse(bytearray(RFC3428_MESSAGE)).body == b"Watson, come here."
    assert SipRequest.parse(memoryview(RFC3428_MESSAGE)).call_id == "asd88asd77a@1.2.3.4"


def test_parse_passes_extras_on() -> None:
    req = SipRequest.parse(
        RFC3428_MESSAGE,
        avps={"snd_time": ["20240101000000", 20250101000000]},
        vars={"x": 1},
        source=("192.0.2.9", 5060),
        dst_uri="sip:proxy.example;lr",
        original_ruri="sip:user2@Domain.com",
    )
    assert req.avps == {"snd_time": ("20240101000000", 20250101000000)}
    assert req.vars == {"x": 1}
    assert req.source == ("192.0.2.9", 5060)
    assert req.dst_uri == "sip:proxy.example;lr"
    assert req.original_ruri == "sip:user2@Domain.com"
    assert req.ruri == "sip:user2@domain.com"
    with pytest.raises(InvalidRequest):
        SipRequest.parse(RFC3428_MESSAGE, original_ruri="not a uri")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (wire("SIP/2.0 200 OK", "Content-Length: 0"), "response"),
        (wire("sip/2.0 404 Not Found"), "response"),
        (b"", "empty line"),
        (b"\r\n\r\n", "empty line"),
        (b"hello world", "empty line"),
        (b"MESSAGE sip:b@b.example SIP/2.0\r\nTo: <sip:b@b.example>\r\n", "empty line"),
        (wire("MESSAGE  sip:b@b.example SIP/2.0"), "request line"),
        (wire("MESSAGE sip:b@b.example SIP/2.0 "), "request line"),
        (wire("MESSAGE sip:b@b.example"), "request line"),
        (wire("MESSAGE sip:b@b.example SIP/3.0"), "version"),
        (wire("MESS@GE sip:b@b.example SIP/2.0"), "token"),
        (wire("MESSAGE bob SIP/2.0"), "absolute URI"),
        (wire("MESSAGE sip:b@b.example\tx SIP/2.0"), "absolute URI"),
        (wire("MESSAGE sip:b@b.example SIP/2.0", "No colon here"), "malformed header"),
        (wire("MESSAGE sip:b@b.example SIP/2.0", "Bad Name: x"), "malformed header"),
        (wire("MESSAGE sip:b@b.example SIP/2.0", ": x"), "malformed header"),
        (wire("MESSAGE sip:b@b.example SIP/2.0", "Fröm: x"), "malformed header"),
        (wire("MESSAGE sip:b@b.example SIP/2.0", " folded: first"), "folded"),
        (b"MESSAGE sip:b@b.example SIP/2.0\r\nTo: a\rb\r\n\r\n", "stray"),
        (b"MESSAGE sip:b@b.example SIP/2.0\r\nTo: a\nb\r\n\r\n", "stray"),
        (b"MESSAGE sip:b@b.example SIP/2.0\nTo: a\r\n\n", "stray"),
        (b"MESSAGE sip:b@b.example SIP/2.0\r\nTo: a\x00b\r\n\r\n", "NUL"),
        (b"MESSAGE sip:b@b.example SIP/2.0\r\nTo: \xff\xfe\r\n\r\n", "UTF-8"),
        (b"MESSAGE sip:b@b.example SIP/2.0\r\n" + b"X: y\r\n" * (MAX_HEADERS + 1) + b"\r\n",
         "more than"),
        (wire("MESSAGE sip:b@b.example SIP/2.0", "X: " + "y" * MAX_LINE_LENGTH), "longer than"),
        (b"MESSAGE sip:b@b.example SIP/2.0\r\n" + b"X: " + b"y" * 70000, "longer than"),
    ],
)  # fmt: skip
def test_refused_input(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason):
        SipRequest.parse(raw)


def test_limits_are_inclusive() -> None:
    lines = ["X: y"] * MAX_HEADERS
    assert len(SipRequest.parse(wire("MESSAGE sip:b@b.example SIP/2.0", *lines)).headers) == (
        MAX_HEADERS
    )
    long_line = "X: " + "y" * (MAX_LINE_LENGTH - 3)
    req = SipRequest.parse(wire("MESSAGE sip:b@b.example SIP/2.0", long_line))
    assert len(req.headers[0][1]) == MAX_LINE_LENGTH - 3


def test_non_bytes_input() -> None:
    with pytest.raises(InvalidRequest):
        SipRequest.parse(cast(Any, RFC3428_MESSAGE.decode()))


# ---- construction from fields ----------------------------------------------------------------


def test_fields_construction() -> None:
    avps: dict[str, Any] = {"a": "1", "stack": [1, "two"]}
    req = SipRequest(
        "MESSAGE",
        "sip:bob@b.example",
        [("From", "<sip:a@a.example>;tag=1"), ("To", "<sip:bob@b.example>")],
        b"body",
        avps=avps,
        vars={"v": "x"},
    )
    avps["a"] = "changed"
    avps["stack"].append(3)
    assert req.avps == {"a": "1", "stack": (1, "two")}
    assert req.vars == {"v": "x"}
    assert req.original_ruri == "sip:bob@b.example"
    assert req.headers == (("From", "<sip:a@a.example>;tag=1"), ("To", "<sip:bob@b.example>"))
    assert req.from_addr.tag == "1"
    assert req.body == b"body"
    with pytest.raises(TypeError):
        req.avps["b"] = "x"  # type: ignore[index]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "MES SAGE"},
        {"method": ""},
        {"ruri": "sip:b@b.example\r\nX: y"},
        {"ruri": "bob"},
        {"ruri": ""},
        {"headers": [("Bad Name", "x")]},
        {"headers": [("", "x")]},
        {"headers": [("X", "a\r\nInjected: y")]},
        {"headers": [("X", "a\nb")]},
        {"headers": [("X", "a\rb")]},
        {"headers": [("X", "a\x00b")]},
        {"headers": [("X", cast(Any, 5))]},
        {"body": cast(Any, "text")},
        {"original_ruri": "x y"},
    ],
)
def test_fields_validation(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"method": "MESSAGE", "ruri": "sip:b@b.example"} | kwargs
    with pytest.raises(InvalidRequest):
        SipRequest(**args)


def test_request_is_immutable() -> None:
    req = SipRequest.parse(RFC3428_MESSAGE)
    with pytest.raises(AttributeError):
        req.ruri = "sip:x@y.example"
    with pytest.raises(AttributeError):
        req.extra = 1
    with pytest.raises(AttributeError):
        del req.body
    assert req.ruri == "sip:user2@domain.com"


def test_repr_is_short() -> None:
    text = repr(SipRequest.parse(RFC3428_MESSAGE))
    assert text == "<SipRequest MESSAGE sip:user2@domain.com (8 headers, 18 body bytes)>"


# ---- interop: the same values as the sipmessage package ------------------------------------


@pytest.mark.parametrize("raw", [RFC3428_MESSAGE, RFC3261_REGISTER])
def test_same_values_as_sipmessage(raw: bytes) -> None:
    sipmessage = pytest.importorskip("sipmessage")
    theirs = sipmessage.Message.parse(raw)
    ours = SipRequest.parse(raw)
    assert ours.method == theirs.method
    assert ours.ruri == str(theirs.uri)
    for mine, other in ((ours.from_addr, theirs.from_address), (ours.to_addr, theirs.to_address)):
        assert str(mine.uri) == str(other.uri)
        assert dict(mine.params) == dict(other.parameters)
    assert ours.call_id == theirs.call_id
    assert ours.body == theirs.body
    assert ours.content_type == theirs.headers.get("Content-Type")
    assert [str(c.uri) for c in ours.contacts] == [str(c.uri) for c in theirs.contact]


# ---- OutgoingMessage -------------------------------------------------------------------------


def outgoing(**changes: Any) -> OutgoingMessage:
    base = OutgoingMessage(
        kind=MessageKind.DUMP,
        mid=7,
        ruri="sip:bob@b.example",
        from_uri="sip:alice@a.example",
        to_uri="sip:bob@b.example",
        headers=(
            ("Date", "Tue, 14 Nov 2023 22:13:20 GMT"),
            ("Content-Type", "text/plain"),
            ("Contact", "<sip:alice@a.example>;msilo=yes"),
        ),
        body="[Offline message - Tue Nov 14 22:13:20 2023] héllo".encode(),
        content_type="text/plain",
    )
    return dataclasses.replace(base, **changes)


def test_message_kinds() -> None:
    assert [k.value for k in MessageKind] == ["dump", "reminder", "notice"]


def test_outgoing_message_is_frozen() -> None:
    msg = outgoing()
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.mid = 8  # type: ignore[misc]
    assert msg.next_hop is None
    assert msg.lease_token is None


def test_to_bytes_round_trips_through_the_parser() -> None:
    msg = outgoing()
    raw = msg.to_bytes(
        call_id="c1@host", from_tag="ft1", cseq=3, via="SIP/2.0/UDP h;branch=z9hG4bKx"
    )
    assert raw.startswith(
        b"MESSAGE sip:bob@b.example SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n"
    )
    assert b"\n" not in raw.replace(b"\r\n", b"")
    req = SipRequest.parse(raw)
    assert req.method == "MESSAGE"
    assert req.ruri == msg.ruri
    assert req.header("Max-Forwards") == "70"
    assert str(req.from_addr.uri) == msg.from_uri
    assert req.from_addr.tag == "ft1"
    assert str(req.to_addr.uri) == msg.to_uri
    assert req.to_addr.tag is None
    assert req.call_id == "c1@host"
    assert req.header("CSeq") == "3 MESSAGE"
    assert req.header("Content-Length") == str(len(msg.body))
    assert req.body == msg.body
    names = [n for n, _ in req.headers]
    assert names == [
        "Via", "Max-Forwards", "From", "To", "Call-ID", "CSeq", "Date", "Content-Type", "Contact",
        "Content-Length",
    ]  # fmt: skip
    assert req.header_all("Content-Type") == ["text/plain"]


def test_to_bytes_without_via_adds_content_type_when_missing() -> None:
    msg = outgoing(headers=(), content_type="text/plain;charset=UTF-8", body=b"")
    req = SipRequest.parse(msg.to_bytes(call_id="c", from_tag="t"))
    assert req.header("Via") is None
    assert req.header("CSeq") == "10 MESSAGE"
    assert req.content_type == "text/plain;charset=UTF-8"
    assert req.body == b""
    assert req.header("Content-Length") == "0"


def test_to_bytes_drops_a_stale_content_length() -> None:
    msg = outgoing(headers=(("Content-Length", "999"),), content_type=None, body=b"abc")
    req = SipRequest.parse(msg.to_bytes(call_id="c", from_tag="t"))
    assert req.header_all("Content-Length") == ["3"]
    assert req.content_type is None


@pytest.mark.parametrize(
    ("changes", "kwargs"),
    [
        ({}, {"call_id": "c\r\nX: injected", "from_tag": "t"}),
        ({}, {"call_id": "c", "from_tag": "t\n"}),
        ({}, {"call_id": "c", "from_tag": "t", "via": "v\x00"}),
        ({"headers": (("X", "a\r\nb"),)}, {"call_id": "c", "from_tag": "t"}),
        ({"ruri": "sip:b@b.example SIP/2.0\r\nX:"}, {"call_id": "c", "from_tag": "t"}),
    ],
)
def test_to_bytes_refuses_header_injection(changes: dict[str, Any], kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        outgoing(**changes).to_bytes(**kwargs)


# ---- properties ------------------------------------------------------------------------------

INTERESTING = [b"\r\n", b"\n", b"\r", b":", b" ", b"\t", b"\x00", b"\xff", b"<", b";", b",",
               b"Content-Length: 99", b"l: 0", b"From: ", b"\r\n ", b"SIP/2.0"]  # fmt: skip


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    raw = draw(st.sampled_from([RFC3428_MESSAGE, RFC3261_REGISTER]))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(raw)))
        piece = draw(st.sampled_from(INTERESTING) | st.binary(min_size=1, max_size=3))
        if draw(st.booleans()):
            raw = raw[:where] + piece + raw[where:]
        else:
            raw = raw[:where] + piece + raw[where + len(piece) :]
    return raw


def touch_everything(req: SipRequest) -> None:
    """Read every parsed property; only InvalidRequest (incl. InvalidURI) may come out."""
    for name in ("ruri_uri", "from_addr", "to_addr", "contacts"):
        with contextlib.suppress(InvalidRequest):
            getattr(req, name)
    _ = (req.expires, req.allow, req.content_type, req.call_id, req.contact_star)
    for name, _value in req.headers:
        assert req.header(name) is not None
        req.header_list(name)


@settings(max_examples=250)
@given(st.binary(max_size=300) | mutated_requests())
def test_parse_raises_only_invalid_request(raw: bytes) -> None:
    try:
        req = SipRequest.parse(raw)
    except InvalidRequest:
        return
    assert len(req.body) <= len(raw)
    touch_everything(req)


header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9\-.!%*_+`'~]{0,12}", fullmatch=True)
header_values = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00\r\n"), max_size=30
).map(lambda v: v.strip(" \t"))


@settings(max_examples=150)
@given(st.lists(st.tuples(header_names, header_values), max_size=8), st.binary(max_size=40))
def test_wire_form_of_fields_parses_back(headers: list[tuple[str, str]], body: bytes) -> None:
    headers = [(n, v) for n, v in headers if n.lower() not in ("content-length", "l")]
    raw = wire(
        "MESSAGE sip:b@b.example SIP/2.0",
        *(f"{n}: {v}" for n, v in headers),
        f"Content-Length: {len(body)}",
        body=body,
    )
    req = SipRequest.parse(raw)
    assert req.headers == (*headers, ("Content-Length", str(len(body))))
    assert req.body == body
    built = SipRequest("MESSAGE", "sip:b@b.example", req.headers, req.body)
    for name, _ in headers:
        assert built.header_all(name) == req.header_all(name)
