"""Delivery state: the in-flight deliveries of one ``Silo`` and what each reply means
[BEHAVIOUR.md §4].

:class:`DeliveryTracker` takes events (a message was sent, a reply came, a send failed, a stored
row cannot be sent, the clock moved) and returns :class:`Action` values; the facade carries them
out on the driver and hands the driver's answer to :func:`settle` for the outcome and the
counters. No I/O happens here.

How replies are matched to deliveries (issue 9, item 2):

* A reply with a token answers exactly the delivery that token was issued for. A token of a
  superseded delivery (its lease ran out and the message was sent again) is ignored on failure:
  the newer lease stays. A 2xx always deletes: the message reached the user, whichever delivery
  carried it, and must not be sent again.
* A reply without a token is attributed to the newest delivery this ``Silo`` made, unless an
  older delivery of the same message is still unanswered: then a failure is ambiguous, counts as
  the oldest delivery's answer and changes nothing, so a late reply never releases a newer
  lease (the newer lease runs out instead and the message is retried then, never doubled).
* A reply for a delivery this ``Silo`` does not know (another server sent it, or it was
  forgotten) is looked up in the store: a 2xx with a token deletes the row, a tokenless 2xx only
  a leased row (so a stray 2xx cannot delete a message never sent); a failure needs the token.

An unanswered delivery is remembered until ``late_window`` seconds after its lease ran out
(at least RFC 3261 Timer F, so the 408 of a transaction that timed out is still recognised).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import InvalidRequest
from ..message import MessageKind
from ..records import ReleaseResult, StoredMessage, check_mid, check_token
from .policy import TRANSACTION_TIMEOUT

__all__ = [
    "Action",
    "DeliveryTracker",
    "Op",
    "ReplyClass",
    "ReplyOutcome",
    "Settled",
    "classify_reply",
    "settle",
]


class ReplyClass(enum.Enum):
    """What a final or provisional reply means for a delivery."""

    PROVISIONAL = "provisional"  # 1xx: no decision yet
    DELIVERED = "delivered"  # 2xx: delete the row now
    FAILED = "failed"  # >= 300 (a local timeout counts as 408): release the lease


class ReplyOutcome(enum.Enum):
    """What :meth:`Silo.on_reply` did."""

    PENDING = "pending"  # 1xx: nothing yet
    DELIVERED = "delivered"  # 2xx: the row was deleted
    RETRY = "retry"  # failure: lease released, eligible again
    DROPPED = "dropped"  # failure at max_attempts: the row was deleted
    IGNORED = "ignored"  # unknown, superseded or already finished delivery


def classify_reply(status_code: int) -> ReplyClass:
    """Map a SIP status code to its meaning for the stored message [BEHAVIOUR.md §4]."""
    if (
        isinstance(status_code, bool)
        or not isinstance(status_code, int)
        or not 100 <= status_code <= 699
    ):
        raise InvalidRequest(f"{status_code!r} is not a SIP status code (100-699)")
    if status_code < 200:
        return ReplyClass.PROVISIONAL
    if status_code < 300:
        return ReplyClass.DELIVERED
    return ReplyClass.FAILED


class Op(enum.Enum):
    """The storage step an :class:`Action` asks for."""

    NOTHING = "nothing"  # no storage step: the outcome is known
    DELETE = "delete"  # delete the row (a 2xx)
    RELEASE = "release"  # release the lease ``token`` holds, counting a failed attempt
    LOOKUP = "lookup"  # read the row, then call DeliveryTracker.on_row


@dataclass(frozen=True, slots=True)
class Action:
    """One step for the facade to carry out."""

    op: Op
    mid: int = 0
    token: str | None = None
    reminder: bool = False  # the delivery was a reminder (release turns it into a message)
    outcome: ReplyOutcome = ReplyOutcome.IGNORED  # the answer of a NOTHING action
    verdict: ReplyClass | None = None  # what a LOOKUP decides on


PENDING = Action(Op.NOTHING, outcome=ReplyOutcome.PENDING)
IGNORE = Action(Op.NOTHING)


@dataclass(frozen=True, slots=True)
class Settled:
    """The outcome of a carried-out action and the :class:`~libmsilo.Stats` counters to add."""

    outcome: ReplyOutcome
    counters: tuple[str, ...] = ()


# The few outcomes a carried-out action can have, made once (they are frozen).
_SETTLED = {outcome: Settled(outcome) for outcome in ReplyOutcome}
_DELIVERED = {
    reminder: Settled(
        ReplyOutcome.DELIVERED, ("dumped_reminders" if reminder else "dumped_messages",)
    )
    for reminder in (False, True)
}
_FAILED = {
    (reminder, dropped): Settled(
        ReplyOutcome.DROPPED if dropped else ReplyOutcome.RETRY,
        ("failed_reminders" if reminder else "failed_messages",)
        + (("dropped_messages",) if dropped else ()),
    )
    for reminder in (False, True)
    for dropped in (False, True)
}


def settle(action: Action, result: bool | ReleaseResult | None = None) -> Settled:
    """The outcome of ``action`` given the driver's answer (``delete``'s bool, ``release``'s
    result; nothing for a NOTHING action)."""
    if action.op is Op.DELETE:
        if not result:
            return _SETTLED[ReplyOutcome.IGNORED]  # already gone (answered, purged)
        return _DELIVERED[bool(action.reminder)]
    if action.op is Op.RELEASE:
        if result is ReleaseResult.RELEASED:
            return _FAILED[bool(action.reminder), False]
        if result is ReleaseResult.DROPPED:
            return _FAILED[bool(action.reminder), True]
        return _SETTLED[ReplyOutcome.IGNORED]  # not found, or leased to another token
    return _SETTLED[action.outcome]


@dataclass(frozen=True, slots=True)
class _Flight:
    token: str
    reminder: bool
    lease_until: int


@dataclass(slots=True)
class _Deliveries:
    """The deliveries of one message: the newest, and older ones still unanswered."""

    current: _Flight | None
    older: list[_Flight] = field(default_factory=list)


class DeliveryTracker:
    """The in-flight deliveries of one ``Silo``: events in, :class:`Action` values out.

    Thread-safe: each event is one step under a lock.
    """

    def __init__(self, lease_seconds: int) -> None:
        self.late_window = max(lease_seconds, TRANSACTION_TIMEOUT)
        self._lock = threading.Lock()
        self._by_mid: dict[int, _Deliveries] = {}
        self._next_prune: int | None = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_mid)

    def flights(self, mid: int) -> tuple[str | None, tuple[str, ...]]:
        """The token of the newest delivery of ``mid`` and those of older unanswered ones."""
        with self._lock:
            entry = self._by_mid.get(mid)
            if entry is None:
                return None, ()
            current = entry.current.token if entry.current is not None else None
            return current, tuple(f.token for f in entry.older)

    # ---- events

    def sent(self, mid: int, token: str, kind: MessageKind, lease_until: int) -> None:
        """A dump or reminder of ``mid`` leased to ``token`` went out to the host."""
        self.sent_many((mid,), token, kind, lease_until)

    def sent_many(
        self, mids: Iterable[int], token: str, kind: MessageKind, lease_until: int
    ) -> None:
        """:meth:`sent` for each of ``mids``, leased together (one dump, one sweep)."""
        flight = _Flight(token, kind is MessageKind.REMINDER, lease_until)  # frozen: shared
        with self._lock:
            by_mid = self._by_mid
            for mid in mids:
                entry = by_mid.get(mid)
                if entry is None:
                    by_mid[mid] = _Deliveries(flight)
                    continue
                if entry.current is not None:
                    entry.older.append(entry.current)  # unanswered, superseded
                entry.current = flight

    def unsendable(self, mid: int, token: str, kind: MessageKind) -> Action:
        """A leased row cannot be turned into a MESSAGE: a failed attempt, lease released
        (a reminder becomes an ordinary message, which may still be sendable)."""
        return Action(Op.RELEASE, mid, token, kind is MessageKind.REMINDER)

    def reply(self, mid: int, status_code: int, token: str | None = None) -> Action:
        """A reply (or a local failure, e.g. 408 on timeout) to a sent MESSAGE."""
        verdict = classify_reply(status_code)
        check_token(token, optional=True)
        in_range = check_mid(mid)
        if verdict is ReplyClass.PROVISIONAL:
            return PENDING
        if not in_range:
            return IGNORE
        with self._lock:
            entry = self._by_mid.get(mid)
            if entry is None:
                return self._unknown(mid, verdict, token)
            if token is None:
                return self._tokenless(mid, entry, verdict)
            return self._tokened(mid, entry, verdict, token)

    def send_failed(self, mid: int | None, token: str | None) -> Action:
        """The host could not send a MESSAGE: a failed attempt of that very delivery."""
        if mid is None:
            return IGNORE  # notices are fire-and-forget
        return self.reply(mid, 500, token)

    def on_row(self, lookup: Action, row: StoredMessage | None) -> Action:
        """The second half of a LOOKUP action: decide on the stored row it read."""
        if lookup.op is not Op.LOOKUP or row is None:
            return IGNORE
        if lookup.verdict is ReplyClass.DELIVERED and (
            lookup.token is not None or row.lease_token is not None
        ):
            # A token proves a delivery was made; without one, only a leased row can have
            # been sent (a 2xx for a row never sent or already released is ignored).
            return Action(Op.DELETE, lookup.mid, reminder=row.is_reminder)
        if lookup.token is None or row.lease_token is None:
            return IGNORE
        return Action(Op.RELEASE, lookup.mid, lookup.token, row.is_reminder)

    def tick(self, now: int) -> None:
        """The clock moved: forget deliveries whose late replies can no longer come."""
        with self._lock:
            if self._next_prune is not None and now < self._next_prune:
                return
            self._next_prune = now + self.late_window
            horizon = now - self.late_window
            for mid in list(self._by_mid):
                entry = self._by_mid[mid]
                entry.older = [f for f in entry.older if f.lease_until > horizon]
                if entry.current is not None and entry.current.lease_until <= horizon:
                    entry.current = None
                if entry.current is None and not entry.older:
                    del self._by_mid[mid]

    # ---- decisions (under the lock)

    def _unknown(self, mid: int, verdict: ReplyClass, token: str | None) -> Action:
        if verdict is ReplyClass.FAILED and token is None:
            # Another server's delivery, or a forgotten one: its lease cannot be told from a
            # newer delivery's, so it is left to run out.
            return IGNORE
        return Action(Op.LOOKUP, mid, token, verdict=verdict)

    def _tokenless(self, mid: int, entry: _Deliveries, verdict: ReplyClass) -> Action:
        if verdict is ReplyClass.DELIVERED:
            newest = entry.current or entry.older[-1]
            del self._by_mid[mid]
            return Action(Op.DELETE, mid, reminder=newest.reminder)
        if entry.older:
            entry.older.pop(0)  # ambiguous: taken as the oldest delivery's late answer
            self._drop_if_empty(mid, entry)
            return IGNORE
        assert entry.current is not None  # an entry always holds a delivery
        flight, entry.current = entry.current, None
        del self._by_mid[mid]
        return Action(Op.RELEASE, mid, flight.token, flight.reminder)

    def _tokened(self, mid: int, entry: _Deliveries, verdict: ReplyClass, token: str) -> Action:
        current = entry.current
        if current is not None and current.token == token:
            entry.current = None
            if verdict is ReplyClass.DELIVERED:
                del self._by_mid[mid]
                return Action(Op.DELETE, mid, reminder=current.reminder)
            self._drop_if_empty(mid, entry)
            return Action(Op.RELEASE, mid, token, current.reminder)
        older = next((f for f in entry.older if f.token == token), None)
        if older is not None:
            entry.older.remove(older)
            if verdict is ReplyClass.DELIVERED:
                del self._by_mid[mid]  # delivered by the older delivery: never send it again
                return Action(Op.DELETE, mid, reminder=older.reminder)
            self._drop_if_empty(mid, entry)
            return IGNORE  # a superseded delivery failed: the newer lease stays
        return self._unknown(mid, verdict, token)

    def _drop_if_empty(self, mid: int, entry: _Deliveries) -> None:
        if entry.current is None and not entry.older:
            del self._by_mid[mid]
