"""Property-based fuzzing (hypothesis) of the parsers and templates, and fuzz regressions.

The targets live in ``fuzz/targets.py``, shared with the atheris harness ``fuzz/fuzz_msilo.py``:
only libmsilo errors may escape ``SipRequest.parse``, ``parse_uri`` / ``parse_name_addr`` /
``parse_contact_list``, template compilation, and the core decisions on a parsed request;
rendering a compiled template never raises; printed URIs parse back to the same value; a stored
and dumped request keeps its body on the wire.

CI bounds: ``MSILO_FUZZ_EXAMPLES`` examples per test (default 300), no per-example deadline;
the file runs in well under 30 s. Every crash found (here or by atheris) becomes an entry of
``REGRESSIONS``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libmsilo.templating import PLAIN_VARIABLES

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"


def _load_targets() -> ModuleType:
    spec = importlib.util.spec_from_file_location("msilo_fuzz_targets", FUZZ / "targets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


targets = _load_targets()

FUZZ_SETTINGS = settings(
    max_examples=int(os.environ.get("MSILO_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# ---- strategies -------------------------------------------------------------------------------

HOSTILE_CHARS = '<>"\\;:,@?&=%*$[]{}() \t\r\n\x00\x7f\u00e9\u2603\ud800'


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    """A value from ``base`` with up to three characters inserted, deleted or replaced."""
    text = draw(base)
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(text)))
        char = draw(st.one_of(st.sampled_from(HOSTILE_CHARS), st.characters()))
        edit = draw(st.sampled_from(["insert", "delete", "replace"]))
        if edit == "insert":
            text = text[:pos] + char + text[pos:]
        elif edit == "delete":
            text = text[:pos] + text[pos + 1 :]
        else:
            text = text[:pos] + char + text[pos + 1 :]
    return text


def _join(*parts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(*parts).map("".join)


USERS = ["alice", "bob", "%7Bx%7D", "a;b", "$where", "*", "+1-555", "u%00", "a:pw"]
HOSTS = ["example.com", "EXAMPLE.com.", "192.0.2.1", "[2001:db8::1]", "a-b.c", "x"]
sip_uris = _join(
    st.sampled_from(["sip:", "sips:", "SIP:"]),
    st.one_of(st.just(""), st.sampled_from(USERS).map(lambda u: u + "@")),
    st.sampled_from(HOSTS),
    st.sampled_from(["", ":5060", ":65535", ":0"]),
    st.lists(
        st.sampled_from([";transport=tcp", ";lr", ";maddr=[::1]", ";x=%41", ";y"]), max_size=3
    ).map("".join),
    st.sampled_from(["", "?subject=hi", "?a=b&c=d"]),
)
tel_uris = _join(
    st.just("tel:"),
    st.sampled_from(["+1-555-0100", "555", "*21#", "+", "12ab"]),
    st.sampled_from(["", ";phone-context=example.com", ";ext=12", ";isub=x"]),
)
name_addrs = _join(
    st.sampled_from(["", "Bob ", '"Bob \\"B\\"" ', '"J\u00f6rg" ', "J\u00f6rg"]),
    st.one_of(sip_uris, tel_uris).map(lambda u: f"<{u}>"),
    st.sampled_from(["", ";tag=1", ";expires=0", ';methods="MESSAGE,INVITE"', ";q=0.5"]),
)
uri_texts = st.one_of(
    mutated(st.one_of(sip_uris, tel_uris, name_addrs)),
    st.lists(name_addrs, min_size=1, max_size=3).map(", ".join),
    st.text(max_size=80),
)

TEMPLATE_PIECES = [
    "$", "$$", "$(", "(", ")", "[", "]", "[*]", "[-1]", "[0]", "[99999999999]", "hdr(",
    "avp(", "var(", "Subject", "Contact", "x", "snd_time", "-", "*", " ", "\r\n", "{", "}",
    *(f"${name}" for name in PLAIN_VARIABLES),
    *(f"$({name})" for name in PLAIN_VARIABLES),
]  # fmt: skip
template_texts = st.one_of(
    st.text(max_size=60),
    st.lists(st.one_of(st.sampled_from(TEMPLATE_PIECES), st.text(max_size=3)), max_size=16).map(
        "".join
    ),
)

VALUES = {
    "From": name_addrs,
    "To": name_addrs,
    "Contact": st.one_of(st.lists(name_addrs, min_size=1, max_size=3).map(", ".join), st.just("*")),
    "Expires": st.sampled_from(["0", "3600", "-1", "99999999999999999999", " 12abc", ""]),
    "Allow": st.sampled_from(["INVITE, MESSAGE", "INVITE", "message", ""]),
    "Content-Type": st.sampled_from(["text/plain", "text/plain; charset=utf-8", "a/b", "x"]),
    "Subject": st.text(max_size=20),
    "P-Asserted-Identity": name_addrs,
    "CSeq": st.sampled_from(["1 MESSAGE", "x", ""]),
}
COMPACT = {"From": "f", "To": "t", "Contact": "m", "Content-Type": "c"}


@st.composite
def header_lines(draw: st.DrawFn) -> list[str]:
    names = draw(st.lists(st.sampled_from(sorted(VALUES)), max_size=8))
    lines = []
    for name in ["From", "To", *names]:
        shown = COMPACT.get(name, name) if draw(st.booleans()) else name
        lines.append(f"{shown}: {draw(VALUES[name])}")
    return lines


@st.composite
def sip_messages(draw: st.DrawFn) -> bytes:
    """Mostly well-formed requests (so the deep paths run) with a few hostile edits, and now
    and then plain garbage."""
    start = draw(
        _join(
            st.sampled_from(["MESSAGE ", "REGISTER ", "message ", "INVITE "]),
            st.one_of(sip_uris, tel_uris),
            st.sampled_from([" SIP/2.0", " sip/2.0", " SIP/3.0"]),
        )
    )
    lines = [start, *draw(header_lines())]
    if draw(st.integers(0, 4)) == 0:  # one line rewritten with hostile edits
        index = draw(st.integers(0, len(lines) - 1))
        lines[index] = draw(mutated(st.just(lines[index])))
    body = draw(st.binary(max_size=200))
    length = draw(st.sampled_from(["exact", "exact", "none", "short", "long", "junk"]))
    if length != "none":
        size = {"exact": len(body), "short": max(0, len(body) - 3), "long": len(body) + 3}
        lines.append(f"Content-Length: {size.get(length, 'x1')}")
    eol = draw(st.sampled_from(["\r\n", "\r\n", "\n"]))
    raw = (eol.join(lines) + eol + eol).encode("utf-8", "surrogatepass") + body
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300)) + raw[draw(st.integers(0, len(raw))) :]
    return raw


# ---- properties -------------------------------------------------------------------------------


@FUZZ_SETTINGS
@given(st.binary(max_size=2000))
def test_parse_arbitrary_bytes(data: bytes) -> None:
    targets.sip_request(data)


@FUZZ_SETTINGS
@given(sip_messages())
def test_parse_structured_requests(data: bytes) -> None:
    targets.sip_request(data)


@FUZZ_SETTINGS
@given(sip_messages())
def test_store_and_dump_keep_the_body(data: bytes) -> None:
    targets.store_and_dump(data)


@FUZZ_SETTINGS
@given(uri_texts)
def test_uri_parsers(text: str) -> None:
    targets.uri_text(text)


@FUZZ_SETTINGS
@given(template_texts, sip_messages())
def test_templates(source: str, raw: bytes) -> None:
    targets.template_source(source, raw)


def test_the_strategies_reach_the_success_paths() -> None:
    """Guards the strategies: some generated inputs must parse, or the fuzzing is hollow."""
    from libmsilo import MsiloError, SipRequest
    from libmsilo.templating import compile_template
    from libmsilo.uri import parse_name_addr

    parsed = {"sip": 0, "uri": 0, "template": 0}

    @settings(max_examples=200, deadline=None, database=None)
    @given(sip_messages(), uri_texts, template_texts)
    def count(raw: bytes, uri: str, source: str) -> None:
        for key, call in (
            ("sip", lambda: SipRequest.parse(raw).to_addr),
            ("uri", lambda: parse_name_addr(uri)),
            ("template", lambda: compile_template(source)),
        ):
            try:
                call()
                parsed[key] += 1
            except MsiloError:
                pass

    count()
    assert all(parsed.values()), parsed


# ---- regressions ------------------------------------------------------------------------------

Target = Callable[[bytes], None]

# (target name, input) of every crash fuzzing found, kept so it cannot come back.
REGRESSIONS: list[tuple[str, bytes]] = []


def _corpus() -> list[tuple[str, bytes]]:
    """The seed corpus under fuzz/corpus/<target>/ (the ``sip`` seeds also feed ``store``)."""
    found = []
    for path in sorted(FUZZ.glob("corpus/*/*")):
        kind = path.parent.name
        found.append((kind, path.read_bytes()))
        if kind == "sip":
            found.append(("store", path.read_bytes()))
    return found


TARGETS: dict[str, Target] = {
    "sip": targets.sip_request,
    "store": targets.store_and_dump,
    "uri": targets.uri,
    "template": targets.template,
}


@pytest.mark.parametrize(("target", "data"), REGRESSIONS + _corpus())
def test_fuzz_regressions_and_corpus(target: str, data: bytes) -> None:
    TARGETS[target](data)


def test_the_corpus_is_there() -> None:
    assert {kind for kind, _ in _corpus()} == set(TARGETS)
