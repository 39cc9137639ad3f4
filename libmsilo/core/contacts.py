"""The SIP contacts of a request that a MESSAGE can be sent to; the others skipped, logged."""

from __future__ import annotations

import ipaddress
import logging

from ..message import SipRequest
from ..uri import NameAddr

__all__ = ["indirect_reason", "sip_contacts"]

log = logging.getLogger("libmsilo")


def sip_contacts(request: SipRequest, purpose: str) -> tuple[NameAddr, ...]:
    """The ``sip:``/``sips:`` contacts of ``request`` in order. A contact that does not parse
    (``<mailto:…>``, a host with ``_``) or has another scheme is skipped with a warning naming
    it and ``purpose``, so one odd contact never hides the usable ones."""
    contacts, unparsed = request.usable_contacts
    for element, reason in unparsed:
        log.warning("%s: Contact %r skipped: %s", purpose, element[:200], reason)
    usable = []
    for contact in contacts:
        if contact.uri.scheme in ("sip", "sips") and contact.uri.host:
            usable.append(contact)
        else:
            log.warning("%s: Contact %s skipped: not a SIP URI", purpose, str(contact)[:200])
    return tuple(usable)


def _via_source(request: SipRequest) -> tuple[str | None, int | None]:
    """The ``received`` address and ``rport`` port of the UA's own Via (the bottom one), as the
    first hop wrote them (RFC 3261 §18.2.1, RFC 3581)."""
    vias = request.header_list("Via")
    received: str | None = None
    rport: int | None = None
    for param in vias[-1].split(";")[1:] if vias else ():
        name, _, value = param.partition("=")
        name, value = name.strip().lower(), value.strip()
        if name == "received" and value:
            received = value.strip("[]").lower()
        elif name == "rport" and value.isdigit():
            rport = int(value)
    return received, rport


def _same_address(received: str, host: str) -> bool:
    """Whether a Via ``received`` address is the contact's host (IPv6 spellings compared)."""
    try:
        return ipaddress.ip_address(received) == ipaddress.ip_address(host)
    except ValueError:
        return received == host


def indirect_reason(contact: NameAddr, request: SipRequest) -> str | None:
    """Why a MESSAGE cannot go straight to a REGISTER contact, or None when it can.

    Such a contact is reached only through the registrar's own routing, so the dump then goes to
    the address of record: a REGISTER relayed with ``Path`` (RFC 3327), an outbound flow
    (``;ob``, RFC 5626), a WebSocket client (``transport=ws``/``wss``, ``.invalid`` host,
    RFC 7118 §5) or a contact that differs from the address or port the request came from (NAT:
    Via ``received`` and ``rport``, RFC 3581).
    """
    uri = contact.uri
    if request.header("Path") is not None:
        return "the registration came through a Path (RFC 3327)"
    if uri.has_param("ob"):
        return "the contact is an outbound flow (RFC 5626 ;ob)"
    transport = (uri.param("transport") or "").lower()
    host = uri.host.rstrip(".").lower()
    if transport in ("ws", "wss") or host == "invalid" or host.endswith(".invalid"):
        return "the contact is a WebSocket client (RFC 7118)"
    received, rport = _via_source(request)
    if received is not None and not _same_address(received, host.strip("[]")):
        return f"the contact is behind NAT (the request came from {received})"
    default_port = 5061 if uri.scheme == "sips" or transport == "tls" else 5060
    if rport is not None and rport != (uri.port or default_port):
        return f"the contact is behind NAT (the request came from port {rport})"
    return None
