"""Simulated phones: user agents that register with a Silo, receive what it sends and answer.

A :class:`PhoneNetwork` holds the phones of one Silo and plays the host's SIP stack: it hands
each message the Silo sends to the phone of the message's To address, and answers ``480
Temporarily Unavailable`` for addresses with no registered phone, as a proxy would.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..core.owner import split_owner_uri
from ..message import MessageKind, OutgoingMessage
from ..silo import ReplyOutcome, Silo
from . import sip

__all__ = ["PhoneNetwork", "SimulatedPhone"]

UNAVAILABLE = 480


class SimulatedPhone:
    """One user agent of ``address``, registered (or not) on a :class:`PhoneNetwork`.

    ``received`` lists every message delivered to it, ``pending`` those not answered yet.
    """

    def __init__(self, network: PhoneNetwork, address: str, contact: str | None = None) -> None:
        self.network = network
        self.address = address
        self.contact = contact if contact is not None else sip.default_contact(address)
        self.online = False
        self.received: list[OutgoingMessage] = []
        self.pending: list[OutgoingMessage] = []

    def __repr__(self) -> str:
        state = "online" if self.online else "offline"
        return f"<SimulatedPhone {self.address} {state}, {len(self.pending)} pending>"

    def receive(self, msg: OutgoingMessage) -> None:
        """Take a message the network delivers (it waits in ``pending`` for an answer)."""
        self.received.append(msg)
        self.pending.append(msg)

    def register(
        self, expires: int = 3600, *, allow: Iterable[str] | None = None
    ) -> list[OutgoingMessage]:
        """REGISTER the phone's contact; return the stored messages the Silo delivers for it
        (they wait in ``pending`` until :meth:`answer`)."""
        request = sip.register(self.address, self.contact, expires=expires, allow=allow)
        self.online = expires > 0
        delivered = self.network.silo.dump(request)
        for msg in delivered:
            self.receive(msg)
        return delivered

    def deregister(self) -> list[OutgoingMessage]:
        """Remove the phone's binding; nothing is delivered (the result is always [])."""
        self.online = False
        return self.network.silo.dump(sip.deregister(self.address, self.contact))

    def answer(
        self, status: int = 200, messages: Iterable[OutgoingMessage] | None = None
    ) -> list[ReplyOutcome]:
        """Reply ``status`` to ``messages`` (default: every pending one), with their lease
        tokens, and return what the Silo did with each. 1xx replies leave them pending."""
        targets = list(self.pending if messages is None else messages)
        outcomes = []
        for msg in targets:
            outcomes.append(self.network.reply(msg, status))
            if status >= 200 and msg in self.pending:
                self.pending.remove(msg)
        return outcomes

    def deliver_all(self) -> list[OutgoingMessage]:
        """Register, run the Silo's due timers, and answer 200 to everything pending; return
        the messages that were delivered (their rows deleted)."""
        self.register()
        self.network.run_timers()
        pending = list(self.pending)
        outcomes = self.answer(200, pending)
        return [m for m, o in zip(pending, outcomes, strict=True) if o is ReplyOutcome.DELIVERED]


class PhoneNetwork:
    """The phones of one Silo and the routing of what it sends."""

    def __init__(self, silo: Silo) -> None:
        self.silo = silo
        self.phones: dict[tuple[str, str], SimulatedPhone] = {}
        self.unanswered: list[OutgoingMessage] = []  # sent to no registered phone

    def phone(self, address: str, contact: str | None = None) -> SimulatedPhone:
        """The phone of ``address``, created (offline) on first use."""
        key = split_owner_uri(address)
        found = self.phones.get(key)
        if found is None:
            found = self.phones[key] = SimulatedPhone(self, address, contact)
        elif contact is not None and contact != found.contact:
            raise ValueError(f"{address} already has a phone with contact {found.contact}")
        return found

    def send(self, msg: OutgoingMessage) -> SimulatedPhone | None:
        """Deliver ``msg`` to the online phone of its To address, or answer 480 for it."""
        found = self.phones.get(split_owner_uri(msg.to_uri))
        if found is not None and found.online:
            found.receive(msg)
            return found
        self.unanswered.append(msg)
        self.reply(msg, UNAVAILABLE)
        return None

    def reply(self, msg: OutgoingMessage, status: int) -> ReplyOutcome:
        """Hand a reply to ``msg`` back to the Silo (notices need none: IGNORED)."""
        if msg.kind is MessageKind.NOTICE or msg.mid is None:
            return ReplyOutcome.IGNORED
        return self.silo.on_reply(msg.mid, status, token=msg.lease_token)

    def run_timers(self) -> list[OutgoingMessage]:
        """Run what is due at the Silo's clock (purge, reminders) and send the due reminders;
        return them."""
        due = self.silo.tick()
        for msg in due:
            self.send(msg)
        return due
