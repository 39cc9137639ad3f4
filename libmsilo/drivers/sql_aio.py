"""The SQL driver on psycopg's ``AsyncConnection`` (PostgreSQL) for asyncio hosts.

It is :class:`~.sql.SqlDriver` itself, the same statements (:mod:`.sql_ops`), transactions,
retries and error mapping, with its connection stack replaced by :class:`AsyncConnectionStack`:
each step runs on the event loop through :mod:`.aio_bridge` and awaits psycopg's asyncio
connection wherever the synchronous driver would block. Each awaited call is bounded by
:func:`.sql_pool.step_bound` (the synchronous driver's watchdog bound): one that outlives it
leaves its connection, which is dropped, and fails with ``StorageUnavailable``. Schema work
(creating, reflecting, migrating the table through SQLAlchemy) is rare and runs in a worker
thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

from sqlalchemy.engine import Dialect

from ..errors import SettingsError, StorageError, StorageUnavailable
from ..records import DriverOptions, StoreLayout
from .aio import BridgedDriver
from .aio_bridge import AsyncFace, await_, in_bridge, sleep
from .sql import SqlDriver, _connect_args, sql_url
from .sql_ops import SqlOps
from .sql_pool import alive, step_bound, storage_error

__all__ = ["AsyncConnectionStack", "open_postgres_async"]

log = logging.getLogger("libmsilo")
T = TypeVar("T")


class AsyncPooledConnection:
    """One asyncio connection in :class:`~.sql_pool.PooledConnection`'s shape: ``dbapi`` and
    ``cursor`` are blocking faces of the connection and of its reusable cursor."""

    __slots__ = ("bound", "cursor", "dbapi", "fd", "last_used", "raw", "timed_out")

    def __init__(self, raw: Any, bound: float) -> None:
        self.raw = raw
        self.bound = bound
        self.timed_out = False
        self.dbapi: Any = AsyncFace(raw, self._wait)
        self.cursor: Any = AsyncFace(raw.cursor(), self._wait)
        self.fd: int | None = raw.fileno()
        self.last_used = time.monotonic()

    def _wait(self, awaitable: Awaitable[T]) -> T:
        """``awaitable`` awaited within the step bound; past it the connection is marked
        timed out (its state is unknown: it is dropped) and ``TimeoutError`` raised."""

        async def within() -> T:
            async with asyncio.timeout(self.bound or None):
                return await awaitable

        try:
            return await_(within())
        except TimeoutError:
            self.timed_out = True
            raise

    @property
    def usable(self) -> bool:
        """False once psycopg knows the connection is closed or broken."""
        return not (self.raw.closed or self.raw.broken)


class AsyncConnectionStack:
    """:class:`~.sql_pool.ConnectionStack` for asyncio connections, used from bridged steps:
    idle connections most recently used first, at most ``size`` open at once; a caller finding
    all in use waits at most ``wait`` seconds on the loop, then gets ``StorageUnavailable``.
    An idle connection is checked as the synchronous stack checks its own (:func:`.alive`):
    one the server closed (its socket readable) is replaced, one idle longer than
    ``ping_after`` seconds is pinged first."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        dialect: Dialect,
        *,
        bound: float,
        size: int,
        wait: float,
        ping_after: float = 10.0,
    ) -> None:
        self._connect = connect
        self._dialect = dialect
        self._bound = bound
        self._size = size
        self._wait = wait
        self._ping_after = ping_after
        self._slots: asyncio.Semaphore | None = None
        self._taken = 0  # slots taken
        self._idle: list[AsyncPooledConnection] = []
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def _take(self) -> None:
        """Begin a checkout: take a pool slot, waiting on the loop at most ``wait`` seconds."""
        if self._closed:
            raise StorageError("the SQL driver is closed")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._size)
        try:
            await_(asyncio.wait_for(self._slots.acquire(), self._wait))
        except TimeoutError:
            raise StorageUnavailable(
                f"database unavailable: all {self._size} connections of the pool stayed in use "
                f"for {self._wait:.1f} s"
            ) from None
        self._taken += 1

    @contextmanager
    def reserved(self) -> Iterator[None]:
        """Hold a place of the pool for a connection opened elsewhere (the schema work, in a
        worker thread), as :meth:`.ConnectionStack.reserved` does."""
        self._take()
        try:
            while self._idle and len(self._idle) + self._taken > self._size:
                self._close(self._idle.pop())
            yield
        finally:
            self._give_back()

    def checkout(self) -> AsyncPooledConnection:
        """A usable connection: an idle one, or a new one."""
        self._take()
        try:
            while self._idle:
                conn = self._idle.pop()
                ping = time.monotonic() - conn.last_used > self._ping_after
                if conn.usable and alive(conn, self._dialect, ping):
                    return conn
                self._close(conn)
                if conn.timed_out:  # the ping got no answer: the server is out of reach
                    self.flush()
                    raise StorageUnavailable(
                        f"database unavailable: no answer to a ping within {conn.bound:.1f} s"
                    )
                log.info("dropping a SQL connection the server closed")
            try:
                raw = await_(self._connect())
            except Exception as exc:
                raise storage_error(exc, self._dialect, None, connecting=True) from exc
            return AsyncPooledConnection(raw, self._bound)
        except BaseException:
            self._give_back()
            raise

    def checkin(self, conn: AsyncPooledConnection) -> None:
        """Give back a connection that is idle (no transaction open)."""
        conn.last_used = time.monotonic()
        if self._closed:
            self._close(conn)
        else:
            self._idle.append(conn)
        self._give_back()

    def discard(self, conn: AsyncPooledConnection, *, lost: bool) -> None:
        """Close a connection that failed; ``lost`` closes the idle ones too."""
        self._close(conn)
        if lost:
            self.flush()
        self._give_back()

    def flush(self) -> None:
        """Close every idle connection."""
        while self._idle:
            self._close(self._idle.pop())

    def close(self) -> None:
        """Close the idle connections; those in use are closed when given back."""
        self._closed = True
        self.flush()

    def _give_back(self) -> None:
        if self._slots is not None:
            self._taken -= 1
            self._slots.release()

    @staticmethod
    def _close(conn: AsyncPooledConnection) -> None:
        with contextlib.suppress(Exception):  # a broken connection may fail to close
            await_(conn.raw.close())


