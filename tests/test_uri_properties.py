"""Property tests of libmsilo.uri: generated valid values round-trip, and no input makes the
parsers raise anything but InvalidURI."""

from __future__ import annotations

import string
from collections.abc import Callable
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from libmsilo import uri as uri_module
from libmsilo.errors import InvalidURI
from libmsilo.uri import URI, NameAddr, parse_contact_list, parse_name_addr, parse_uri

ALNUM = string.ascii_letters + string.digits
UNRESERVED = ALNUM + "-_.!~*'()"
USER_CHARS = UNRESERVED + "&=+$,;?/"
PASSWORD_CHARS = UNRESERVED + "&=+$,"
PARAM_CHARS = UNRESERVED + "[]/:&+$"
HNV_CHARS = UNRESERVED + "[]/?:+$"
TOKEN_CHARS = ALNUM + "-.!%*_+`'~"
CONTROLS = "".join(chr(c) for c in range(32) if c != 9) + "\x7f"

escapes = st.builds(
    lambda byte, upper: f"%{byte:02X}" if upper else f"%{byte:02x}",
    st.integers(0, 255),
    st.booleans(),
)


def escaped_text(alphabet: str, min_size: int, max_size: int = 10) -> st.SearchStrategy[str]:
    """Text over ``alphabet`` with %XX escapes mixed in."""
    return st.lists(
        st.one_of(st.sampled_from(alphabet), escapes), min_size=min_size, max_size=max_size
    ).map("".join)


labels = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,6}[A-Za-z0-9])?", fullmatch=True)
toplabels = st.from_regex(r"[A-Za-z](?:[A-Za-z0-9-]{0,6}[A-Za-z0-9])?", fullmatch=True)
hostnames = st.builds(
    lambda domain, top, dot: ".".join([*domain, top]) + dot,
    st.lists(labels, max_size=3),
    toplabels,
    st.sampled_from(["", "", "."]),
)
ipv6_refs = st.builds(
    lambda addr, exploded: f"[{addr.exploded if exploded else addr.compressed}]",
    st.ip_addresses(v=6),
    st.booleans(),
)
hosts = st.one_of(hostnames, st.ip_addresses(v=4).map(str), ipv6_refs)
uri_params = st.lists(
    st.tuples(escaped_text(PARAM_CHARS, 1), st.none() | escaped_text(PARAM_CHARS, 1)),
    max_size=4,
).map(tuple)
uri_headers = st.lists(
    st.tuples(escaped_text(HNV_CHARS, 1), escaped_text(HNV_CHARS, 0)), max_size=3
).map(tuple)


@st.composite
def sip_uris(draw: st.DrawFn) -> URI:
    user = draw(st.none() | escaped_text(USER_CHARS, 1))
    password = draw(st.none() | escaped_text(PASSWORD_CHARS, 0)) if user is not None else None
    return URI(
        draw(st.sampled_from(["sip", "sips"])),
        user,
        password,
        draw(hosts),
        draw(st.none() | st.integers(1, 65535)),
        draw(uri_params),
        draw(uri_headers),
    )


tel_pnames = st.text(ALNUM + "-", min_size=1, max_size=8)
global_numbers = st.builds(
    lambda before, digit, after: "+" + before + digit + after,
    st.text("0123456789-.()", max_size=6),
    st.sampled_from(string.digits),
    st.text("0123456789-.()", max_size=6),
)
local_numbers = st.builds(
    lambda before, digit, after: before + digit + after,
    st.text(string.hexdigits + "*#-.()", max_size=6),
    st.sampled_from(string.hexdigits + "*#"),
    st.text(string.hexdigits + "*#-.()", max_size=6),
)
tel_uris = st.builds(
    lambda number, params: URI("tel", number, None, "", None, params),
    global_numbers | local_numbers,
    st.lists(st.tuples(tel_pnames, st.none() | escaped_text(PARAM_CHARS, 1)), max_size=3).map(
        tuple
    ),
)


