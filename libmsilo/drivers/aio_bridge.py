"""Run the drivers' synchronous step code on native asyncio clients, without a thread.

:func:`run_bridged` runs a plain function in a greenlet on the event loop's thread; whenever that
function reaches an I/O call of an asyncio client (wrapped in :class:`AsyncFace`, which looks
like the blocking client the code was written for), :func:`await_` hands the awaitable to the
coroutine that spawned the greenlet, which awaits it on the loop and switches back with the
answer. So one body of driver logic (statements, scripts, retries, error translation) serves
both the blocking clients (``Silo``) and the asyncio ones (``AsyncSilo``), and the event loop
serves other tasks while a step waits on the network.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from greenlet import getcurrent, greenlet

__all__ = ["AsyncFace", "BridgeLock", "await_", "in_bridge", "run_bridged", "sleep"]

T = TypeVar("T")


class _Bridged(greenlet):  # type: ignore[misc]
    """A greenlet running driver code for :func:`run_bridged`."""


def in_bridge() -> bool:
    """Whether the caller runs inside :func:`run_bridged` (so it may :func:`await_`)."""
    return isinstance(getcurrent(), _Bridged)


def await_(awaitable: Awaitable[T]) -> T:
    """The result of ``awaitable``, awaited on the event loop by the :func:`run_bridged` that
    runs the caller (the caller's greenlet is suspended meanwhile)."""
    current = getcurrent()
    if not isinstance(current, _Bridged):
        raise RuntimeError("an asyncio client was used outside run_bridged()")
    return cast(T, current.parent.switch(awaitable))


async def run_bridged(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` run on this event loop; the awaitables it hands to
    :func:`await_` are awaited here, their results (or exceptions) sent back into it."""
    child = _Bridged(lambda: fn(*args, **kwargs), getcurrent())
    request = child.switch()
    while not child.dead:
        try:
            answer = await request
        except BaseException as exc:  # delivered into the driver code, which may handle it
            request = child.throw(exc)
        else:
            request = child.switch(answer)
    return cast(T, request)


def sleep(seconds: float) -> None:
    """``time.sleep`` for driver code: on the loop (``asyncio.sleep``) inside the bridge."""
    if in_bridge():
        await_(asyncio.sleep(seconds))
    else:
        time.sleep(seconds)


class BridgeLock:
    """A mutex for driver state shared by bridged calls (tasks of one loop) and threads: inside
    the bridge it waits on the loop, so a task holding it across I/O never blocks the thread."""

    def __init__(self) -> None:
        self._thread_lock = threading.Lock()
        self._task_lock: asyncio.Lock | None = None

    def __enter__(self) -> BridgeLock:
        if in_bridge():
            if self._task_lock is None:
                self._task_lock = asyncio.Lock()
            await_(self._task_lock.acquire())
        else:
            self._thread_lock.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if in_bridge():
            assert self._task_lock is not None
            self._task_lock.release()
        else:
            self._thread_lock.release()


Waiter = Callable[[Awaitable[Any]], Any]


class AsyncFace:
    """The blocking face of an asyncio object: a method whose result is awaitable is awaited
    through ``wait`` (:func:`await_` by default, e.g. bounded in time); results that are asyncio
    objects themselves (context managers, async iterators: a cursor, a pipeline) get a face of
    their own, and so do its items (a database's collections). ``close`` calls ``aclose``
    where the object has it."""

    __slots__ = ("_target", "_wait")

    def __init__(self, target: Any, wait: Waiter = await_) -> None:
        self._target = target
        self._wait = wait

    @property
    def target(self) -> Any:
        """The asyncio object behind this face."""
        return self._target

    def __getattr__(self, name: str) -> Any:
        if name == "close" and hasattr(self._target, "aclose"):
            name = "aclose"
        value = getattr(self._target, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            result = value(*args, **kwargs)
            if result is self._target:  # a chained call (a pipeline queuing a command)
                return self
            return self._face(result)

        return call

    def _face(self, result: Any) -> Any:
        """``result`` awaited when awaitable, then given a face when it is an asyncio object."""
        if inspect.isawaitable(result):
            result = self._wait(result)
        if hasattr(result, "__aenter__") or hasattr(result, "__anext__"):
            return AsyncFace(result, self._wait)
        return result

    def __getitem__(self, key: Any) -> AsyncFace:
        return AsyncFace(self._target[key], self._wait)

    def __enter__(self) -> Any:
        return self._face(self._target.__aenter__())

    def __exit__(self, *exc_info: object) -> Any:
        return self._wait(self._target.__aexit__(*exc_info))

    def __iter__(self) -> AsyncFace:
        return self

    def __next__(self) -> Any:
        try:
            return self._wait(self._target.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None
