"""The ``Silo`` facade: the sans-I/O core wired to a driver, a clock and statistics.

Every decision is the core's (:mod:`libmsilo.core`); this class only carries out its actions on
the driver and keeps the counters.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import TypeVar

from .core import (
    Action,
    DeliveryTracker,
    Op,
    Policy,
    ReplyOutcome,
    StoreLimits,
    StoreResult,
    StoreStatus,
    TimerSchedule,
    build_notice,
    build_row,
    choose_owner,
    dump_extra_headers,
    dump_message,
    dump_owner,
    dump_target,
    header_pairs,
    plan_dump,
    reminder_message,
    reminder_time,
    sendable,
    settle,
    split_owner_uri,
    store_limits,
)
from .drivers import open_driver
from .drivers.base import Driver
from .drivers.batch import Release, delete_many, insert_many, release_many
from .drivers.plumbing import totals
from .errors import InvalidRequest, MsiloError
from .group_commit import GroupCommit
from .message import MessageKind, OutgoingMessage, SipRequest
from .metrics import Metrics
from .records import NewMessage, ReleaseResult, StoredMessage, StoreTotals, check_mid
from .settings import MsiloSettings

__all__ = ["ReplyOutcome", "Silo", "Stats", "TimerThread"]

log = logging.getLogger("libmsilo")

Clock = Callable[[], float]
Sender = Callable[[OutgoingMessage], None]
Build = Callable[[StoredMessage], OutgoingMessage]
T = TypeVar("T")
R = TypeVar("R")

_AT_QUOTA = StoreResult(StoreStatus.QUOTA_EXCEEDED)  # frozen: one for every such store


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters, one per event, counted when the event happens (reply time for deliveries)."""

    stored_messages: int = 0
    dumped_messages: int = 0  # offline messages answered 2xx
    dumped_reminders: int = 0  # reminders answered 2xx
    failed_messages: int = 0  # failed delivery attempts of offline messages
    failed_reminders: int = 0  # failed reminder deliveries (the row becomes an offline message)
    dropped_messages: int = 0  # rows deleted after max_attempts failed attempts


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
        self._deliveries = DeliveryTracker(self.policy.lease_seconds)
        self._default_limits: tuple[Policy | None, StoreLimits] = (None, StoreLimits(0, 0))
        self._schedule = TimerSchedule()
        #: Receives latencies and batch sizes (:mod:`libmsilo.metrics`); None measures nothing.
        self.metrics: Metrics | None = None
        # Group commit: concurrent stores, acks and releases share one batch per flush.
        self._group = self.settings.group_commit
        size, wait = self.settings.group_commit_size, self.settings.group_commit_wait
        flushers = flushers_for(self.settings)
        commit = partial(GroupCommit, max_batch=size, max_wait=wait, flushers=flushers)
        self._inserts = commit(self._flush_inserts)
        self._deletes = commit(self._flush_deletes)
        self._releases = commit(self._flush_releases)

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
        driver = open_driver(settings.db_url, settings.layout(), settings.driver_options())
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

    def _count(self, *names: str) -> None:
        with self._lock:
            for name in names:
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
        expire_time: int | None = None,
        max_messages: int | None = None,
    ) -> StoreResult:
        """Store ``request`` for its owner (``m_store``); ``send_at`` makes it a reminder.

        ``expire_time`` (seconds) and ``max_messages`` (the owner's quota, <= 0 for none)
        replace the settings for this call, e.g. per domain. Once the row is stored this
        returns: a notice that cannot be built is logged and named in ``notice_error``.
        """
        start = self._started()
        now = self._now()
        row, quota = self._row(request, owner, now, send_at, expire_time, max_messages)
        mid = self._inserts.submit((row, quota)) if self._group else self.driver.insert(row, quota)
        self._observe("store", start)
        return self._stored(request, row, mid, now, notify)

    def store_many(
        self,
        requests: Iterable[SipRequest],
        *,
        notify: bool = True,
        expire_time: int | None = None,
        max_messages: int | None = None,
    ) -> list[StoreResult | MsiloError]:
        """:meth:`store` for each request (each for the owner it names), stored together in
        one batch of the driver (one transaction, one pipeline). One result per request, in
        order: its :class:`StoreResult`, or the error that request alone raised (a request
        that cannot be stored, or the store out of reach for the whole batch)."""
        now = self._now()
        items = list(requests)
        results: list[StoreResult | MsiloError] = []
        rows: list[tuple[int, NewMessage, int]] = []
        for i, request in enumerate(items):
            try:
                row, quota = self._row(request, None, now, None, expire_time, max_messages)
            except MsiloError as exc:
                results.append(exc)
                continue
            results.append(_AT_QUOTA)  # replaced below
            rows.append((i, row, quota))
        mids = self._flush_inserts([(row, quota) for _, row, quota in rows])
        for (i, row, _), mid in zip(rows, mids, strict=True):
            if isinstance(mid, MsiloError):
                results[i] = mid
            elif isinstance(mid, BaseException):
                raise mid
            else:
                results[i] = self._stored(items[i], row, mid, now, notify)
        return results

    def _row(
        self,
        request: SipRequest,
        owner: str | None,
        now: int,
        send_at: datetime | int | float | str | None,
        expire_time: int | None,
        max_messages: int | None,
    ) -> tuple[NewMessage, int]:
        """The row to store for ``request`` and the owner's quota."""
        limits = self._limits(expire_time, max_messages)
        row = build_row(
            request,
            self.policy,
            now,
            choose_owner(request, owner),
            reminder_time(request, self.policy, send_at),
            lifetime=limits.lifetime,
        )
        return row, limits.quota

    def _limits(self, expire_time: int | None, max_messages: int | None) -> StoreLimits:
        """:func:`store_limits` of one store; the policy's own limits are worked out once."""
        if expire_time is not None or max_messages is not None:
            return store_limits(self.policy, expire_time, max_messages)
        policy, limits = self._default_limits
        if policy is not self.policy:
            limits = store_limits(self.policy, None, None)  # raises for a policy out of range
            self._default_limits = (self.policy, limits)
        return limits

    def _stored(
        self, request: SipRequest, row: NewMessage, mid: int | None, now: int, notify: bool
    ) -> StoreResult:
        """The result of storing ``request`` as ``row`` with id ``mid`` (None: quota)."""
        if mid is None:
            log.info("quota reached for %s@%s; not stored", row.username, row.domain)
            return _AT_QUOTA
        self._count("stored_messages")
        if not notify:
            return StoreResult(StoreStatus.STORED, mid)
        try:
            notice = build_notice(request, self.policy, now)
            return StoreResult(StoreStatus.STORED, mid, sendable(notice) if notice else None)
        except Exception as exc:  # the row is stored: nothing may undo that (issue 9.9)
            log.warning("offline notice for message %d not built: %r", mid, exc)
            return StoreResult(StoreStatus.STORED, mid, notice_error=f"{type(exc).__name__}: {exc}")

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
        start = self._started()
        try:
            return self._dump(request, owner, max_messages, contact)
        finally:
            self._observe("dump", start)

    def _dump(
        self,
        request: SipRequest | None,
        owner: str | None,
        max_messages: int,
        contact: str | None,
    ) -> list[OutgoingMessage]:
        plan = plan_dump(request)
        if not plan.allowed:
            log.debug("no dump: %s", plan.reason)
            return []
        username, domain = dump_owner(request, owner)
        target = dump_target(plan, self.policy, contact)
        now = self._now()
        token = uuid.uuid4().hex
        lease_until = now + self.policy.lease_seconds
        extra = tuple(header_pairs(dump_extra_headers(request, self.policy, now)))
        rows = self.driver.claim(username, domain, now, lease_until, token, max(0, max_messages))
        return self._outgoing(
            rows,
            MessageKind.DUMP,
            token,
            lease_until,
            lambda row: dump_message(row, self.policy, target, token, extra),
        )

    def _outgoing(
        self,
        rows: list[StoredMessage],
        kind: MessageKind,
        token: str,
        lease_until: int,
        build: Build,
    ) -> list[OutgoingMessage]:
        out: list[OutgoingMessage] = []
        sent: list[int] = []
        for row in rows:
            try:
                msg = sendable(build(row))
            except InvalidRequest as exc:
                # Skip it and go on: one bad row must not block the others [BEHAVIOUR.md §3.6].
                log.warning("stored message %d cannot be sent: %s", row.mid, exc)
                self._carry_out(self._deliveries.unsendable(row.mid, token, kind))
                continue
            out.append(msg)
            sent.append(row.mid)
        self._deliveries.sent_many(sent, token, kind, lease_until)
        return out

    # ---- replies

    def on_reply(self, mid: int, status_code: int, *, token: str | None = None) -> ReplyOutcome:
        """Hand back the final (or provisional) reply to a dumped or reminded MESSAGE.

        Pass ``token=msg.lease_token``: the reply then answers exactly that delivery. Without
        it, a failure is taken as the answer of this ``Silo``'s newest delivery of ``mid``
        unless an older one is still unanswered (then it changes nothing and the lease runs
        out), and a failure that reaches another ``Silo`` is ignored. A ``mid`` or ``token``
        of the wrong type, or a code outside 100-699, raises ``InvalidRequest``; an unknown id
        is ``IGNORED``.
        """
        start = self._started()
        outcome = self._carry_out(self._deliveries.reply(mid, status_code, token))
        self._observe("ack", start)
        return outcome

    @property
    def leased(self) -> int:
        """Deliveries this ``Silo`` sent that are not yet answered (nor forgotten)."""
        return len(self._deliveries)

    def send_failed(self, msg: OutgoingMessage) -> ReplyOutcome:
        """Report that the host could not send ``msg``: a failed attempt, retried later."""
        return self._carry_out(self._deliveries.send_failed(msg.mid, msg.lease_token))

    def on_replies(
        self, replies: Iterable[tuple[int, int, str | None]]
    ) -> list[ReplyOutcome | MsiloError]:
        """:meth:`on_reply` for each ``(mid, status_code, token)``, the storage steps of all
        carried out together (one batch delete for the 2xx answers). One result per reply, in
        order: its :class:`ReplyOutcome`, or the error that reply alone raised."""
        actions: list[Action | MsiloError] = []
        for mid, code, token in replies:
            try:
                actions.append(self._resolve(self._deliveries.reply(mid, code, token)))
            except MsiloError as exc:
                actions.append(exc)
        results: dict[int, bool | ReleaseResult | BaseException] = {}
        for op, flush in ((Op.DELETE, self._flush_deletes), (Op.RELEASE, self._flush_releases)):
            steps = [(i, a) for i, a in enumerate(actions) if isinstance(a, Action) and a.op is op]
            if steps:
                results.update(
                    zip([i for i, _ in steps], flush([a for _, a in steps]), strict=True)
                )
        out: list[ReplyOutcome | MsiloError] = []
        for i, action in enumerate(actions):
            result = results.get(i)
            if isinstance(action, MsiloError):
                out.append(action)
            elif isinstance(result, MsiloError):
                out.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                out.append(self._settle(action, result))
        return out

    def _carry_out(self, action: Action) -> ReplyOutcome:
        action = self._resolve(action)
        result: bool | ReleaseResult | None = None
        if action.op is Op.DELETE:
            result = self._deletes.submit(action) if self._group else self.driver.delete(action.mid)
        elif action.op is Op.RELEASE:
            if self._group:
                result = self._releases.submit(action)
            else:
                result = self.driver.release(
                    action.mid,
                    action.token,
                    to_offline=action.reminder,
                    max_attempts=self.policy.max_attempts,
                )
        return self._settle(action, result)

    def _resolve(self, action: Action) -> Action:
        """A LOOKUP action decided on the stored row; any other action as it is."""
        if action.op is Op.LOOKUP:
            return self._deliveries.on_row(action, self.driver.get(action.mid))
        return action

    def _settle(self, action: Action, result: bool | ReleaseResult | None) -> ReplyOutcome:
        settled = settle(action, result)
        self._count(*settled.counters)
        return settled.outcome

    # ---- batch flushes (group commit, store_many, on_replies)

    def _flush_inserts(
        self, items: Sequence[tuple[NewMessage, int]]
    ) -> list[int | BaseException | None]:
        """Insert ``items`` (row, quota): one driver batch per distinct quota."""
        self._observe_batch("store", len(items))
        quotas = list(dict.fromkeys(quota for _, quota in items))
        if len(quotas) == 1:  # the usual case: the whole batch at once
            return self._insert_batch([row for row, _ in items], quotas[0])
        results: list[int | BaseException | None] = [None] * len(items)
        for quota in quotas:
            where = [i for i, (_, q) in enumerate(items) if q == quota]
            got = self._insert_batch([items[i][0] for i in where], quota)
            for i, mid in zip(where, got, strict=True):
                results[i] = mid
        return results

    def _insert_batch(self, rows: list[NewMessage], quota: int) -> list[int | BaseException | None]:
        """One driver batch: each row's id, None (quota) or own error."""
        driver = self.driver
        return _batch(
            rows, lambda row: driver.insert(row, quota), lambda: insert_many(driver, rows, quota)
        )

    def _started(self) -> float:
        """When an observed call starts: 0.0 without metrics (then nothing is measured)."""
        return 0.0 if self.metrics is None else time.perf_counter()

    def _observe(self, operation: str, start: float) -> None:
        """Report the latency of ``operation``, begun at ``start`` (from :meth:`_started`)."""
        metrics = self.metrics
        if metrics is not None and start:
            metrics.latency(operation, time.perf_counter() - start)

    def _observe_batch(self, kind: str, size: int) -> None:
        if self.metrics is not None and size:
            self.metrics.batch(kind, size)

    def _flush_deletes(self, actions: Sequence[Action]) -> list[bool | BaseException]:
        self._observe_batch("ack", len(actions))
        driver = self.driver
        mids = [a.mid for a in actions]
        return _batch(mids, driver.delete, lambda: delete_many(driver, mids))

    def _flush_releases(self, actions: Sequence[Action]) -> list[ReleaseResult | BaseException]:
        self._observe_batch("release", len(actions))
        driver, attempts = self.driver, self.policy.max_attempts
        releases = [(a.mid, a.token, a.reminder) for a in actions]

        def one(item: Release) -> ReleaseResult:
            return driver.release(item[0], item[1], to_offline=item[2], max_attempts=attempts)

        return _batch(releases, one, lambda: release_many(driver, releases, attempts))

    # ---- timers

    def tick(self, now: float | None = None) -> list[OutgoingMessage]:
        """Run what is due: the expiry purge and the reminder sweep; return due reminders."""
        at = self._clock() if now is None else now
        second = int(at)
        purge, remind = self._schedule.due(at, self.policy)
        self._deliveries.tick(second)
        if purge:
            purged = self.driver.delete_expired(second)
            if purged:
                log.info("purged %d expired messages", purged)
        if not remind:
            return []
        token = uuid.uuid4().hex
        lease_until = second + self.policy.lease_seconds
        rows = self.driver.claim_due_reminders(second, lease_until, token)
        return self._outgoing(
            rows,
            MessageKind.REMINDER,
            token,
            lease_until,
            lambda row: reminder_message(row, self.policy, token),
        )

    def _timer_step(self) -> list[OutgoingMessage]:
        """One step of a timer loop: :meth:`tick`, a storage error logged (the loop goes on,
        so a database restart does not stop the timers)."""
        try:
            return self.tick()
        except MsiloError:
            log.exception("timer tick failed")
            return []

    def _timer_pause(self, poll: float) -> float:
        """How long a timer loop sleeps after a step: until the next timer, at most ``poll``."""
        return self._schedule.pause(self._clock(), self.policy, poll)

    def _report_send_failure(self, msg: OutgoingMessage, exc: Exception) -> None:
        log.error("sending message %s failed", msg.mid, exc_info=exc)
        try:
            self.send_failed(msg)
        except MsiloError:
            log.exception("reporting the failed send of message %s failed", msg.mid)

    def run_forever(
        self, send: Sender, stop: threading.Event | None = None, *, poll: float = 1.0
    ) -> None:
        """Run the timers until ``stop`` is set, handing due reminders to ``send``.

        A ``send`` that raises counts as a failed delivery; a storage error is logged and the
        loop goes on. The loop sleeps until the next timer is due, at most ``poll`` seconds.
        """
        stop = stop if stop is not None else threading.Event()
        while not stop.is_set():
            for msg in self._timer_step():
                try:
                    send(msg)
                except Exception as exc:
                    self._report_send_failure(msg, exc)
            stop.wait(self._timer_pause(poll))

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
        """One stored message by id (None for an unknown id; ``InvalidRequest`` if no int)."""
        return self.driver.get(mid) if check_mid(mid) else None

    def delete(self, mid: int) -> bool:
        """Delete one stored message (False for an unknown id; ``InvalidRequest`` if no int)."""
        return self.driver.delete(mid) if check_mid(mid) else False

    def purge(self, aor: str) -> int:
        """Delete every message of ``aor``."""
        return self.driver.purge(*split_owner_uri(aor))

    def totals(self) -> StoreTotals | None:
        """The whole store's unexpired messages and live leases now, for metrics (None: the
        driver cannot count them). One query over the store: ask seldom, e.g. per scrape."""
        return totals(self.driver, self._now())

    def purge_expired(self, now: float | None = None) -> int:
        """Delete every expired message now."""
        return self.driver.delete_expired(int(self._clock() if now is None else now))


def _batch(
    items: Sequence[T], one: Callable[[T], R], many: Callable[[], Sequence[R | MsiloError]]
) -> list[R | BaseException]:
    """One driver batch step over ``items``: each item's answer or own error, every item the
    error of a batch that fails as a whole. A batch of one takes the driver's single step
    (what its batch step does with one item, without the batch's frame)."""
    try:
        if len(items) == 1:
            return [one(items[0])]
        return list(many())
    except MsiloError as exc:
        return [exc] * len(items)


def flushers_for(settings: MsiloSettings) -> int:
    """Batches of one kind flushed at once: ``group_commit_flushers``, by default (0) one.
    Measured with 64 producers (``msilo bench --concurrency``), one flusher and its larger
    batches beat several smaller ones in flight on every backend: a store's Python work, not
    the database's round trips, is what a busy process runs out of."""
    return min(settings.group_commit_flushers or 1, settings.db_pool_size)


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
