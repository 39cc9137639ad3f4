"""Builders of the SIP requests a policy test feeds to a ``Silo``.

Every builder returns a :class:`~libmsilo.SipRequest`. Values that a real user agent makes up
(tags, Call-IDs, branches, contact addresses) are derived from the arguments, so the same call
always builds the same request::

    sip.message("sip:bob@example.org", "sip:alice@example.com", "hi")
    sip.register("sip:alice@example.com", expires=600)
    sip.parse('''
        MESSAGE sip:alice@example.com SIP/2.0
        From: <sip:bob@example.org>;tag=1
        To: <sip:alice@example.com>

        hi
    ''')
"""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Iterable, Mapping
from typing import Any

from ..core.owner import parse_uri_argument
from ..message import AvpValue, SipRequest

__all__ = ["deregister", "message", "parse", "register"]

Headers = Iterable[tuple[str, str]] | Mapping[str, str]


def _digest(*parts: object) -> str:
    return hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()[:10]


def _name_addr(value: str) -> str:
    """``value`` as a header value: a bare URI goes in angle brackets."""
    value = value.strip()
    return value if "<" in value else f"<{value}>"


def _uri(value: str) -> str:
    return str(parse_uri_argument(value))


def _header_list(headers: Headers | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(name), str(value)) for name, value in items]


def _host_number(text: str) -> int:
    """A stable host number 1..254 for a TEST-NET-1 (192.0.2.0/24) address."""
    return int(_digest(text), 16) % 254 + 1


def message(
    frm: str,
    to: str,
    body: str | bytes = b"",
    ruri: str | None = None,
    *,
    ctype: str | None = "text/plain",
    headers: Headers | None = None,
    avps: Mapping[str, AvpValue] | None = None,
    **extras: Any,
) -> SipRequest:
    """A MESSAGE from ``frm`` to ``to`` (URIs or name-addrs); the Request-URI is ``to``'s URI
    unless ``ruri`` is given. ``ctype=None`` leaves out Content-Type; ``headers`` are added at
    the end; ``avps`` and ``extras`` (``source``, ``vars``, ...) go to :class:`SipRequest`."""
    data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    key = _digest(frm, to, data)
    from_value = _name_addr(frm)
    if ";tag=" not in from_value.rpartition(">")[2]:
        from_value += f";tag={key[:8]}"
    host = f"192.0.2.{_host_number(frm)}"
    fields = [
        ("Via", f"SIP/2.0/UDP {host}:5060;branch=z9hG4bK{key}"),
        ("Max-Forwards", "70"),
        ("From", from_value),
        ("To", _name_addr(to)),
        ("Call-ID", f"{key}@{host}"),
        ("CSeq", "1 MESSAGE"),
    ]
    if ctype is not None:
        fields.append(("Content-Type", ctype))
    fields += _header_list(headers)
    fields.append(("Content-Length", str(len(data))))
    target = ruri if ruri is not None else _uri(to)
    return SipRequest("MESSAGE", target, fields, data, avps=avps, **extras)


def default_contact(address: str) -> str:
    """The contact a simulated phone of ``address`` registers: ``sip:user@192.0.2.N:5060``."""
    user = parse_uri_argument(address).user or "phone"
    return f"sip:{user}@192.0.2.{_host_number(address)}:5060"


def register(
    address: str,
    contact: str | None = None,
    *,
    expires: int | None = 3600,
    allow: Iterable[str] | None = None,
    headers: Headers | None = None,
) -> SipRequest:
    """A REGISTER binding ``contact`` (default :func:`default_contact`) to the AOR ``address``.

    ``expires=None`` leaves out the Expires header; ``allow`` adds an Allow header (leave
    ``MESSAGE`` out to play a UA that cannot take messages); ``contact="*"`` removes every
    binding."""
    uri = parse_uri_argument(address)
    target = contact if contact is not None else default_contact(address)
    key = _digest(address, target, expires)
    host = f"192.0.2.{_host_number(address)}"
    fields = [
        ("Via", f"SIP/2.0/UDP {host}:5060;branch=z9hG4bK{key}"),
        ("Max-Forwards", "70"),
        ("From", f"<{uri}>;tag={key[:8]}"),
        ("To", f"<{uri}>"),
        ("Call-ID", f"{key}@{host}"),
        ("CSeq", "1 REGISTER"),
        ("Contact", target if target.strip() == "*" else _name_addr(target)),
    ]
    if expires is not None:
        fields.append(("Expires", str(int(expires))))
    if allow is not None:
        fields.append(("Allow", ", ".join(allow)))
    fields += _header_list(headers)
    fields.append(("Content-Length", "0"))
    return SipRequest("REGISTER", f"{uri.scheme}:{uri.host}", fields)


def deregister(address: str, contact: str | None = None) -> SipRequest:
    """A REGISTER removing ``contact`` (``Expires: 0``), or every binding (``Contact: *``)."""
    return register(address, "*" if contact is None else contact, expires=0)


def parse(text: str | bytes, **extras: Any) -> SipRequest:
    """Parse a request written in a test as text.

    The text is dedented and may start with blank lines; every line ending becomes CRLF, the
    line break that ends the text is dropped, and Content-Length is set to the body's length
    (replacing any written one). ``extras`` go to :meth:`SipRequest.parse`."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    text = textwrap.dedent(text).replace("\r\n", "\n").replace("\r", "\n").lstrip("\n")
    head, _, body = text.partition("\n\n")
    body = body.removesuffix("\n")
    lines = [
        line
        for line in head.rstrip("\n").split("\n")
        if line.partition(":")[0].strip().lower() not in ("content-length", "l")
    ]
    data = body.replace("\n", "\r\n").encode("utf-8")
    lines.append(f"Content-Length: {len(data)}")
    raw = "\r\n".join(lines).encode("utf-8") + b"\r\n\r\n" + data
    return SipRequest.parse(raw, **extras)