class AsyncSqlDriver(SqlDriver):
    """:class:`~.sql.SqlDriver` whose steps run on asyncio connections (see the module)."""

    _sleep = staticmethod(sleep)

    def _ready(self) -> SqlOps:
        if in_bridge() and (self._ops is None or self._limits is None):
            return self._in_thread(self._prepare)  # reflection: SQLAlchemy, blocking
        return super()._ready()

    def _schema_place(self) -> AbstractContextManager[None]:
        if isinstance(self._pool, AsyncConnectionStack):
            return contextlib.nullcontext()  # taken on the loop by _in_thread
        return super()._schema_place()  # opening: the blocking stack is still in place

    def create_schema(self) -> None:
        self._in_thread(super().create_schema)

    def drop_schema(self) -> None:
        self._in_thread(super().drop_schema)

    def migrate(self) -> None:
        self._in_thread(super().migrate)

    def schema_version(self) -> int | None:
        return self._in_thread(super().schema_version)

    def _in_thread(self, fn: Callable[[], T]) -> T:
        """``fn()`` in a worker thread when called on the loop (SQLAlchemy's schema work),
        holding a place of the pool for the connection it opens."""
        if not in_bridge():
            return fn()
        with self._pool.reserved():
            return await_(asyncio.to_thread(fn))


def _open_postgres(url: str, layout: StoreLayout, options: DriverOptions) -> AsyncSqlDriver:
    """The driver, its statements compiled on a first (blocking) connection that initializes
    the dialect; then its connection stack is the asyncio one."""
    sa_url = sql_url(url)
    if sa_url.get_backend_name() != "postgresql" or sa_url.get_driver_name() != "psycopg":
        raise SettingsError(f"db_url: no native asyncio driver for {sa_url.drivername!r}")
    import psycopg

    driver = AsyncSqlDriver(sa_url, layout, options)
    try:
        driver._compile()
    except BaseException:
        driver.close()
        raise
    blocking, dialect = driver._pool, driver._dialect
    cargs, cparams = dialect.create_connect_args(sa_url)
    params = {**cparams, **_connect_args(sa_url, options.timeout, True), "autocommit": True}

    async def connect() -> Any:
        return await psycopg.AsyncConnection.connect(*cargs, **params)

    driver._pool = AsyncConnectionStack(  # type: ignore[assignment]
        connect,
        dialect,
        bound=step_bound(options.timeout),
        size=options.pool_size,
        wait=options.timeout,
    )
    blocking.close()
    return driver


async def open_postgres_async(
    url: str, layout: StoreLayout, options: DriverOptions
) -> BridgedDriver:
    """The PostgreSQL driver on psycopg's ``AsyncConnection`` (``postgresql[+psycopg]`` URLs)."""
    return BridgedDriver(await asyncio.to_thread(_open_postgres, url, layout, options))
