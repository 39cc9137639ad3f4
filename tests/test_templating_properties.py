"""Property-based tests of libmsilo.templating (hypothesis)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from libmsilo.errors import InvalidRequest, SettingsError
from libmsilo.message import SipRequest
from libmsilo.templating import NULL, PLAIN_VARIABLES, TemplateError, compile_template

UTC = ZoneInfo("UTC")
SIMPLE = SipRequest(
    "MESSAGE",
    "sip:bob@example.com",
    headers=[("From", "<sip:alice@example.org>;tag=1"), ("To", "<sip:bob@example.com>")],
)

# Text biased towards the template syntax, so the parser's branches all get exercised.
SYNTAX_ALPHABET = st.sampled_from([*"$$$()[]*-0129 hdravpvr:UTfsuxX_.", "\r\n", "é", "\x00"])
syntax_text = st.lists(SYNTAX_ALPHABET, max_size=40).map("".join)
any_text = st.one_of(st.text(max_size=60), syntax_text)

VARIABLE_PIECES = [f"$({name})" for name in PLAIN_VARIABLES] + [
    "$(hdr(Subject))",
    "$(hdr(X-Multi)[1])",
    "$(hdr(X-Multi)[-1])",
    "$(hdr(Contact)[*])",
    "$(avp(s)[0])",
    "$(avp(s)[*])",
    "$(avp(s))",
    "$(var(v))",
]
ALL_VARIABLES = "|".join(VARIABLE_PIECES)
literal_text = st.text(max_size=20).filter(lambda s: "$" not in s)


@given(any_text)
def test_compile_raises_only_settings_error(source: str) -> None:
    try:
        template = compile_template(source)
    except TemplateError as exc:
        assert 0 <= exc.position <= len(source)
        assert isinstance(exc, SettingsError)
        return
    assert template.source == source


@given(st.text().filter(lambda s: "$" not in s))
def test_literal_text_renders_unchanged(text: str) -> None:
    template = compile_template(text)
    assert template.variables == ()
    assert template.render(SIMPLE, now=0, tz=UTC) == text


@given(st.text())
def test_escaped_dollars_render_back(text: str) -> None:
    template = compile_template(text.replace("$", "$$"))
    assert template.variables == ()
    assert template.render(SIMPLE, now=0, tz=UTC) == text


@given(st.lists(st.one_of(literal_text, st.sampled_from(VARIABLE_PIECES)), max_size=12))
def test_rendering_is_piecewise(pieces: list[str]) -> None:
    # Braced variables and $-free literals cannot run into each other, so the rendering of the
    # whole is the concatenation of the renderings of the pieces.
    whole = compile_template("".join(pieces)).render(SIMPLE, now=1e9, tz=UTC)
    parts = [compile_template(p).render(SIMPLE, now=1e9, tz=UTC) for p in pieces]
    assert whole == "".join(parts)


header_names = st.sampled_from(
    [
        "From",
        "f",
        "To",
        "t",
        "Call-ID",
        "i",
        "CSeq",
        "Contact",
        "m",
        "Content-Type",
        "c",
        "P-Asserted-Identity",
        "Subject",
        "X-Multi",
    ]
)
# Printable text without white space: what the constructor accepts inside a Request-URI.
uri_chars = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp")), max_size=12
)
ruri_like = st.builds(
    lambda scheme, user, host, tail: f"{scheme}:{user}@{host}{tail}",
    st.sampled_from(["sip", "sips", "tel", "http", "SIP"]),
    st.one_of(uri_chars, st.sampled_from(["alice", "", "%41b", "+1555", "a:pw"])),
    st.one_of(uri_chars, st.sampled_from(["example.com", "[::1]", "192.0.2.1", ""])),
    st.sampled_from(["", ":5060", ":99999", ";lr", ";transport=tcp", "?h=v", ">", ",x"]),
)
line_text = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs", "Co")),
    max_size=40,
)
header_value = st.one_of(
    line_text,
    ruri_like,
    ruri_like.map(lambda u: f"<{u}>;tag=x"),
    ruri_like.map(lambda u: f'"Name" <{u}>, <{u}>'),
    st.sampled_from(["*", "", "17 MESSAGE", "abc", "text/plain", "<>", '"', "<sip:a@b", " , "]),
)
avp_values = st.one_of(
    st.text(max_size=10),
    st.integers(),
    st.lists(st.one_of(st.text(max_size=5), st.integers()), max_size=3),
)


@st.composite
def requests(draw: st.DrawFn) -> SipRequest:
    try:
        return SipRequest(
            draw(st.sampled_from(["MESSAGE", "REGISTER", "INVITE", "X-Custom"])),
            draw(ruri_like),
            headers=draw(st.lists(st.tuples(header_names, header_value), max_size=8)),
            body=draw(st.binary(max_size=20)),
            avps=draw(st.dictionaries(st.sampled_from(["s", "t"]), avp_values, max_size=2)),
            vars=draw(st.dictionaries(st.just("v"), st.one_of(st.text(max_size=5), st.integers()))),
            source=draw(st.none() | st.tuples(st.text(max_size=15), st.integers(0, 65535))),
            dst_uri=draw(st.none() | line_text),
            original_ruri=draw(st.none() | ruri_like),
        )
    except InvalidRequest:
        # The constructor may refuse some inputs; rendering is about the requests that exist.
        assume(False)
        raise


@settings(max_examples=300)
@given(requests(), st.floats(min_value=0, max_value=2**40))
def test_render_never_raises(req: SipRequest, now: float) -> None:
    text = compile_template(ALL_VARIABLES).render(req, now=now, tz=UTC)
    assert isinstance(text, str)
    assert text.count("|") >= ALL_VARIABLES.count("|")


@given(requests())
def test_header_values_come_through(req: SipRequest) -> None:
    subjects = req.header_all("Subject")
    multi = req.header_all("X-Multi")
    expected = {
        "$rm": req.method,
        "$(hdr(Subject)[*])": ", ".join(subjects) if subjects else NULL,
        "$(hdr(X-Multi)[-1])": multi[-1] if multi else NULL,
        "$hdr(s)": subjects[0] if subjects else NULL,
    }
    for source, value in expected.items():
        assert compile_template(source).render(req, now=0, tz=UTC) == value
