"""DBAPI connections for the SQL driver, and the mapping of their errors onto libmsilo's.

SQLAlchemy opens each connection (dialect setup, connect events); the driver then keeps it in a
lock-free stack and runs its pre-compiled SQL on the bare DBAPI cursor. A pool checkout with
``pool_pre_ping`` costs a round trip per call, which alone is 20-30 % of a loopback statement, so
liveness is checked the cheap way instead: a connection whose socket has become readable while
idle was closed by the server (restart, ``pg_terminate_backend``, ``KILL``, ``wait_timeout``) and
is replaced; a connection idle for longer than ``ping_after`` seconds is pinged first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
import weakref
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect, Engine

from ..errors import StorageError, StorageUnavailable

__all__ = ["ConnectionStack", "PooledConnection", "is_retryable", "storage_error"]

log = logging.getLogger("libmsilo")

# PostgreSQL SQLSTATEs and MySQL error numbers of failures a retry of the whole step resolves.
_PG_RETRY = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
_MYSQL_RETRY = frozenset({1213, 1020})  # deadlock; "record has changed since last read"


class PooledConnection:
    """One DBAPI connection with its reusable cursor."""

    __slots__ = ("cursor", "dbapi", "fairy", "fd", "last_used")

    def __init__(self, fairy: Any) -> None:
        self.fairy = fairy  # SQLAlchemy's proxy: closes / invalidates the real connection
        self.dbapi: Any = fairy.dbapi_connection
        self.cursor: Any = self.dbapi.cursor()
        self.fd = _fileno(self.dbapi)
        self.last_used = time.monotonic()


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


class ConnectionStack:
    """Idle connections, most recently used first; every call takes one and gives it back.

    ``single`` keeps one connection shared under a lock (an in-memory SQLite database exists
    only in the connection that created it). A forked child starts with no idle connections:
    the parent's stay the parent's."""

    def __init__(self, engine: Engine, *, single: bool = False, ping_after: float = 10.0) -> None:
        self._engine = engine
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
        for conn in idle:
            _disown(conn)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def checkout(self) -> PooledConnection:
        """An open connection: an idle one that is still alive, or a new one."""
        if self._closed:
            raise StorageError("the SQL driver is closed")
        if self._single is not None:
            self._single.acquire()
        try:
            while True:
                try:
                    conn = self._idle.pop()
                except IndexError:
                    return self._connect()
                if self._alive(conn):
                    return conn
                log.info("dropping a SQL connection the server closed")
                self._close(conn, invalidate=True)
        except BaseException:
            if self._single is not None:
                self._single.release()
            raise

    def checkin(self, conn: PooledConnection) -> None:
        """Give back a connection that is idle (no transaction open)."""
        conn.last_used = time.monotonic()
        if self._closed:
            self._close(conn, invalidate=False)
        else:
            self._idle.append(conn)
        if self._single is not None:
            self._single.release()

    def discard(self, conn: PooledConnection, *, lost: bool) -> None:
        """Close a connection that failed; ``lost`` (the server went away) closes the idle ones
        too, since they are most likely gone the same way."""
        self._close(conn, invalidate=True)
        if lost:
            self.flush()
        if self._single is not None:
            self._single.release()

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
            return PooledConnection(self._engine.raw_connection())
        except Exception as exc:
            raise storage_error(exc, self._dialect, None, connecting=True) from exc

    def _alive(self, conn: PooledConnection) -> bool:
        if conn.fd is not None and _readable(conn.fd):
            return False  # an idle connection has nothing to read unless the server hung up
        if time.monotonic() - conn.last_used <= self._ping_after:
            return True
        try:
            self._dialect.do_ping(conn.dbapi)
        except Exception:
            return False
        return True

    def _close(self, conn: PooledConnection, *, invalidate: bool) -> None:
        with contextlib.suppress(Exception):  # a broken connection's cursor may fail to close
            conn.cursor.close()
        try:
            if invalidate:
                conn.fairy.invalidate()
            else:
                conn.fairy.close()
        except Exception:
            log.debug("error while closing a SQL connection", exc_info=True)


def _dbapi_error(exc: BaseException) -> BaseException:
    return exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc


def storage_error(
    exc: BaseException, dialect: Dialect, conn: PooledConnection | None, *, connecting: bool = False
) -> StorageError:
    """The libmsilo error for ``exc`` (raise it ``from exc``): :class:`StorageUnavailable` when
    the server cannot be reached or the connection was lost, else :class:`StorageError`."""
    if isinstance(exc, StorageError):
        return exc
    orig = _dbapi_error(exc)
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
