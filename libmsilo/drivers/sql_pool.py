"""DBAPI connections for the SQL driver, and the mapping of their errors onto libmsilo's.

SQLAlchemy opens each connection (dialect setup, connect events); the driver then keeps it in a
lock-free stack and runs its pre-compiled SQL on the bare DBAPI cursor. A pool checkout with
``pool_pre_ping`` costs a round trip per call, which alone is 20-30 % of a loopback statement, so
liveness is checked the cheap way instead: a connection whose socket has become readable while
idle was closed by the server (restart, ``pg_terminate_backend``, ``KILL``, ``wait_timeout``) and
is replaced; a connection idle for longer than ``ping_after`` seconds is pinged first.

Every step on a network connection is bounded on the client side as well (:class:`_Watchdog`):
the server's own bounds (``statement_timeout``, ``max_statement_time``) do not help when the
server hangs or the network stops moving bytes, and psycopg has no read timeout at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

import sqlalchemy as sa
from sqlalchemy.engine import Dialect, Engine

from ..errors import StorageError, StorageUnavailable

__all__ = [
    "ConnectionStack",
    "Pooled",
    "PooledConnection",
    "alive",
    "is_retryable",
    "step_bound",
    "storage_error",
]

log = logging.getLogger("libmsilo")

# PostgreSQL SQLSTATEs and MySQL error numbers of failures a retry of the whole step resolves.
_PG_RETRY = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
_MYSQL_RETRY = frozenset({1213, 1020})  # deadlock; "record has changed since last read"


def step_bound(timeout: float) -> float:
    """The client-side bound of one storage step for ``db_timeout`` = ``timeout``: longer than
    the server's own per-statement bounds (``timeout``; MariaDB ``timeout + 1``), so those report
    first when the server is merely slow, and still about ``timeout``."""
    return timeout + max(1.5, timeout / 2)


@runtime_checkable
class Pooled(Protocol):
    """What the driver uses of a pooled connection: :class:`PooledConnection`, or the asyncio
    one of :mod:`.sql_aio`."""

    bound: float
    dbapi: Any
    cursor: Any
    fd: int | None

    @property
    def timed_out(self) -> bool:
        """True once the step bound cut the connection."""


class PooledConnection:
    """One DBAPI connection with its reusable cursor.

    ``bound`` is the step bound the watchdog enforces (0: not watched, e.g. SQLite);
    ``deadline`` is 0 while idle, the monotonic deadline of the step running on it, or -1 once
    the watchdog shut its socket down."""

    __slots__ = ("bound", "cursor", "dbapi", "deadline", "fairy", "fd", "last_used")

    def __init__(self, fairy: Any, bound: float = 0.0) -> None:
        self.fairy = fairy  # SQLAlchemy's proxy: closes / invalidates the real connection
        self.dbapi: Any = fairy.dbapi_connection
        self.cursor: Any = self.dbapi.cursor()
        self.fd = _fileno(self.dbapi)
        self.bound = bound if self.fd is not None else 0.0
        self.deadline = 0.0
        self.last_used = time.monotonic()

    @property
    def timed_out(self) -> bool:
        """True once the watchdog cut this connection (its step outlived ``bound``)."""
        return self.deadline < 0


def _fileno(dbapi: Any) -> int | None:
    """The socket of a network connection (psycopg: ``fileno()``, PyMySQL: ``_sock``)."""
    for owner, attr in ((dbapi, "fileno"), (getattr(dbapi, "_sock", None), "fileno")):
        try:
            fd = getattr(owner, attr)()
        except Exception:  # not this DBAPI's way; try the next
            continue
        if isinstance(fd, int) and fd >= 0:
            return fd
    return None


class _Watchdog:
    """One thread per process that shuts down the socket of a connection whose step outlived
    its deadline, so the call blocked on it fails at once with the DBAPI's connection error.

    Arming a step is one attribute store (no lock, no wake-up): the thread never sleeps longer
    than the shortest bound of the connections it watches, so a step armed while it sleeps cannot
    reach its deadline before the thread looks again. Disarming takes one uncontended lock, which
    the thread holds while it checks and cuts, so a connection already given back and reused is
    never cut for its previous step."""

    def __init__(self) -> None:
        self._reset()
        if hasattr(os, "register_at_fork"):
            # The thread does not survive a fork and its lock may be held: start afresh.
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._watched: set[PooledConnection] = set()
        self._running = False

    def watch(self, conn: PooledConnection) -> None:
        """Watch ``conn`` (a network connection with ``bound`` > 0) until :meth:`unwatch`."""
        with self._lock:
            self._watched.add(conn)
            start, self._running = not self._running, True
        if start:
            thread = threading.Thread(target=self._loop, name="libmsilo-sql-watchdog", daemon=True)
            try:
                thread.start()
            except BaseException:
                with self._lock:
                    self._watched.discard(conn)
                    self._running = False
                raise
        else:
            self._wake.set()  # its bound may be shorter than the thread's current sleep

    def unwatch(self, conn: PooledConnection) -> None:
        """Stop watching ``conn`` (it is being closed)."""
        with self._lock:
            self._watched.discard(conn)

    def disarm(self, conn: PooledConnection) -> bool:
        """End ``conn``'s step; False when the watchdog cut it (its socket is shut down)."""
        self._lock.acquire()  # cheaper than ``with`` on this per-call path
        try:
            cut = conn.deadline < 0
            conn.deadline = 0.0
        finally:
            self._lock.release()
        return not cut

    def _loop(self) -> None:
        while True:
            with self._lock:
                if not self._watched:
                    self._running = False  # the next watch() starts a new thread
                    return
                now = time.monotonic()
                wake = now + min(c.bound for c in self._watched)
                for conn in self._watched:
                    deadline = conn.deadline
                    if 0 < deadline <= now:
                        self._cut(conn)
                    elif 0 < deadline < wake:
                        wake = deadline
                self._wake.clear()
            self._wake.wait(max(0.005, wake - time.monotonic()))

    @staticmethod
    def _cut(conn: PooledConnection) -> None:
        conn.deadline = -1.0
        log.warning(
            "no answer from the database within %.1f s; dropping the connection", conn.bound
        )
        # The DBAPI may have closed the socket itself (and the number been reused) meanwhile.
        if conn.fd is None or _fileno(conn.dbapi) != conn.fd:
            return
        try:
            # A duplicate descriptor: shutdown() acts on the shared socket, close() on the copy.
            dup = os.dup(conn.fd)
            try:
                sock = socket.socket(fileno=dup)
            except OSError:
                os.close(dup)
                raise
            with sock:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            log.debug("could not shut a stuck SQL connection down", exc_info=True)


