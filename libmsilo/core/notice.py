"""The "recipient is offline" notice sent back to the sender [BEHAVIOUR.md §2.6]."""

from __future__ import annotations

import logging

from ..errors import InvalidURI
from ..message import MessageKind, OutgoingMessage, SipRequest
from ..templating import Template
from ..uri import URI, aor
from .contacts import indirect_reason, sip_contacts
from .limits import CONTROL, HEADER_NAME
from .owner import setting_address
from .policy import Policy

__all__ = ["build_notice", "notice_target"]

log = logging.getLogger("libmsilo")


def _render_header_lines(
    template: Template, request: SipRequest, policy: Policy, now: int, default: str
) -> list[tuple[str, str]] | None:
    """Header lines from a ``contact_hdr`` / ``content_type_hdr`` template (None if unsafe)."""
    text = template.render(request, now=now, tz=policy.zone)
    # A value from the request must not add header lines of its own (CRLF injection).
    if text.count("\n") > template.source.count("\n") or "\r" in text.replace("\r\n", ""):
        return None
    headers: list[tuple[str, str]] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if colon and HEADER_NAME.fullmatch(name.strip()):
            headers.append((name.strip(), value.strip()))
        else:
            headers.append((default, line.strip()))
    if any(CONTROL.search(v.replace("\t", " ")) for _, v in headers):
        return None
    return headers


def _is_loop(request: SipRequest, ours: URI) -> bool:
    """The loop guard: the request came from msilo itself (Kamailio #61)."""
    if any(c.param("msilo") is not None for c in request.usable_contacts[0]):
        return True
    theirs = request.from_addr.uri
    return ours.scheme == theirs.scheme and aor(ours) == aor(theirs)


def notice_target(request: SipRequest, use_contact: bool) -> str:
    """Where the offline notice goes [BEHAVIOUR.md §2.6]: the sender's Contact when usable, else
    its From."""
    if use_contact:
        for contact in sip_contacts(request, "offline notice"):
            # A contact only the sender's proxy can reach (WebSocket, NAT, outbound flow):
            # the From URI goes through that proxy.
            if indirect_reason(contact, request) is None:
                return str(contact.uri)
            break
    return str(request.from_addr.uri)


def build_notice(request: SipRequest, policy: Policy, now: int) -> OutgoingMessage | None:
    """The "recipient is offline" notice for a stored request, or None [BEHAVIOUR.md §2.6]."""
    if not policy.notices_enabled:
        return None
    from_t = policy.template("from_address")
    body_t = policy.template("offline_message")
    ctype_t = policy.template("content_type_hdr")
    if from_t is None or body_t is None or ctype_t is None:
        return None
    rendered = from_t.render(request, now=now, tz=policy.zone).strip()
    try:
        sender = setting_address(rendered)
    except InvalidURI as exc:
        log.warning("offline notice not sent: from_address gives %r: %s", rendered, exc)
        return None
    if policy.notify_loop_guard and _is_loop(request, sender.uri):
        return None
    headers: list[tuple[str, str]] = []
    contact_t = policy.template("contact_hdr")
    if contact_t is not None:
        contact_lines = _render_header_lines(contact_t, request, policy, now, "Contact")
        if contact_lines is None:
            return None
        headers += contact_lines
    ctype_lines = _render_header_lines(ctype_t, request, policy, now, "Content-Type")
    if not ctype_lines:
        return None
    headers += ctype_lines
    content_type = next(
        (v for n, v in ctype_lines if n.lower() in ("content-type", "c")), ctype_lines[0][1]
    )
    body = body_t.render(request, now=now, tz=policy.zone).encode("utf-8")
    return OutgoingMessage(
        kind=MessageKind.NOTICE,
        mid=None,
        ruri=notice_target(request, policy.use_contact),
        from_uri=str(sender.uri),
        from_name=sender.display_name,
        to_uri=str(request.from_addr.uri),
        headers=tuple(headers),
        body=body,
        content_type=content_type,
        next_hop=policy.outbound_proxy,
    )
