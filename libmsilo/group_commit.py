"""Group commit: concurrent callers' storage steps coalesce into one batch per flush.

A caller hands its item to :meth:`GroupCommit.submit` and blocks until its own result is known.
When no flush is running, the caller flushes at once (a lone caller pays no added latency) and
takes along every item waiting then, up to ``max_batch``. Callers arriving while a flush runs
queue up; when it ends, one of them flushes the next batch. With ``max_wait`` > 0 a flusher whose
batch is not full first waits that long for more items.

The flush function gets the items and returns one result per item, in order: a value, or an
exception that item alone raised (the caller gets it raised). Should the flush itself raise, every
item of that batch gets that exception.

After ``fork()`` the child starts with an empty, idle :class:`GroupCommit`: the threads whose
items were queued or being flushed in the parent do not exist there.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

__all__ = ["AsyncGroupCommit", "GroupCommit"]

I = TypeVar("I")  # noqa: E741 - the item type
R = TypeVar("R")

_PENDING = object()


class _Slot(Generic[I]):
    """One queued item. A caller that waits sleeps on ``wake`` (a lock taken when it is made,
    for a caller that is no flusher) until the result is in or it is made a flusher
    (``leader``); only that caller is woken, not all. A flusher needs no lock."""

    __slots__ = ("item", "leader", "result", "wake")

    def __init__(self, item: I) -> None:
        self.item = item
        self.result: object = _PENDING
        self.leader = False
        self.wake: Any = None

    def sleep_ready(self) -> None:
        """Make ``wake`` a taken lock that the caller's next ``acquire`` waits on."""
        if self.wake is None:
            self.wake = _taken_lock()


def _taken_lock() -> Any:
    lock = threading.Lock()
    lock.acquire()
    return lock


class GroupCommit(Generic[I, R]):
    """Coalesces concurrent :meth:`submit` calls into batches for ``flush``; thread-safe.

    ``flushers`` batches may be flushed at once (1: one writer at a time, the best for a single
    writer such as SQLite; more overlap the round trips of a pooled network store). A flusher
    whose own item is done hands the flushing over to the oldest waiting caller."""

    def __init__(
        self,
        flush: Callable[[Sequence[I]], Sequence[R | BaseException]],
        *,
        max_batch: int = 64,
        max_wait: float = 0.0,
        flushers: int = 1,
    ) -> None:
        if max_batch < 1 or flushers < 1 or max_wait < 0:
            raise ValueError("max_batch and flushers must be >= 1, max_wait >= 0")
        self._flush = flush
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._flushers = flushers
        self._reset()
        self.batches = 0  # flushes done (statistics)
        self.items = 0  # items flushed
        _LIVE.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[_Slot[I]] = deque()
        self._running = 0  # callers acting as flushers

    def submit(self, item: I) -> R:
        """Queue ``item``, wait for its batch to be flushed; its result (or raise its error)."""
        slot = _Slot(item)
        batch: list[_Slot[I]] | None = None
        with self._lock:
            self._queue.append(slot)
            if self._running < self._flushers:
                self._running += 1
                slot.leader = True
                if not self._max_wait:  # flush at once: take the batch now
                    batch = self._take()
            else:
                slot.sleep_ready()
        while True:
            if batch is None:
                batch = self._next_batch(slot)
                if batch is None:
                    return self._outcome(slot)
            if self._run(batch, slot):
                return self._outcome(slot)
            batch = None

    def _next_batch(self, slot: _Slot[I]) -> list[_Slot[I]] | None:
        """Wait until ``slot`` has its result (None) or its caller is to flush: the batch."""
        while True:
            if not slot.leader:
                slot.wake.acquire()  # until its result is in, or it is made a flusher
                if not slot.leader:
                    return None
            short = len(self._queue) < self._max_batch
            if self._max_wait > 0 and short and slot.result is _PENDING:
                time.sleep(self._max_wait)  # let a short batch fill up
            with self._lock:
                if slot.result is not _PENDING:
                    self._hand_over()
                    return None
                if not self._queue:
                    # Our item is in another flusher's batch: wait for it like the others.
                    slot.leader = False
                    slot.sleep_ready()
                    self._running -= 1
                    continue
                # The next batch holds our item unless more than a batch was queued before
                # it; then the loop flushes (or is handed) the one that does.
                return self._take()

    def _take(self) -> list[_Slot[I]]:
        """The oldest queued items, at most a batch (called holding the lock)."""
        queue = self._queue
        if len(queue) == 1:
            return [queue.popleft()]
        return [queue.popleft() for _ in range(min(self._max_batch, len(queue)))]

    def _hand_over(self) -> None:
        """A flusher is done (called holding the lock): the oldest waiting caller that is not
        a flusher yet becomes one, else there is one flusher fewer."""
        for waiting in self._queue:
            if not waiting.leader:
                waiting.leader = True
                waiting.wake.release()
                return
        self._running -= 1

    def _run(self, batch: list[_Slot[I]], flusher: _Slot[I]) -> bool:
        """Flush ``batch`` (without the lock), fill in its results and wake their callers;
        whether the ``flusher``'s own result is in (then the flushing is handed over)."""
        results: Sequence[object]
        try:
            results = self._flush([slot.item for slot in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"flush returned {len(results)} results for {len(batch)}")
        except BaseException as exc:
            results = [exc] * len(batch)
        with self._lock:
            for slot, result in zip(batch, results, strict=True):
                slot.result = result
                if not slot.leader:  # a flusher is awake already
                    slot.wake.release()
            self.batches += 1
            self.items += len(batch)
            if flusher.result is _PENDING:
                return False
            self._hand_over()
            return True

    @staticmethod
    def _outcome(slot: _Slot[I]) -> R:
        result = slot.result
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[return-value]


_LIVE: weakref.WeakSet[GroupCommit[Any, Any]] = weakref.WeakSet()


def _forget_parent_threads() -> None:
    for commit in list(_LIVE):
        commit._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parent_threads)


class AsyncGroupCommit(Generic[I, R]):
    """The same for asyncio tasks of one event loop: :meth:`submit` awaits its item's result;
    each batch is flushed by ``run`` (default: in a worker thread, ``asyncio.to_thread``; a
    native asyncio driver's runner flushes on the loop), so many tasks' steps need one call per
    flush instead of one each. Not thread-safe: use it from its loop only."""

    def __init__(
        self,
        flush: Callable[[Sequence[I]], Sequence[R | BaseException]],
        *,
        max_batch: int = 64,
        flushers: int = 1,
        run: Callable[..., Awaitable[Any]] = asyncio.to_thread,
    ) -> None:
        if max_batch < 1 or flushers < 1:
            raise ValueError("max_batch and flushers must be >= 1")
        self._flush = flush
        self._run = run
        self._max_batch = max_batch
        self._flushers = flushers
        self._queue: deque[tuple[I, asyncio.Future[R]]] = deque()
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.items = 0

    async def submit(self, item: I) -> R:
        """Queue ``item`` and await its result (or its error, raised)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._running < self._flushers:
            self._running += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)  # keep a reference until it ends
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                count = min(self._max_batch, len(self._queue))
                batch = [self._queue.popleft() for _ in range(count)]
                results: Sequence[object]
                try:
                    results = await self._run(self._flush, [item for item, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"flush returned {len(results)} results for {count}")
                except Exception as exc:
                    results = [exc] * len(batch)
                self.batches += 1
                self.items += count
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():  # its caller was cancelled
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)  # type: ignore[arg-type]
        finally:
            self._running -= 1