_WATCHDOG = _Watchdog()


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


def _disown(conn: PooledConnection) -> None:
    """Drop a connection inherited through ``fork`` without ending the parent's session: its
    socket is pointed at /dev/null first, so the goodbye the DBAPI sends on close goes nowhere."""
    if conn.fd is not None:
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(devnull, conn.fd)
        finally:
            os.close(devnull)
    with contextlib.suppress(Exception):
        conn.fairy.invalidate()


class _Slots:
    """A counting semaphore whose uncontended acquire and release take one C-level lock (the
    standard library's runs Python code on every call, which a storage step can do without)."""

    __slots__ = ("_free", "_freed", "_lock", "_size", "_waiting")

    def __init__(self, size: int) -> None:
        self._size = size
        self._free = size
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._waiting = 0

    def acquire(self, timeout: float) -> bool:
        """Take a slot, waiting at most ``timeout`` seconds; False when none came free."""
        with self._lock:
            if self._free > 0:
                self._free -= 1
                return True
            deadline = time.monotonic() + timeout
            self._waiting += 1
            try:
                while self._free <= 0:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._freed.wait(left):
                        if self._free > 0:
                            break
                        return False
                self._free -= 1
                return True
            finally:
                self._waiting -= 1

    @property
    def taken(self) -> int:
        """How many slots are taken."""
        return self._size - self._free

    def release(self) -> None:
        """Give a slot back."""
        with self._lock:
            self._free += 1
            if self._waiting:
                self._freed.notify()


