"""Policy: each recipient domain has its own quota and message lifetime.

A free-tier domain keeps a few messages for a day; a paying customer's domain keeps many for a
month; any other domain gets the defaults. The limits go to ``Silo.store`` per call, so the
quota is as exact as the global ``max_messages`` on every backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from libmsilo import Silo, SipRequest, StoreResult
from libmsilo.core import choose_owner

DAY = 86400


@dataclass(frozen=True, slots=True)
class DomainLimits:
    """How many unexpired messages one user of a domain may have, and for how long."""

    max_messages: int
    lifetime: int  # seconds


class DomainLimitsPolicy:
    """Stores offline messages with the limits of the recipient's domain."""

    def __init__(
        self, silo: Silo, limits: Mapping[str, DomainLimits], default: DomainLimits
    ) -> None:
        self.silo = silo
        self.limits = {domain.lower(): value for domain, value in limits.items()}
        self.default = default

    def limits_for(self, request: SipRequest) -> DomainLimits:
        """The limits of the domain the message will be filed under."""
        _, domain = choose_owner(request)
        return self.limits.get(domain.lower(), self.default)

    def on_message(self, request: SipRequest) -> StoreResult:
        """The host calls this for a MESSAGE to a user who is offline."""
        limits = self.limits_for(request)
        return self.silo.store(
            request, expire_time=limits.lifetime, max_messages=limits.max_messages
        )