def mixed_case_scheme(uri: URI, pattern: list[bool]) -> str:
    text = str(uri)
    scheme = "".join(c.upper() if pattern[i] else c for i, c in enumerate(uri.scheme))
    return scheme + text[len(uri.scheme) :]


@settings(max_examples=150)
@given(sip_uris() | tel_uris, st.lists(st.booleans(), min_size=4, max_size=4))
def test_generated_uris_round_trip(uri: URI, pattern: list[bool]) -> None:
    text = mixed_case_scheme(uri, pattern)
    parsed = parse_uri(text)
    assert parsed == uri
    assert parse_uri(str(parsed)) == parsed


@settings(max_examples=100)
@given(st.text(UNRESERVED + "&=+$,;?/", min_size=1, max_size=12), st.data())
def test_user_key_ignores_optional_escaping(user: str, data: st.DataObject) -> None:
    escaped = "".join(
        f"%{ord(c):02{'X' if data.draw(st.booleans()) else 'x'}}" if data.draw(st.booleans()) else c
        for c in user
    )
    uri = parse_uri(f"sip:{escaped}@Example.COM")
    assert uri.user == escaped
    assert uri.user_key == user
    assert uri.host_key == "example.com"


@settings(max_examples=60)
@given(sip_uris())
def test_user_key_is_a_fixed_point(uri: URI) -> None:
    if uri.user is None:
        return
    key = uri.user_key
    assert parse_uri(f"sip:{key}@h.example").user_key == key


# ---- name-addr and contact lists ---------------------------------------------------------------

lws = st.sampled_from(["", "", " ", "\t", "  \t "])
display_words = st.lists(st.text(TOKEN_CHARS, min_size=1, max_size=8), min_size=1, max_size=3)
# Free text for quoted strings, biased towards the characters that need escaping or look like
# delimiters.
free_text = st.text(
    st.sampled_from('\\"<>,;:@= \t')
    | st.characters(exclude_categories=["Cs"], exclude_characters=CONTROLS),
    max_size=12,
)
quoted_values = free_text.map(lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"')
header_params = st.lists(
    st.tuples(
        st.text(TOKEN_CHARS, min_size=1, max_size=8),
        st.one_of(
            st.none(), st.text(TOKEN_CHARS, min_size=1, max_size=8), quoted_values, ipv6_refs
        ),
    ),
    max_size=3,
).map(tuple)
any_uri = sip_uris() | tel_uris


@st.composite
def name_addr_texts(draw: st.DrawFn) -> tuple[str, NameAddr]:
    """A name-addr written with random LWS, and the value it stands for."""
    uri = draw(any_uri)
    kind = draw(st.sampled_from(["none", "token", "quoted"]))
    display: str | None
    if kind == "none":
        display, head = None, ""
    elif kind == "token":
        words = draw(display_words)
        display = " ".join(words)
        head = "".join(w + draw(lws.filter(bool)) for w in words)
    else:
        display = draw(free_text)
        head = '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"' + draw(lws)
    params = draw(header_params)
    text = draw(lws) + head + "<" + draw(lws) + str(uri) + draw(lws) + ">"
    for name, value in params:
        text += draw(lws) + ";" + draw(lws) + name
        if value is not None:
            text += draw(lws) + "=" + draw(lws) + value
    return text + draw(lws), NameAddr(uri, display, params)


@settings(max_examples=120)
@given(name_addr_texts())
def test_generated_name_addrs_parse_and_round_trip(case: tuple[str, NameAddr]) -> None:
    text, expected = case
    parsed = parse_name_addr(text)
    assert parsed == expected
    assert parse_name_addr(str(parsed)) == parsed


@settings(max_examples=40)
@given(st.lists(name_addr_texts(), min_size=1, max_size=4), lws, lws)
def test_generated_contact_lists(
    cases: list[tuple[str, NameAddr]], before: str, after: str
) -> None:
    text = (before + "," + after).join(t for t, _ in cases)
    assert parse_contact_list(text) == tuple(value for _, value in cases)


@settings(max_examples=60)
@given(name_addr_texts(), st.sampled_from(list(CONTROLS)), st.data())
def test_a_control_character_anywhere_is_refused(
    case: tuple[str, NameAddr], control: str, data: st.DataObject
) -> None:
    text, _ = case
    where = data.draw(st.integers(0, len(text)))
    bad = text[:where] + control + text[where:]
    for parse in (parse_name_addr, parse_contact_list):
        try:
            parse(bad)
        except InvalidURI:
            continue
        raise AssertionError(f"accepted {bad!r}")


# ---- robustness: nothing but InvalidURI escapes ------------------------------------------------

INTERESTING = [*'<>;,="\\@:[]%?&* \t\r\n\x00é+.-', "sip:", "tel:", "%4", "::", "\U0001f600"]


@st.composite
def mutated(draw: st.DrawFn, texts: st.SearchStrategy[str]) -> str:
    """A valid text with a few random insertions, deletions and replacements."""
    text = draw(texts)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.sampled_from(INTERESTING) | st.characters())
        if op == "insert":
            text = text[:where] + piece + text[where:]
        elif op == "delete":
            text = text[:where] + text[where + 1 :]
        else:
            text = text[:where] + piece + text[where + 1 :]
    return text