class ConnectionStack:
    """Idle connections, most recently used first; every call takes one and gives it back.

    ``single`` keeps one connection shared under a lock (an in-memory SQLite database exists
    only in the connection that created it). A forked child starts with no idle connections:
    the parent's stay the parent's. ``bound`` > 0 limits each step on a network connection
    (from :meth:`checkout` to :meth:`checkin` / :meth:`discard`) to that many seconds.

    At most ``size`` connections are open at once (0: no limit): a caller finding all of them
    in use waits for one to come back at most ``wait`` seconds, then gets
    :class:`StorageUnavailable`, so one busy process never exhausts the server's connections."""

    def __init__(
        self,
        engine: Engine,
        *,
        single: bool = False,
        ping_after: float = 10.0,
        bound: float = 0.0,
        size: int = 0,
        wait: float = 5.0,
    ) -> None:
        self._engine = engine
        self._bound = bound
        self._size = size if not single else 0  # a single connection is bounded by its lock
        self._wait = wait
        self._slots = _Slots(self._size) if self._size else None
        self._dialect: Dialect = engine.dialect
        self._idle: list[PooledConnection] = []
        self._single = threading.Lock() if single else None
        self._ping_after = ping_after
        self._closed = False
        if hasattr(os, "register_at_fork") and not single:
            ref = weakref.ref(self)

            def forked() -> None:
                stack = ref()
                if stack is not None:
                    stack._forked()

            os.register_at_fork(after_in_child=forked)

    def _forked(self) -> None:
        idle, self._idle = self._idle, []
        if self._size:  # the parent's connections in use are not this process's
            self._slots = _Slots(self._size)
        for conn in idle:
            _disown(conn)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def _take(self) -> None:
        """Begin a checkout: take the shared connection's lock, or a pool slot (waiting for one
        at most ``wait`` seconds)."""
        if self._closed:
            raise StorageError("the SQL driver is closed")
        if self._single is not None:
            self._single.acquire()
        elif self._slots is not None and not self._slots.acquire(timeout=self._wait):
            raise StorageUnavailable(
                f"database unavailable: all {self._size} connections of the pool stayed in use "
                f"for {self._wait:.1f} s"
            )

    @contextmanager
    def reserved(self) -> Iterator[None]:
        """Hold a place of the pool for a connection opened elsewhere (the driver's schema work,
        through SQLAlchemy): taken as :meth:`checkout` takes one, and idle connections are
        closed while, with it, more than ``size`` would be open."""
        self._take()
        try:
            if self._slots is not None:
                while len(self._idle) + self._slots.taken > self._size:
                    try:
                        conn = self._idle.pop()
                    except IndexError:
                        break
                    self._close(conn, invalidate=False)
            yield
        finally:
            self._give_back()

    def checkout(self) -> PooledConnection:
        """An open connection, its step bound armed: an idle one that is still alive, or a new
        one."""
        self._take()
        try:
            while True:
                try:
                    conn = self._idle.pop()
                except IndexError:
                    conn = self._connect()
                    if conn.bound:
                        conn.deadline = time.monotonic() + conn.bound
                    return conn
                now = time.monotonic()
                if conn.bound:
                    conn.deadline = now + conn.bound  # also bounds the ping in _alive
                if self._alive(conn, now):
                    return conn
                if conn.timed_out:  # the ping got no answer: the server is out of reach
                    self._close(conn, invalidate=True)
                    self.flush()
                    raise StorageUnavailable(
                        f"database unavailable: no answer to a ping within {conn.bound:.1f} s"
                    )
                log.info("dropping a SQL connection the server closed")
                self._close(conn, invalidate=True)
        except BaseException:
            self._give_back()
            raise

    def _give_back(self) -> None:
        """End a checkout: the shared connection's lock, or the pool slot."""
        if self._single is not None:
            self._single.release()
        elif self._slots is not None:
            self._slots.release()

    def checkin(self, conn: PooledConnection) -> None:
        """Give back a connection that is idle (no transaction open)."""
        conn.last_used = time.monotonic()
        if conn.bound and not _WATCHDOG.disarm(conn):
            self._close(conn, invalidate=True)  # cut by the watchdog just as its step ended
        elif self._closed:
            self._close(conn, invalidate=False)
        else:
            self._idle.append(conn)
        self._give_back()

    def discard(self, conn: PooledConnection, *, lost: bool) -> None:
        """Close a connection that failed; ``lost`` (the server went away) closes the idle ones
        too, since they are most likely gone the same way."""
        self._close(conn, invalidate=True)
        if lost:
            self.flush()
        self._give_back()

    def flush(self) -> None:
        """Close every idle connection."""
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return
            self._close(conn, invalidate=True)

    def close(self) -> None:
        """Close the idle connections; those in use are closed when given back."""
        self._closed = True
        self.flush()

    def _connect(self) -> PooledConnection:
        try:
            conn = PooledConnection(self._engine.raw_connection(), self._bound)
        except Exception as exc:
            raise storage_error(exc, self._dialect, None, connecting=True) from exc
        if conn.bound:
            try:
                _WATCHDOG.watch(conn)
            except BaseException:  # no thread to watch it: no connection either
                self._close(conn, invalidate=True)
                raise
        return conn

    def _alive(self, conn: PooledConnection, now: float) -> bool:
        return alive(conn, self._dialect, now - conn.last_used > self._ping_after)

    def _close(self, conn: PooledConnection, *, invalidate: bool) -> None:
        if conn.bound:
            _WATCHDOG.unwatch(conn)
        with contextlib.suppress(Exception):  # a broken connection's cursor may fail to close
            conn.cursor.close()
        try:
            if invalidate:
                conn.fairy.invalidate()
            else:
                conn.fairy.close()
        except Exception:
            log.debug("error while closing a SQL connection", exc_info=True)


