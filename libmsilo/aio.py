"""``AsyncSilo``: the ``Silo`` API for asyncio hosts.

Each call runs the ``Silo``'s own method, so every decision is the same code; only where it runs
differs, chosen by the driver (:mod:`libmsilo.drivers.aio`):

- on a native asyncio driver (PostgreSQL on psycopg's ``AsyncConnection``, Redis on
  ``redis.asyncio``; the default for those URLs) the method runs on the event loop and awaits
  the database, so nothing blocks the loop and no thread is used;
- on any other driver it runs in a worker thread (``asyncio.to_thread``) and the event loop
  keeps serving SIP traffic meanwhile.

Either way concurrent tasks' stores and acks coalesce in this loop's group commit
(:class:`~libmsilo.group_commit.AsyncGroupCommit`): each batch is one call of the ``Silo``'s
batch step, made where the driver runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

from .core import Action, Op, Policy, StoreResult
from .drivers.aio import AsyncDriver, BridgedDriver, ThreadedDriver, open_async_driver
from .drivers.base import Driver
from .errors import MsiloError
from .group_commit import AsyncGroupCommit
from .message import OutgoingMessage, SipRequest
from .records import ReleaseResult, StoredMessage, StoreTotals
from .settings import MsiloSettings
from .silo import Clock, ReplyOutcome, Silo, Stats, flushers_for

__all__ = ["AsyncSilo", "AsyncTimerTask"]

AsyncSender = Callable[[OutgoingMessage], Awaitable[None]]
T = TypeVar("T")


class AsyncTimerTask:
    """The timer loop of :meth:`AsyncSilo.start`: an asyncio task and its stop switch."""

    def __init__(self, task: asyncio.Task[None], stop: asyncio.Event) -> None:
        self.task = task
        self._stop = stop

    def done(self) -> bool:
        """Whether the loop has ended."""
        return self.task.done()

    async def stop(self, timeout: float | None = 10.0) -> None:
        """Ask the loop to end and wait for it (cancelling it after ``timeout`` seconds)."""
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except TimeoutError:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


class AsyncSilo:
    """msilo for asyncio: every :class:`Silo` operation as a coroutine."""

    def __init__(self, silo: Silo, driver: AsyncDriver | None = None) -> None:
        """Wrap ``silo``; ``driver`` is the asyncio face of ``silo.driver`` (default: it in
        worker threads, :class:`~libmsilo.drivers.aio.ThreadedDriver`)."""
        if driver is None:
            driver = ThreadedDriver(silo.driver)
        elif driver.sync is not silo.driver:
            raise ValueError("driver must be the asyncio face of silo.driver")
        self.silo = silo
        self._driver = driver
        if isinstance(driver, BridgedDriver):
            # The Silo's own group commit makes threads wait for each other: on the loop's one
            # thread that would block it. This loop's group commit (below) serves instead.
            silo._group = False
        run = driver.run
        # Group commit among this loop's tasks: each batch is one call where the driver runs
        # (a worker thread, or the loop for a native driver).
        settings = silo.settings
        self._group = settings.group_commit
        size, flushers = settings.group_commit_size, flushers_for(settings)
        commit = partial(AsyncGroupCommit, max_batch=size, flushers=flushers, run=run)
        self._inserts = commit(silo._flush_inserts)
        self._deletes = commit(silo._flush_deletes)
        self._releases = commit(silo._flush_releases)

    @classmethod
    async def from_settings(
        cls,
        settings: MsiloSettings | None = None,
        *,
        clock: Clock = time.time,
        create_schema: bool = True,
        native: bool | None = None,
    ) -> AsyncSilo:
        """Open the store ``settings.db_url`` names without blocking the event loop: on its
        native asyncio driver where there is one (``native=False`` opts out: worker threads),
        else the synchronous driver in worker threads."""
        settings = settings if settings is not None else MsiloSettings()
        driver = await open_async_driver(
            settings.db_url, settings.layout(), settings.driver_options(), native=native
        )
        try:
            if create_schema:
                await driver.create_schema()
            silo = Silo(driver.sync, settings, clock=clock)
        except BaseException:
            await driver.close()
            raise
        return cls(silo, driver)

    async def _run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` where the driver runs its steps (the loop or a thread)."""
        return await self._driver.run(fn, *args, **kwargs)

    @property
    def native(self) -> bool:
        """Whether the calls run on the event loop (a native asyncio driver)."""
        return isinstance(self._driver, BridgedDriver)

    @property
    def async_driver(self) -> AsyncDriver:
        """The asyncio face of the driver."""
        return self._driver

    @property
    def settings(self) -> MsiloSettings:
        """The settings of the wrapped ``Silo``."""
        return self.silo.settings

    @property
    def stats(self) -> Stats:
        """A snapshot of the counters (no I/O)."""
        return self.silo.stats

    @property
    def leased(self) -> int:
        """:attr:`Silo.leased` (no I/O)."""
        return self.silo.leased

    @property
    def driver(self) -> Driver:
        """The driver of the wrapped ``Silo``."""
        return self.silo.driver

    @property
    def policy(self) -> Policy:
        """The policy of the wrapped ``Silo``."""
        return self.silo.policy

    async def store(
        self,
        request: SipRequest,
        owner: str | None = None,
        *,
        notify: bool = True,
        send_at: datetime | int | float | str | None = None,
        expire_time: int | None = None,
        max_messages: int | None = None,
    ) -> StoreResult:
        """:meth:`Silo.store`; with group commit, concurrent tasks' rows share one batch."""
        if not self._group:
            return await self._run(
                self.silo.store,
                request,
                owner,
                notify=notify,
                send_at=send_at,
                expire_time=expire_time,
                max_messages=max_messages,
            )
        silo = self.silo
        start = silo._started()
        now = silo._now()
        row, quota = silo._row(request, owner, now, send_at, expire_time, max_messages)
        mid = await self._inserts.submit((row, quota))
        silo._observe("store", start)
        return silo._stored(request, row, mid, now, notify)

    async def dump(
        self,
        request: SipRequest | None = None,
        owner: str | None = None,
        *,
        max_messages: int = 0,
        contact: str | None = None,
    ) -> list[OutgoingMessage]:
        """:meth:`Silo.dump`."""
        return await self._run(
            self.silo.dump, request, owner, max_messages=max_messages, contact=contact
        )

    async def on_reply(
        self, mid: int, status_code: int, *, token: str | None = None
    ) -> ReplyOutcome:
        """:meth:`Silo.on_reply`."""
        if not self._group:
            return await self._run(self.silo.on_reply, mid, status_code, token=token)
        start = self.silo._started()
        outcome = await self._carry_out(self.silo._deliveries.reply(mid, status_code, token))
        self.silo._observe("ack", start)
        return outcome

    async def store_many(
        self,
        requests: Iterable[SipRequest],
        *,
        notify: bool = True,
        expire_time: int | None = None,
        max_messages: int | None = None,
    ) -> list[StoreResult | MsiloError]:
        """:meth:`Silo.store_many`."""
        return await self._run(
            self.silo.store_many,
            list(requests),
            notify=notify,
            expire_time=expire_time,
            max_messages=max_messages,
        )

    async def on_replies(
        self, replies: Iterable[tuple[int, int, str | None]]
    ) -> list[ReplyOutcome | MsiloError]:
        """:meth:`Silo.on_replies`."""
        return await self._run(self.silo.on_replies, list(replies))

    async def send_failed(self, msg: OutgoingMessage) -> ReplyOutcome:
        """:meth:`Silo.send_failed`."""
        if not self._group:
            return await self._run(self.silo.send_failed, msg)
        return await self._carry_out(self.silo._deliveries.send_failed(msg.mid, msg.lease_token))

    async def _carry_out(self, action: Action) -> ReplyOutcome:
        """:meth:`Silo._carry_out` with the delete / release joining this loop's batches."""
        if action.op is Op.LOOKUP:
            action = await self._run(self.silo._resolve, action)
        result: bool | ReleaseResult | None = None
        if action.op is Op.DELETE:
            result = await self._deletes.submit(action)
        elif action.op is Op.RELEASE:
            result = await self._releases.submit(action)
        return self.silo._settle(action, result)

    async def tick(self, now: float | None = None) -> list[OutgoingMessage]:
        """:meth:`Silo.tick`."""
        return await self._run(self.silo.tick, now)

    async def run_forever(
        self, send: AsyncSender, stop: asyncio.Event | None = None, *, poll: float = 1.0
    ) -> None:
        """:meth:`Silo.run_forever` on the event loop: runs until ``stop`` is set (or the task
        is cancelled), awaiting ``send`` for each due reminder; the same steps and pauses."""
        stop = stop if stop is not None else asyncio.Event()
        while not stop.is_set():
            for msg in await self._run(self.silo._timer_step):
                try:
                    await send(msg)
                except Exception as exc:
                    await self._run(self.silo._report_send_failure, msg, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.silo._timer_pause(poll))

    def start(self, send: AsyncSender, *, poll: float = 1.0) -> AsyncTimerTask:
        """Run the timers in a task of the running loop; stop it with ``await .stop()``."""
        stop = asyncio.Event()
        return AsyncTimerTask(asyncio.create_task(self.run_forever(send, stop, poll=poll)), stop)

    async def count(self, aor: str) -> int:
        """:meth:`Silo.count`."""
        return await self._run(self.silo.count, aor)

    async def list(self, aor: str, limit: int = 100) -> list[StoredMessage]:
        """:meth:`Silo.list`."""
        return await self._run(self.silo.list, aor, limit)

    async def get(self, mid: int) -> StoredMessage | None:
        """:meth:`Silo.get`."""
        return await self._run(self.silo.get, mid)

    async def delete(self, mid: int) -> bool:
        """:meth:`Silo.delete`."""
        return await self._run(self.silo.delete, mid)

    async def purge(self, aor: str) -> int:
        """:meth:`Silo.purge`."""
        return await self._run(self.silo.purge, aor)

    async def purge_expired(self, now: float | None = None) -> int:
        """:meth:`Silo.purge_expired`."""
        return await self._run(self.silo.purge_expired, now)

    async def totals(self) -> StoreTotals | None:
        """:meth:`Silo.totals`."""
        return await self._run(self.silo.totals)

    async def close(self) -> None:
        """Close the driver."""
        await self._run(self.silo.close)

    async def __aenter__(self) -> AsyncSilo:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
