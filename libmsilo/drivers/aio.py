"""The asyncio driver contract, and the two ways a driver meets it.

:class:`AsyncDriver` has the methods of :class:`~libmsilo.drivers.base.Driver` (and the batch
steps of :mod:`.batch`) as coroutines, with the same values, answers and errors.

- :class:`BridgedDriver`: a driver whose step code runs on a native asyncio client
  (psycopg's ``AsyncConnection``, ``redis.asyncio``, pymongo's ``AsyncMongoClient``) on the
  event loop's own thread, through :mod:`.aio_bridge`; nothing blocks the loop.
  :func:`open_async_driver` opens one for ``postgresql``, ``redis``/``rediss`` and
  ``mongodb``/``mongodb+srv`` URLs.
- :class:`ThreadedDriver`: any synchronous driver, each call in a worker thread
  (``asyncio.to_thread``): SQLite, MariaDB, mongomock, Redis Cluster and third-party drivers.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from ..errors import MsiloError, SettingsError
from ..records import (
    DriverOptions,
    NewMessage,
    ReleaseResult,
    StoredMessage,
    StoreLayout,
    StoreTotals,
)
from . import batch, open_driver, plumbing, url_scheme
from .base import Driver

__all__ = [
    "AsyncDriver",
    "BridgedDriver",
    "ThreadedDriver",
    "has_native_driver",
    "open_async_driver",
]

T = TypeVar("T")

_POSTGRES = ("psycopg", ".sql_aio", "open_postgres_async")
_REDIS = ("redis.asyncio", ".redis", "open_redis_async")
_MONGO = ("pymongo", ".mongo", "open_mongo_async")
#: URL scheme -> (its asyncio client's module, the native driver's module, its opener).
_NATIVE_OPENERS = {
    "postgresql": _POSTGRES,
    "postgres": _POSTGRES,
    "redis": _REDIS,
    "rediss": _REDIS,
    "mongodb": _MONGO,
    "mongodb+srv": _MONGO,
}
#: URL schemes with a native asyncio driver.
NATIVE_SCHEMES = frozenset(_NATIVE_OPENERS)


@runtime_checkable
class AsyncDriver(Protocol):
    """:class:`~libmsilo.drivers.base.Driver` for asyncio: every step awaited."""

    @property
    def sync(self) -> Driver:
        """The synchronous driver whose steps this one runs (on the loop or in a thread)."""

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` run where this driver runs its steps: code calling
        :attr:`sync` (e.g. a ``Silo`` method) runs that way without blocking the loop."""

    async def create_schema(self) -> None:
        """:meth:`Driver.create_schema`."""

    async def drop_schema(self) -> None:
        """:meth:`Driver.drop_schema`."""

    async def migrate(self) -> None:
        """:meth:`Driver.migrate`."""

    async def ping(self) -> None:
        """:meth:`Driver.ping`."""

    async def insert(self, msg: NewMessage, max_messages: int = 0) -> int | None:
        """:meth:`Driver.insert`."""

    async def insert_many(
        self, msgs: Sequence[NewMessage], max_messages: int = 0
    ) -> list[int | MsiloError | None]:
        """:func:`.batch.insert_many`."""

    async def claim(
        self, username: str, domain: str, now: int, lease_until: int, token: str, limit: int = 0
    ) -> list[StoredMessage]:
        """:meth:`Driver.claim`."""

    async def claim_due_reminders(
        self, now: int, lease_until: int, token: str, limit: int = 0
    ) -> list[StoredMessage]:
        """:meth:`Driver.claim_due_reminders`."""

    async def delete(self, mid: int) -> bool:
        """:meth:`Driver.delete`."""

    async def delete_many(self, mids: Sequence[int]) -> list[bool | MsiloError]:
        """:func:`.batch.delete_many`."""

    async def release(
        self, mid: int, token: str | None, *, to_offline: bool = False, max_attempts: int = 0
    ) -> ReleaseResult:
        """:meth:`Driver.release`."""

    async def release_many(
        self, releases: Sequence[batch.Release], max_attempts: int = 0
    ) -> list[ReleaseResult | MsiloError]:
        """:func:`.batch.release_many`."""

    async def count(self, username: str, domain: str, now: int) -> int:
        """:meth:`Driver.count`."""

    async def list(
        self, username: str, domain: str, now: int, limit: int = 0
    ) -> list[StoredMessage]:
        """:meth:`Driver.list`."""

    async def get(self, mid: int) -> StoredMessage | None:
        """:meth:`Driver.get`."""

    async def purge(self, username: str, domain: str) -> int:
        """:meth:`Driver.purge`."""

    async def delete_expired(self, now: int) -> int:
        """:meth:`Driver.delete_expired`."""

    async def totals(self, now: int) -> StoreTotals | None:
        """:func:`.plumbing.totals`: the optional store-wide counts (None: not counted)."""

    async def close(self) -> None:
        """:meth:`Driver.close`."""