def alive(conn: Pooled, dialect: Dialect, ping: bool) -> bool:
    """Whether the idle connection ``conn`` may serve a step: not when its socket became
    readable (an idle connection has nothing to read unless the server hung up), nor when
    ``ping`` (it was idle long) and the ping fails."""
    if conn.fd is not None and _readable(conn.fd):
        return False
    if not ping:
        return True
    try:
        dialect.do_ping(conn.dbapi)
    except Exception:
        return False
    return True


def _dbapi_error(exc: BaseException) -> BaseException:
    return exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc


def storage_error(
    exc: BaseException, dialect: Dialect, conn: Pooled | None, *, connecting: bool = False
) -> StorageError:
    """The libmsilo error for ``exc`` (raise it ``from exc``): :class:`StorageUnavailable` when
    the server cannot be reached or the connection was lost, else :class:`StorageError`."""
    if isinstance(exc, StorageError):
        return exc
    orig = _dbapi_error(exc)
    if conn is not None and conn.timed_out:
        return StorageUnavailable(
            f"database unavailable: no answer within {conn.bound:.1f} s ({type(orig).__name__})"
        )
    lost = connecting or isinstance(orig, OSError)
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        lost = True
    dbapi = dialect.loaded_dbapi
    if not lost and conn is not None and isinstance(orig, dbapi.Error):
        try:
            lost = bool(dialect.is_disconnect(orig, conn.dbapi, conn.cursor))
        except Exception:  # a dialect that cannot tell: treat as an ordinary failure
            lost = False
    message = f"{type(orig).__name__}: {orig}".strip()
    if lost:
        return StorageUnavailable(f"database unavailable: {message}")
    return StorageError(f"database error: {message}")


def is_retryable(exc: BaseException) -> bool:
    """A deadlock or serialization failure: the step was rolled back and may run again."""
    orig = _dbapi_error(exc)
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate in _PG_RETRY
    args: tuple[Any, ...] = getattr(orig, "args", ())
    return len(args) > 0 and args[0] in _MYSQL_RETRY
