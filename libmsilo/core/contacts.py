"""The SIP contacts of a request that a MESSAGE can be sent to; the others skipped, logged."""

from __future__ import annotations

import logging

from ..message import SipRequest
from ..uri import NameAddr

__all__ = ["sip_contacts"]

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
