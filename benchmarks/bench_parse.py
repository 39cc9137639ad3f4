"""Parse speed of libmsilo's SIP URI and request parsers against the ``sipmessage`` package.

Run: ``python benchmarks/bench_parse.py [--repeat N] [--number N]``

Both libraries run in the same process, interleaved (one batch of each per round), and the best
round counts, which keeps the comparison fair on a busy machine. Before timing, the script checks
that both libraries extract the same values, so they are known to do the same job.

What is compared:

* ``uri``: ``libmsilo.uri.parse_uri(text)`` vs ``sipmessage.URI.parse(text)`` on a typical Contact
  URI with user, host, port and two parameters. Both return a structured value with the
  parameters split out. (sipmessage also percent-decodes the user part; the URI has no escapes, so
  that is no work for either side. sipmessage has no ``?headers`` support, hence none in the URI.)
* ``message``: the work an msilo store needs from a ~500-byte MESSAGE: parse the request, then
  take the From and To URIs, the Content-Type value and the body. libmsilo:
  ``SipRequest.parse`` + ``from_addr.uri`` + ``to_addr.uri`` + ``content_type`` + ``body``;
  sipmessage: ``Message.parse`` + ``from_address.uri`` + ``to_address.uri`` +
  ``headers.get("Content-Type")`` + ``body``. The raw Content-Type string is taken from sipmessage
  because libmsilo's ``content_type`` is the raw value too (sipmessage's ``content_type``
  property would also build a MediaType, i.e. more work, so this choice favours sipmessage).
* ``message+ruri``: the same, plus the parsed Request-URI. sipmessage always parses the
  Request-URI inside ``Message.parse``; libmsilo parses it only when asked (``ruri_uri``), so the
  first line shows what lazy parsing saves and this one compares identical results.

Work libmsilo does that sipmessage does not (so the comparison leans towards sipmessage):
Content-Length is honoured and checked, header names are checked to be tokens, CR/LF/NUL and
size limits are enforced, folded lines are unfolded, and the Request-URI shape is checked.
"""

from __future__ import annotations

import argparse
import platform
import sys
import timeit
from collections.abc import Callable

import sipmessage

from libmsilo.message import SipRequest
from libmsilo.uri import parse_uri

URI_TEXT = "sip:alice@pc33.atlanta.example.com:5061;transport=tls;ob"

_BODY = b"Hi Bob, are we still on for the design review at 3pm? I moved it to room 4."
MESSAGE = (
    b"MESSAGE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS pc33.atlanta.example.com:5061;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice Smith" <sip:alice@atlanta.example.com>;tag=49583\r\n'
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 MESSAGE\r\n"
    b"User-Agent: ExamplePhone/2.1\r\n"
    b"Date: Tue, 12 Nov 2024 14:25:02 GMT\r\n"
    b"Content-Type: text/plain;charset=UTF-8\r\n"
    b"Content-Length: " + str(len(_BODY)).encode() + b"\r\n"
    b"\r\n" + _BODY
)


def msilo_uri() -> object:
    return parse_uri(URI_TEXT)


def sipmessage_uri() -> object:
    return sipmessage.URI.parse(URI_TEXT)


def msilo_message() -> tuple[object, ...]:
    req = SipRequest.parse(MESSAGE)
    return req.from_addr.uri, req.to_addr.uri, req.content_type, req.body


def sipmessage_message() -> tuple[object, ...]:
    msg = sipmessage.Message.parse(MESSAGE)
    return msg.from_address.uri, msg.to_address.uri, msg.headers.get("Content-Type"), msg.body


def msilo_message_ruri() -> tuple[object, ...]:
    req = SipRequest.parse(MESSAGE)
    return req.ruri_uri, req.from_addr.uri, req.to_addr.uri, req.content_type, req.body


def sipmessage_message_ruri() -> tuple[object, ...]:
    msg = sipmessage.Message.parse(MESSAGE)
    assert isinstance(msg, sipmessage.Request)
    return (
        msg.uri,
        msg.from_address.uri,
        msg.to_address.uri,
        msg.headers.get("Content-Type"),
        msg.body,
    )


def _uri_parts(uri: object) -> tuple[object, ...]:
    """The comparable parts of a libmsilo or sipmessage URI."""
    params = getattr(uri, "params", None)
    if params is None:
        params = tuple(uri.parameters.items())  # type: ignore[attr-defined]
    return (
        uri.scheme,  # type: ignore[attr-defined]
        uri.user,  # type: ignore[attr-defined]
        uri.host,  # type: ignore[attr-defined]
        uri.port,  # type: ignore[attr-defined]
        tuple(params),
    )


def check_equivalent() -> None:
    """Both libraries must extract the same values before their speed means anything."""
    assert _uri_parts(msilo_uri()) == _uri_parts(sipmessage_uri())
    ours, theirs = msilo_message_ruri(), sipmessage_message_ruri()
    for mine, other in zip(ours[:3], theirs[:3], strict=True):
        assert _uri_parts(mine) == _uri_parts(other), (mine, other)
    assert ours[3:] == theirs[3:], (ours[3:], theirs[3:])


CASES: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
    ("uri", msilo_uri, sipmessage_uri),
    (f"message ({len(MESSAGE)} B)", msilo_message, sipmessage_message),
    (f"message+ruri ({len(MESSAGE)} B)", msilo_message_ruri, sipmessage_message_ruri),
]


def measure(repeat: int, number: int) -> list[tuple[str, float, float]]:
    """Best time per call (seconds) of each side of each case, interleaved round by round."""
    best = {name: [float("inf"), float("inf")] for name, _, _ in CASES}
    for _ in range(repeat):
        for name, ours, theirs in CASES:
            for side, func in enumerate((ours, theirs)):
                elapsed = timeit.timeit(func, number=number) / number
                best[name][side] = min(best[name][side], elapsed)
    return [(name, best[name][0], best[name][1]) for name, _, _ in CASES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=60, help="rounds; the best one counts")
    parser.add_argument("--number", type=int, default=200, help="calls per batch")
    args = parser.parse_args(argv)
    check_equivalent()
    print(
        f"Python {platform.python_version()} on {platform.machine()}, "
        f"sipmessage {sipmessage.__version__}; best of {args.repeat} x {args.number} calls"
    )
    print(f"{'case':<26}{'libmsilo':>12}{'sipmessage':>14}{'speed-up':>10}")
    for name, ours, theirs in measure(args.repeat, args.number):
        print(f"{name:<26}{ours * 1e6:>10.2f}us{theirs * 1e6:>12.2f}us{theirs / ours:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
