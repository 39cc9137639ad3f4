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

URI_PIECES = [
    "sip:", "sips:", "tel:", "SIP:", "+1", "-555-", "alice", "bob", "@", "example.com", ".",
    ":", ":5060", ":99999", ";transport=tcp", ";lr", ";maddr=[::1]", ";phone-context=",
    "?", "&", "=", "%", "%2", "%41", "%7b", "%00", "[", "2001:db8::1", "::", "]", "<", ">",
    '"', "\\", " ", "\t", ",", ";tag=", ";expires=0", "*", "$", "{", "}", "é", "\r", "\n",
    "\x00", "\x7f", "\ud800",
]  # fmt: skip
uri_texts = st.one_of(
    st.text(max_size=120),
    st.lists(st.one_of(st.sampled_from(URI_PIECES), st.text(max_size=4)), max_size=24).map("".join),
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

HEADER_NAMES = [
    "From", "f", "To", "t", "Contact", "m", "Expires", "Allow", "Content-Type", "c",
    "Content-Length", "l", "Call-ID", "i", "CSeq", "Via", "Subject", "P-Asserted-Identity",
    "X-Custom", "", " From", "To ", "Fr:om", "T\u00f6",
]  # fmt: skip
HEADER_VALUES = [
    "<sip:alice@example.com>", "sip:alice@example.com;tag=1", '"A \\"B\\"" <sip:a@b.c>;tag=x',
    "<sip:bob@example.org>;tag=9", "*", "0", "3600", "-1", "99999999999999999999", "MESSAGE",
    "INVITE, MESSAGE", "text/plain", "text/plain; charset=utf-8", "application/json",
    "<sip:a@192.0.2.1>;expires=0;methods=\"INVITE\"", "<tel:+1-555>", "", " ", "5", "1 MESSAGE",
]  # fmt: skip
START_LINES = [
    "MESSAGE sip:alice@example.com SIP/2.0", "REGISTER sip:example.com SIP/2.0",
    "MESSAGE sip:example.com SIP/2.0", "message tel:+1555 sip/2.0", "SIP/2.0 200 OK",
    "MESSAGE  sip:a@b SIP/2.0", "MESSAGE sip:a@b SIP/3.0", "",
]  # fmt: skip


@st.composite
def sip_messages(draw: st.DrawFn) -> bytes:
    """Requests built from plausible and hostile pieces, line endings and lengths."""
    text = st.one_of(st.sampled_from(HEADER_VALUES), st.text(max_size=30), uri_texts)
    start = draw(st.one_of(st.sampled_from(START_LINES), st.text(max_size=40)))
    headers = draw(
        st.lists(
            st.tuples(st.one_of(st.sampled_from(HEADER_NAMES), st.text(max_size=8)), text),
            max_size=12,
        )
    )
    eol = draw(st.sampled_from(["\r\n", "\r\n", "\n", "\r"]))
    sep = draw(st.sampled_from([": ", ":", " : ", ":\t"]))
    body = draw(st.binary(max_size=200))
    length = draw(st.sampled_from(["exact", "none", "short", "long", "junk"]))
    lines = [start, *(f"{n}{sep}{v}" for n, v in headers)]
    if length != "none":
        size = {"exact": len(body), "short": max(0, len(body) - 3), "long": len(body) + 3}
        lines.append(f"Content-Length: {size.get(length, 'x1')}")
    head = eol.join(lines) + eol + eol
    return head.encode("utf-8", "surrogatepass") + body


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
