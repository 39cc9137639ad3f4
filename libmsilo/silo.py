"""The ``Silo`` facade: the sans-I/O core wired to a driver, a clock and statistics."""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from types import TracebackType

from .core import (
    ReplyClass,
    StoreResult,
    StoreStatus,
    TimerSchedule,
    build_notice,
    build_row,
    choose_owner,
    classify_reply,
    dump_message,
    dump_owner,
    dump_target,
    plan_dump,
    reminder_message,
    reminder_time,
    split_owner_uri,
)
from .drivers import open_driver
from .drivers.base import Driver
from .errors import InvalidRequest, MsiloError
from .message import MessageKind, OutgoingMessage, SipRequest
from .records import DriverOptions, ReleaseResult, StoredMessage
from .settings import MsiloSettings

__all__ = ["ReplyOutcome", "Silo", "Stats", "TimerThread"]

log = logging.getLogger("libmsilo")

Clock = Callable[[], float]
Sender = Callable[[OutgoingMessage], None]


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters, one per event, counted when the event happens (reply time for deliveries)."""

    stored_messages: int = 0
    dumped_messages: int = 0  # offline messages answered 2xx
    dumped_reminders: int = 0  # reminders answered 2xx
    failed_messages: int = 0  # failed delivery attempts of offline messages
    failed_reminders: int = 0  # failed reminder deliveries (the row becomes an offline message)
    dropped_messages: int = 0  # rows deleted after max_attempts failed attempts


class ReplyOutcome(enum.Enum):
    """What :meth:`Silo.on_reply` did."""

    PENDING = "pending"  # 1xx: nothing yet
    DELIVERED = "delivered"  # 2xx: the row was deleted
    RETRY = "retry"  # failure: lease released, eligible again
    DROPPED = "dropped"  # failure at max_attempts: the row was deleted
    IGNORED = "ignored"  # unknown or already finished message


@dataclass(frozen=True, slots=True)
class _Flight:
    token: str
    kind: MessageKind
    lease_until: int


class Silo:
    """msilo for one store: ``store``, ``dump``, ``on_reply``, ``tick`` and the inbox API."""

    def __init__(
        self, driver: Driver, settings: MsiloSettings | None = None, *, clock: Clock = time.time
    ) -> None:
        self.driver = driver
        self.settings = settings if settings is not None else MsiloSettings()
        self.policy = self.settings.policy()
        self._clock = clock
        self._lock = threading.Lock()
        self._counts = dict.fromkeys((f.name for f in fields(Stats)), 0)
        self._inflight: dict[int, _Flight] = {}
        self._schedule = TimerSchedule()

    @classmethod
    def from_settings(
        cls,
        settings: MsiloSettings | None = None,
        *,
        clock: Clock = time.time,
        create_schema: bool = True,
    ) -> Silo:
        """Open the driver ``settings.db_url`` names (creating its schema unless told not to)."""
        settings = settings if settings is not None else MsiloSettings()
        driver = open_driver(
            settings.db_url, settings.layout(), DriverOptions(timeout=settings.db_timeout)
        )
        if create_schema:
            driver.create_schema()
        return cls(driver, settings, clock=clock)

    def close(self) -> None:
        """Close the driver."""
        self.driver.close()

    def __enter__(self) -> Silo:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- statistics

    @property
    def stats(self) -> Stats:
        """A snapshot of the counters."""
        with self._lock:
            return Stats(**self._counts)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _now(self) -> int:
        return int(self._clock())

    # ---- m_store

    def store(
        self,
        request: SipRequest,
        owner: str | None = None,
        *,
        notify: bool = True,
        send_at: datetime | int | float | str | None = None,
    ) -> StoreResult:
        """Store ``request`` for its owner (``m_store``); ``send_at`` makes it a reminder."""
        now = self._now()
        row = build_row(
            request,
            self.policy,
            now,
            choose_owner(request, owner),
            reminder_time(request, self.policy, send_at),
        )
        mid = self.driver.insert(row, self.policy.max_messages)
        if mid is None:
            log.info("quota reached for %s@%s; not stored", row.username, row.domain)
            return StoreResult(StoreStatus.QUOTA_EXCEEDED)
        self._count("stored_messages")
        notice = None
        if notify:
            try:
                notice = build_notice(request, self.policy, now)
            except MsiloError as exc:  # the row is stored; a notice problem must not undo that
                log.warning("offline notice for message %d not built: %s", mid, exc)
        return StoreResult(StoreStatus.STORED, mid, notice)

    # ---- m_dump

    def dump(
        self,
        request: SipRequest | None = None,
        owner: str | None = None,
        *,
        max_messages: int = 0,
        contact: str | None = None,
    ) -> list[OutgoingMessage]:
        """Lease the owner's stored messages and return the MESSAGEs that deliver them."""
        plan = plan_dump(request)
        if not plan.allowed:
            log.debug("no dump: %s", plan.reason)
            return []
        username, domain = dump_owner(request, owner)
        target = dump_target(plan, self.policy, contact)
        now = self._now()
        token = uuid.uuid4().hex
        rows = self.driver.claim(
            username, domain, now, now + self.policy.lease_seconds, token, max(0, max_messages)
        )
        return self._outgoing(rows, MessageKind.DUMP, token, now, target)

    def _outgoing(
        self,
        rows: list[StoredMessage],
        kind: MessageKind,
        token: str,
        now: int,
        target: str | None = None,
    ) -> list[OutgoingMessage]:
        out: list[OutgoingMessage] = []
        for row in rows:
            try:
                if kind is MessageKind.REMINDER:
                    msg = reminder_message(row, self.policy, token)
                else:
                    msg = dump_message(row, self.policy, target, token)
            except InvalidRequest as exc:
                # Skip it and go on: one bad row must not block the others [§9.4].
                log.warning("stored message %d cannot be sent: %s", row.mid, exc)
                self._finish_failed(row.mid, token, kind)
                continue
            with self._lock:
                self._inflight[row.mid] = _Flight(token, kind, now + self.policy.lease_seconds)
            out.append(msg)
        return out

    # ---- replies

    def on_reply(self, mid: int, status_code: int, *, token: str | None = None) -> ReplyOutcome:
        """Hand back the final (or provisional) reply to a dumped or reminded MESSAGE.

        Pass ``token=msg.lease_token`` when the reply may reach another ``Silo`` than the one
        that sent the message: without it a failure there cannot tell its lease from a newer
        delivery's, so it is left to run out (the message is retried then, never doubled).
        """
        verdict = classify_reply(status_code)
        if verdict is ReplyClass.PROVISIONAL:
            return ReplyOutcome.PENDING
        with self._lock:
            flight = self._inflight.pop(mid, None)
        if flight is not None:
            kind, token = flight.kind, token or flight.token
        else:
            row = self.driver.get(mid)
            if row is None or row.lease_token is None:
                return ReplyOutcome.IGNORED
            kind = MessageKind.REMINDER if row.snd_time > 0 else MessageKind.DUMP
            if verdict is ReplyClass.FAILED and token is None:
                return ReplyOutcome.IGNORED
        if verdict is ReplyClass.DELIVERED:
            if not self.driver.delete(mid):
                return ReplyOutcome.IGNORED
            reminder = kind is MessageKind.REMINDER
            self._count("dumped_reminders" if reminder else "dumped_messages")
            return ReplyOutcome.DELIVERED
        return self._finish_failed(mid, token, kind)

    def _finish_failed(self, mid: int, token: str | None, kind: MessageKind) -> ReplyOutcome:
        reminder = kind is MessageKind.REMINDER
        result = self.driver.release(
            mid, token, to_offline=reminder, max_attempts=self.policy.max_attempts
        )
        if result is ReleaseResult.NOT_FOUND:
            return ReplyOutcome.IGNORED
        self._count("failed_reminders" if reminder else "failed_messages")
        if result is ReleaseResult.DROPPED:
            self._count("dropped_messages")
            return ReplyOutcome.DROPPED
        return ReplyOutcome.RETRY

    # ---- timers

    def tick(self, now: float | None = None) -> list[OutgoingMessage]:
        """Run what is due: the expiry purge and the reminder sweep; return due reminders."""
        at = self._clock() if now is None else now
        purge, remind = self._schedule.due(at, self.policy)
        second = int(at)
        if purge:
            purged = self.driver.delete_expired(second)
            if purged:
                log.info("purged %d expired messages", purged)
            with self._lock:
                stale = [m for m, f in self._inflight.items() if f.lease_until <= second]
                for mid in stale:
                    del self._inflight[mid]
        if not remind:
            return []
        token = uuid.uuid4().hex
        rows = self.driver.claim_due_reminders(second, second + self.policy.lease_seconds, token)
        return self._outgoing(rows, MessageKind.REMINDER, token, second)

    def run_forever(
        self, send: Sender, stop: threading.Event | None = None, *, poll: float = 1.0
    ) -> None:
        """Call :meth:`tick` until ``stop`` is set, handing due reminders to ``send``.

        A ``send`` that raises counts as a failed delivery; a storage error is logged and the
        loop goes on, so a database restart does not stop the timers.
        """
        stop = stop if stop is not None else threading.Event()
        while not stop.is_set():
            try:
                for msg in self.tick():
                    self._send(send, msg)
            except MsiloError:
                log.exception("timer tick failed")
            wait = self._schedule.seconds_to_next(self._clock(), self.policy)
            stop.wait(min(max(wait, 0.05), poll))

    def _send(self, send: Sender, msg: OutgoingMessage) -> None:
        try:
            send(msg)
        except Exception:
            log.exception("sending message %s failed", msg.mid)
            self.send_failed(msg)

    def send_failed(self, msg: OutgoingMessage) -> ReplyOutcome:
        """Report that the host could not send ``msg``: a failed attempt, retried later."""
        if msg.mid is None:
            return ReplyOutcome.IGNORED  # notices are fire-and-forget
        return self.on_reply(msg.mid, 500, token=msg.lease_token)

    def start(self, send: Sender, *, poll: float = 1.0) -> TimerThread:
        """Run the timers in a daemon thread; stop it with ``.stop()``."""
        thread = TimerThread(self, send, poll)
        thread.start()
        return thread

    # ---- inbox

    def count(self, aor: str) -> int:
        """Number of unexpired messages stored for ``aor``."""
        return self.driver.count(*split_owner_uri(aor), self._now())

    def list(self, aor: str, limit: int = 100) -> list[StoredMessage]:
        """The unexpired messages of ``aor`` in id order (nothing is leased)."""
        return self.driver.list(*split_owner_uri(aor), self._now(), limit)

    def get(self, mid: int) -> StoredMessage | None:
        """One stored message by id."""
        return self.driver.get(mid)

    def delete(self, mid: int) -> bool:
        """Delete one stored message."""
        return self.driver.delete(mid)

    def purge(self, aor: str) -> int:
        """Delete every message of ``aor``."""
        return self.driver.purge(*split_owner_uri(aor))

    def purge_expired(self, now: float | None = None) -> int:
        """Delete every expired message now."""
        return self.driver.delete_expired(int(self._clock() if now is None else now))


class TimerThread(threading.Thread):
    """A daemon thread running :meth:`Silo.run_forever` until :meth:`stop`."""

    def __init__(self, silo: Silo, send: Sender, poll: float) -> None:
        super().__init__(name="libmsilo-timers", daemon=True)
        self._silo, self._send, self._poll = silo, send, poll
        self._stop_event = threading.Event()

    def run(self) -> None:
        self._silo.run_forever(self._send, self._stop_event, poll=self._poll)

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask the loop to end and wait for it."""
        self._stop_event.set()
        self.join(timeout)
