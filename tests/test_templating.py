"""Tests of libmsilo.templating: each pseudo-variable, missing values, indexes, syntax errors."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from libmsilo.errors import SettingsError
from libmsilo.message import SipRequest
from libmsilo.templating import NULL, PLAIN_VARIABLES, Template, TemplateError, compile_template

UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
NOW = 1_700_000_000.75  # Tue Nov 14 22:13:20 2023 UTC

FULL = SipRequest(
    "MESSAGE",
    "sip:bob@example.com:5070;transport=udp",
    headers=[
        ("From", '"Alice Smith" <sip:alice@example.org>;tag=abc123'),
        ("To", "Bob <sip:bob@example.com>"),
        ("Call-ID", "call-1@host.example.org"),
        ("CSeq", "17 MESSAGE"),
        (
            "Contact",
            '"Al" <sip:alice@192.0.2.10:5060;transport=tcp>;expires=60, <sip:a@192.0.2.11>',
        ),
        ("Content-Type", "text/plain;charset=UTF-8"),
        ("P-Asserted-Identity", '"Alice" <sip:alice@pai.example.org>, <tel:+15551234567>'),
        ("Subject", "first subject"),
        ("X-Multi", "a"),
        ("X-Multi", "b, c"),
        ("X-Multi", "d"),
    ],
    body="héllo wörld".encode(),
    avps={"snd": "20240101000000", "stack": ["old", "mid", "new"], "n": 42, "one": ["only"]},
    vars={"greeting": "hi there", "count": 7},
    source=("198.51.100.7", 5080),
    dst_uri="sip:proxy.example.net;lr",
    original_ruri="sip:robert@old.example.com",
)

BARE = SipRequest(
    "MESSAGE",
    "sip:example.com",
    headers=[("From", "<sip:example.org>;tag=1"), ("To", "sip:carol@example.net")],
)


def render(source: str, req: SipRequest = FULL, tz: ZoneInfo = UTC, now: float = NOW) -> str:
    return compile_template(source).render(req, now=now, tz=tz)


# --- each variable --------------------------------------------------------------------------------

FULL_VALUES = {
    "ru": "sip:bob@example.com:5070;transport=udp",
    "rU": "bob",
    "rd": "example.com",
    "rp": "5070",
    "ou": "sip:robert@old.example.com",
    "oU": "robert",
    "od": "old.example.com",
    "op": "5060",  # none written: the default port
    "du": "sip:proxy.example.net;lr",
    "fu": "sip:alice@example.org",
    "fU": "alice",
    "fd": "example.org",
    "fn": '"Alice Smith"',  # as written, quotes kept
    "tu": "sip:bob@example.com",
    "tU": "bob",
    "td": "example.com",
    "tn": "Bob",
    "ci": "call-1@host.example.org",
    "rm": "MESSAGE",
    "cs": "17",
    "ct": '"Al" <sip:alice@192.0.2.10:5060;transport=tcp>;expires=60',
    "cT": "text/plain;charset=UTF-8",
    "rb": "héllo wörld",
    "si": "198.51.100.7",
    "sp": "5080",
    "ai": "sip:alice@pai.example.org",
    "Ts": "1700000000",
    "Tf": "Tue Nov 14 22:13:20 2023",
}


def test_every_plain_variable_is_covered() -> None:
    assert set(FULL_VALUES) == set(PLAIN_VARIABLES)


@pytest.mark.parametrize(("name", "expected"), sorted(FULL_VALUES.items()))
def test_plain_variable(name: str, expected: str) -> None:
    assert render(f"${name}") == expected
    assert render(f"$({name})") == expected
    assert render(f"<$({name})>") == f"<{expected}>"


def test_variables_inside_text() -> None:
    assert render("sip:$rU@$rd:$rp") == "sip:bob@example.com:5070"
    assert render("$fU wrote to $tU.") == "alice wrote to bob."
    assert render("$(rU)x-$(fd)") == "bobx-example.org"


def test_tf_uses_the_zone_and_ts_floors() -> None:
    assert render("$Tf", tz=BERLIN) == "Tue Nov 14 23:13:20 2023"
    assert render("$Ts", now=1_700_000_000.999) == "1700000000"
    assert render("$Ts", now=0) == "0"
    assert render("$Ts $Tf", now=2**31) == "2147483648 Tue Jan 19 03:14:08 2038"


def test_headers() -> None:
    assert render("$hdr(Subject)") == "first subject"
    assert render("$hdr(subject)") == "first subject"  # header names are case-insensitive
    assert render("$hdr(i)") == "call-1@host.example.org"  # compact form of Call-ID
    assert render("$hdr(X-Multi)") == "a"
    assert render("$(hdr(X-Multi))") == "a"
    assert render("$hdr(X-Missing)") == NULL


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        ("0", "a"),
        ("1", "b, c"),
        ("2", "d"),
        ("3", NULL),
        ("-1", "d"),
        ("-3", "a"),
        ("-4", NULL),
        ("*", "a, b, c, d"),
    ],
)
def test_header_index(index: str, expected: str) -> None:
    assert render(f"$(hdr(X-Multi)[{index}])") == expected


def test_header_index_on_missing_header() -> None:
    assert render("$(hdr(X-None)[0])") == NULL
    assert render("$(hdr(X-None)[*])") == NULL
    assert render("$(hdr(Subject)[-1])") == "first subject"


def test_avps() -> None:
    assert render("$avp(snd)") == "20240101000000"
    assert render("$avp(n)") == "42"
    assert render("$avp(stack)") == "new"  # the most recent value: the last of the sequence
    assert render("$avp(one)") == "only"
    assert render("$avp(nope)") == NULL


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        ("0", "new"),
        ("1", "mid"),
        ("2", "old"),
        ("3", NULL),
        ("-1", "old"),
        ("-3", "new"),
        ("-4", NULL),
        ("*", "new, mid, old"),
    ],
)
def test_avp_index(index: str, expected: str) -> None:
    assert render(f"$(avp(stack)[{index}])") == expected


def test_avp_index_on_single_and_missing_values() -> None:
    assert render("$(avp(n)[0])") == "42"
    assert render("$(avp(n)[1])") == NULL
    assert render("$(avp(n)[*])") == "42"
    assert render("$(avp(nope)[*])") == NULL
    empty = SipRequest("MESSAGE", "sip:a@b", headers=[], avps={"e": []})
    assert render("$avp(e) $(avp(e)[*])", req=empty) == f"{NULL} {NULL}"


def test_vars() -> None:
    assert render("$var(greeting)") == "hi there"
    assert render("$var(count)") == "7"
    assert render("$(var(count))") == "7"
    assert render("$var(nope)") == NULL


def test_bools_print_as_integers() -> None:
    req = SipRequest("MESSAGE", "sip:a@b", headers=[], avps={"b": [False, True]}, vars={"t": True})
    assert render("$var(t) $avp(b) $(avp(b)[*])", req=req) == "1 1 1, 0"


# --- missing and malformed values -----------------------------------------------------------------

BARE_VALUES = {
    "ru": "sip:example.com",
    "rU": NULL,  # empty user
    "rd": "example.com",
    "rp": "5060",  # none written: the default port
    "ou": "sip:example.com",  # not rewritten: the original is the current one
    "oU": NULL,
    "od": "example.com",
    "op": "5060",
    "du": NULL,
    "fu": "sip:example.org",
    "fU": NULL,
    "fd": "example.org",
    "fn": NULL,
    "tu": "sip:carol@example.net",
    "tU": "carol",
    "td": "example.net",
    "tn": NULL,
    "ci": NULL,
    "cs": NULL,
    "ct": NULL,
    "cT": NULL,
    "rb": NULL,
    "si": NULL,
    "sp": NULL,
    "ai": NULL,
}


@pytest.mark.parametrize(("name", "expected"), sorted(BARE_VALUES.items()))
def test_missing_values(name: str, expected: str) -> None:
    assert render(f"${name}", req=BARE) == expected


def test_missing_values_do_not_hide_present_ones() -> None:
    assert render("[$ci|$rm|$avp(x)|$var(y)|$hdr(Subject)]", req=BARE) == (
        f"[{NULL}|MESSAGE|{NULL}|{NULL}|{NULL}]"
    )


def test_unparsable_headers_render_null() -> None:
    broken = SipRequest(
        "MESSAGE",
        "sip:bob@example.com",
        headers=[
            ("From", "<<<not a uri"),
            ("To", '"unterminated <sip:x@y>'),
            ("P-Asserted-Identity", "@@@"),
            ("CSeq", "abc MESSAGE"),
        ],
        original_ruri="http://example.com/x",
    )
    text = render("$fu|$fU|$fd|$fn|$tu|$tU|$td|$tn|$ai|$cs|$oU|$od|$rU", req=broken)
    assert text == "|".join([NULL] * 12 + ["bob"])
    assert render("$ou", req=broken) == "http://example.com/x"  # not SIP: no user or host


def test_missing_from_and_to_render_null() -> None:
    req = SipRequest("MESSAGE", "sip:bob@example.com", headers=[])
    assert render("$fu $tu $fn $tn $ct", req=req) == " ".join([NULL] * 5)


def test_uris_and_names_render_as_written() -> None:
    req = SipRequest(
        "MESSAGE",
        "SIPS:Bob@Example.com;transport=tls",
        headers=[
            ("From", '"A \\"q\\" <x>" <SIP:Alice@Example.org;transport=udp>;tag=1'),
            ("To", "sip:carol@example.net;tag=2"),
            ("Contact", "<sip:a@192.0.2.1>;q=0.5, <sip:b@192.0.2.2>"),
        ],
    )
    assert render("$ru|$rp", req=req) == "SIPS:Bob@Example.com;transport=tls|5061"
    assert render("$fu|$fn", req=req) == 'SIP:Alice@Example.org;transport=udp|"A \\"q\\" <x>"'
    assert render("$tu|$tn", req=req) == f"sip:carol@example.net|{NULL}"
    assert render("$ct", req=req) == "<sip:a@192.0.2.1>;q=0.5"  # OpenSIPS: the first contact
    kamailio = compile_template("$ct", "kamailio").render(req, now=NOW, tz=UTC)
    assert kamailio == "<sip:a@192.0.2.1>;q=0.5, <sip:b@192.0.2.2>"  # the whole header


def test_unknown_dialect_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="dialect"):
        compile_template("$ct", "asterisk")


def test_contact_star_renders_raw_value() -> None:
    req = SipRequest("REGISTER", "sip:example.com", headers=[("Contact", "*"), ("Expires", "0")])
    assert render("$ct", req=req) == "*"


def test_body_is_decoded_with_replacement() -> None:
    req = SipRequest("MESSAGE", "sip:a@b", headers=[], body=b"ok \xff\xfe end")
    assert render("$rb", req=req) == "ok \ufffd\ufffd end"


def test_values_are_not_reinterpreted() -> None:
    # A value containing "$" or "<null>" comes out as is; templates are not re-expanded.
    req = SipRequest("MESSAGE", "sip:a@b", headers=[("Subject", "$rU costs $$5")])
    assert render("$hdr(Subject)", req=req) == "$rU costs $$5"


# --- literal text and escapes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("", ""),
        ("plain text, no variables", "plain text, no variables"),
        ("$$", "$"),
        ("$$$$", "$$"),
        ("$$rU", "$rU"),
        ("$$$rU", "$bob"),
        ("price: 5$$", "price: 5$"),
        ("$$(rU)", "$(rU)"),
        ("line1\r\nline2 $rU", "line1\r\nline2 bob"),
        ("$hdr(Subject)[1]", "first subject[1]"),  # indexes exist only inside $(...)
        ("[$rU]", "[bob]"),
        ("$rU[0]", "bob[0]"),
        ("($rU)", "(bob)"),
        ("$(rU))", "bob)"),
    ],
)
def test_literals_and_escapes(source: str, expected: str) -> None:
    assert render(source) == expected


# --- compile: variables and errors ----------------------------------------------------------------


def test_variables_list() -> None:
    template = compile_template(
        "$rU@$rd $(hdr(Via)[*]) $hdr(Subject) $(avp(s)[-1]) $var(x) $rU $(rU) $$ru"
    )
    assert template.variables == ("rU", "rd", "hdr(Via)[*]", "hdr(Subject)", "avp(s)[-1]", "var(x)")
    assert compile_template("no variables $$").variables == ()


def test_template_object() -> None:
    template = compile_template("hi $rU")
    assert isinstance(template, Template)
    assert template.source == "hi $rU"
    assert template == compile_template("hi $rU")
    assert template != compile_template("hi $rd")
    assert hash(template) == hash(compile_template("hi $rU"))
    assert "hi $rU" in repr(template)


@pytest.mark.parametrize(
    ("source", "position", "fragment"),
    [
        ("abc $", 4, "end of template"),
        ("$ rU", 0, "followed by"),
        ("a$-", 1, "followed by"),
        ("$x", 0, "unknown variable $x"),
        ("hi $rUx", 3, "unknown variable $rUx"),
        ("$ru_", 0, "unknown variable $ru_"),
        ("$time(%H)", 0, "unknown variable $time"),
        ("$(xyz)", 0, "unknown variable $xyz"),
        ("$hdr", 4, "'(' after $hdr"),
        ("$hdr Subject", 4, "'(' after $hdr"),
        ("$hdr()", 5, "name"),
        ("$hdr(Sub ject)", 8, "')'"),
        ("$hdr(Subject", 12, "')'"),
        ("$hdr(Sub:ject)", 8, "')'"),
        ("$avp()", 5, "name"),
        ("$avp(a b)", 6, "')'"),
        ("$var", 4, "'(' after $var"),
        ("$(", 2, "variable name"),
        ("$()", 2, "variable name"),
        ("$(rU", 4, "')'"),
        ("$(rU x)", 4, "')'"),
        ("$(rU[0])", 4, "no argument or index"),
        ("$rU(x)", 3, "no argument or index"),
        ("$(Tf(x))", 4, "no argument or index"),
        ("$(hdr(X)[x])", 8, "index"),
        ("$(hdr(X)[])", 8, "index"),
        ("$(hdr(X)[1)", 8, "index"),
        ("$(hdr(X)[1]", 11, "')'"),
        ("$(hdr(X)[1][2])", 11, "')'"),
        ("$(avp(s)[--1])", 8, "index"),
        ("$(var(x)[0])", 8, "no index"),
        ("ok $rU then $zz", 12, "unknown variable $zz"),
    ],
)
def test_syntax_errors(source: str, position: int, fragment: str) -> None:
    with pytest.raises(TemplateError) as info:
        compile_template(source)
    error = info.value
    assert isinstance(error, SettingsError)
    assert error.position == position
    assert error.source == source
    assert fragment in str(error)
    assert f"position {position}" in str(error)


def test_non_string_source() -> None:
    with pytest.raises(SettingsError):
        compile_template(None)  # type: ignore[arg-type]
    with pytest.raises(SettingsError):
        compile_template(b"$rU")  # type: ignore[arg-type]