class _Adapter:
    """An :class:`AsyncDriver` made of a synchronous driver and a way to run its calls."""

    def __init__(self, sync: Driver) -> None:
        self._sync = sync

    @property
    def sync(self) -> Driver:
        """The synchronous driver whose steps this one runs."""
        return self._sync

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` the way this adapter runs driver steps."""
        raise NotImplementedError

    async def create_schema(self) -> None:
        """:meth:`Driver.create_schema`."""
        await self.run(self._sync.create_schema)

    async def drop_schema(self) -> None:
        """:meth:`Driver.drop_schema`."""
        await self.run(self._sync.drop_schema)

    async def migrate(self) -> None:
        """:meth:`Driver.migrate`."""
        await self.run(self._sync.migrate)

    async def ping(self) -> None:
        """:meth:`Driver.ping`."""
        await self.run(self._sync.ping)

    async def insert(self, msg: NewMessage, max_messages: int = 0) -> int | None:
        """:meth:`Driver.insert`."""
        return await self.run(self._sync.insert, msg, max_messages)

    async def insert_many(
        self, msgs: Sequence[NewMessage], max_messages: int = 0
    ) -> list[int | MsiloError | None]:
        """:func:`.batch.insert_many`."""
        return list(await self.run(batch.insert_many, self._sync, msgs, max_messages))

    async def claim(
        self, username: str, domain: str, now: int, lease_until: int, token: str, limit: int = 0
    ) -> list[StoredMessage]:
        """:meth:`Driver.claim`."""
        return await self.run(self._sync.claim, username, domain, now, lease_until, token, limit)

    async def claim_due_reminders(
        self, now: int, lease_until: int, token: str, limit: int = 0
    ) -> list[StoredMessage]:
        """:meth:`Driver.claim_due_reminders`."""
        return await self.run(self._sync.claim_due_reminders, now, lease_until, token, limit)

    async def delete(self, mid: int) -> bool:
        """:meth:`Driver.delete`."""
        return await self.run(self._sync.delete, mid)

    async def delete_many(self, mids: Sequence[int]) -> list[bool | MsiloError]:
        """:func:`.batch.delete_many`."""
        return list(await self.run(batch.delete_many, self._sync, mids))

    async def release(
        self, mid: int, token: str | None, *, to_offline: bool = False, max_attempts: int = 0
    ) -> ReleaseResult:
        """:meth:`Driver.release`."""
        return await self.run(
            self._sync.release, mid, token, to_offline=to_offline, max_attempts=max_attempts
        )

    async def release_many(
        self, releases: Sequence[batch.Release], max_attempts: int = 0
    ) -> list[ReleaseResult | MsiloError]:
        """:func:`.batch.release_many`."""
        return list(await self.run(batch.release_many, self._sync, releases, max_attempts))

    async def count(self, username: str, domain: str, now: int) -> int:
        """:meth:`Driver.count`."""
        return await self.run(self._sync.count, username, domain, now)

    async def list(
        self, username: str, domain: str, now: int, limit: int = 0
    ) -> list[StoredMessage]:
        """:meth:`Driver.list`."""
        return await self.run(self._sync.list, username, domain, now, limit)

    async def get(self, mid: int) -> StoredMessage | None:
        """:meth:`Driver.get`."""
        return await self.run(self._sync.get, mid)

    async def purge(self, username: str, domain: str) -> int:
        """:meth:`Driver.purge`."""
        return await self.run(self._sync.purge, username, domain)

    async def delete_expired(self, now: int) -> int:
        """:meth:`Driver.delete_expired`."""
        return await self.run(self._sync.delete_expired, now)

    async def totals(self, now: int) -> StoreTotals | None:
        """:func:`.plumbing.totals`: the optional store-wide counts (None: not counted)."""
        return await self.run(plumbing.totals, self._sync, now)

    async def close(self) -> None:
        """:meth:`Driver.close`."""
        await self.run(self._sync.close)


class ThreadedDriver(_Adapter):
    """A synchronous driver for asyncio: each call runs in a worker thread."""

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a worker thread."""
        return await asyncio.to_thread(fn, *args, **kwargs)


class BridgedDriver(_Adapter):
    """A driver on a native asyncio client: its steps run on the event loop (see
    :mod:`.aio_bridge`); it must only be used from one event loop."""

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on this loop, its client's I/O awaited."""
        from .aio_bridge import run_bridged

        return await run_bridged(fn, *args, **kwargs)


def _has_async_pymongo() -> bool:
    """Whether the installed pymongo has a stable ``AsyncMongoClient`` (read from its metadata,
    without importing it on the caller's loop)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("pymongo").split(".")
        return (int(release[0]), int(release[1])) >= (4, 13)
    except (PackageNotFoundError, ValueError, IndexError):
        return False


def has_native_driver(url: str) -> bool:
    """Whether ``url`` names a backend with a native asyncio driver (and its client is
    installed)."""
    scheme = url_scheme(url)
    if scheme not in NATIVE_SCHEMES:
        return False
    dbapi = url.partition("://")[0].lower().partition("+")[2]
    if scheme.startswith("postgres") and dbapi not in ("", "psycopg"):
        return False  # e.g. postgresql+psycopg2: that client has no asyncio connection
    if scheme.startswith("mongodb") and not _has_async_pymongo():
        return False  # pymongo before AsyncMongoClient (4.13): the worker-thread driver
    return importlib.util.find_spec("greenlet") is not None


async def open_async_driver(
    url: str,
    layout: StoreLayout | None = None,
    options: DriverOptions | None = None,
    *,
    native: bool | None = None,
) -> AsyncDriver:
    """Open the driver ``url`` names for asyncio: the native one when there is one (unless
    ``native`` is False), else the synchronous one in worker threads. ``native=True`` for a
    backend without a native driver raises :class:`~libmsilo.errors.SettingsError`."""
    layout, options = layout or StoreLayout(), options or DriverOptions()
    if native is None:
        native = has_native_driver(url)
    elif native and not has_native_driver(url):
        raise SettingsError(f"db_url: no native asyncio driver for {url_scheme(url)!r} URLs")
    if not native:
        return ThreadedDriver(await asyncio.to_thread(open_driver, url, layout, options))
    # Importing a client library takes a while: in a worker thread, not on the loop.
    client, module, name = _NATIVE_OPENERS[url_scheme(url)]
    modules = await asyncio.to_thread(
        lambda: [importlib.import_module(n, __package__) for n in (client, module)]
    )
    opener: Callable[[str, StoreLayout, DriverOptions], Awaitable[BridgedDriver]]
    opener = getattr(modules[1], name)
    return await opener(url, layout, options)