def check_uri(text: str) -> None:
    try:
        uri = parse_uri(text)
    except InvalidURI:
        return
    assert parse_uri(str(uri)) == uri  # whatever is accepted re-serialises to itself


def check_name_addr(text: str) -> None:
    try:
        value = parse_name_addr(text)
    except InvalidURI:
        return
    assert parse_name_addr(str(value)) == value


def check_contact_list(text: str) -> None:
    try:
        contacts = parse_contact_list(text)
    except InvalidURI:
        return
    if contacts is not None:
        assert parse_contact_list(", ".join(map(str, contacts))) == contacts


@settings(max_examples=150)
@given(st.text(max_size=80) | mutated(any_uri.map(str)))
def test_parse_uri_raises_only_invalid_uri(text: str) -> None:
    check_uri(text)


@settings(max_examples=120)
@given(st.text(max_size=80) | mutated(name_addr_texts().map(lambda c: c[0])))
def test_parse_name_addr_raises_only_invalid_uri(text: str) -> None:
    check_name_addr(text)


@settings(max_examples=60)
@given(
    st.text(max_size=80)
    | mutated(
        st.lists(name_addr_texts(), min_size=1, max_size=3).map(
            lambda cs: ",".join(t for t, _ in cs)
        )
    )
)
def test_parse_contact_list_raises_only_invalid_uri(text: str) -> None:
    check_contact_list(text)


def _answer(parse: Callable[[str], object], text: str) -> object:
    """What ``parse`` gives for ``text``: its value, or its error's message and position."""
    try:
        return parse(text)
    except InvalidURI as exc:
        return ("error", str(exc), exc.position)


@settings(max_examples=150)
@given(
    st.sampled_from([parse_uri, parse_name_addr, parse_contact_list]),
    st.text(max_size=80)
    | mutated(name_addr_texts().map(lambda c: c[0]))
    | name_addr_texts().map(lambda c: c[0]),
)
def test_the_cache_of_recent_uris_changes_no_answer(
    parse: Callable[[str], object], text: str
) -> None:
    """A text gives the same value or the same error (message, position in the whole text)
    with its URI unknown to the cache, known to it, and with the cache off."""
    with mock.patch.object(uri_module, "_CACHED_LENGTH", -1):
        uncached = _answer(parse, text)
    uri_module._recent_uri.cache_clear()
    uri_module._recent_name_addr.cache_clear()
    assert _answer(parse, text) == uncached  # the URI new to the cache
    assert _answer(parse, text) == uncached  # and known to it
