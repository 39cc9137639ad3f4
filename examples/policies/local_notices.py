"""Policy: only senders of our own domains are told that the recipient is offline.

An offline notice to a foreign sender leaks presence and can be abused to reflect traffic at a
third party (the From address is not authenticated across domains), so notices go only to
senders in the domains we serve, subdomains included.
"""

from __future__ import annotations

from collections.abc import Iterable

from libmsilo import Silo, SipRequest, StoreResult


class LocalNoticePolicy:
    """Stores every offline message; notifies only senders of ``our_domains``."""

    def __init__(self, silo: Silo, our_domains: Iterable[str]) -> None:
        self.silo = silo
        self.our_domains = frozenset(d.lower().strip(".") for d in our_domains)

    def is_local(self, domain: str) -> bool:
        """Whether ``domain`` is one of ours or a subdomain of one."""
        domain = domain.lower().rstrip(".")
        return any(domain == ours or domain.endswith("." + ours) for ours in self.our_domains)

    def on_message(self, request: SipRequest) -> StoreResult:
        """The host calls this for a MESSAGE to a user who is offline."""
        sender = request.from_addr.uri.host
        return self.silo.store(request, notify=self.is_local(sender))
