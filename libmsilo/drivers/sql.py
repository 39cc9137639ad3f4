"""The SQL storage driver: SQLite (embedded default), PostgreSQL (psycopg 3) and MySQL/MariaDB
(PyMySQL) through SQLAlchemy Core.

SQLAlchemy builds the table, reflects and migrates existing ones, opens connections and compiles
every statement once per dialect (:mod:`.sql_ops`); each call then runs that SQL on a bare DBAPI
cursor taken from a small connection stack (:mod:`.sql_pool`), keeping the cost per call close to
the DBAPI's own. URL schemes: ``sqlite``, ``postgresql[+dbapi]``, ``postgres``,
``mysql[+dbapi]``, ``mariadb[+dbapi]``.

Bounds: the server stops each statement after ``timeout`` (PostgreSQL ``statement_timeout`` and
``lock_timeout``, MariaDB ``max_statement_time``); on the client, a watchdog cuts the connection
of a step still running after :func:`.sql_pool.step_bound` (a hung server, a stalled network),
which then fails with :class:`StorageUnavailable`. MySQL bodies: PyMySQL doubles them on the
wire (hex), so one larger than half of the server's ``max_allowed_packet`` is written in parts
within one transaction, and one that could not come back in a packet raises
:class:`InvalidRequest` before anything is sent (see :mod:`.sql_ops`).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar
from urllib.parse import unquote

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool, StaticPool

from ..errors import InvalidRequest, MsiloError, SettingsError, StorageError, StorageUnavailable
from . import DriverOptions, batch
from .base import NewMessage, ReleaseResult, StoredMessage, StoreLayout, StoreTotals
from .plumbing import DriverBase, ErrorTable, storage_step
from .schemes import SCHEMES, scheme_of
from .sql_migrate import check_schema, create_schema, drop_schema, migrate_schema, read_version
from .sql_ops import NO_LIMIT, SqlOps
from .sql_pool import (
    ConnectionStack,
    Pooled,
    PooledConnection,
    is_retryable,
    step_bound,
    storage_error,
)
from .sql_schema import ValueLimits, build_table, limits_from_table, reflect_limits

__all__ = ["SqlDriver", "open_sql", "sql_url"]

log = logging.getLogger("libmsilo")
T = TypeVar("T")

_TRIES = 5  # attempts of a step that hit a deadlock or serialization failure
_CHUNK = 500  # most ids in one batch statement (DELETE … WHERE id IN (…))


def sql_url(url: str) -> sa.URL:
    """The SQLAlchemy URL for a driver URL: ``postgres``/bare ``postgresql`` use psycopg 3,
    ``mariadb`` and bare ``mysql`` use PyMySQL (through SQLAlchemy's ``mysql`` dialect)."""
    scheme = scheme_of(url, "sql")
    dbapi = url.partition("://")[0].lower().partition("+")[2] or scheme.dbapi
    name = f"{scheme.backend}+{dbapi}" if dbapi else scheme.backend
    try:
        return sa.make_url(f"{name}://{url.partition('://')[2]}")
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise SettingsError(f"db_url: {exc}") from exc


def _memory_db(url: sa.URL) -> bool:
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


def create_private_file(url: sa.URL) -> None:
    """Create a SQLite database file that does not exist yet readable by its owner only (0600,
    whatever the umask); SQLite gives its ``-wal``/``-shm``/``-journal`` files the same mode.
    An existing file, a read-only or in-memory database is left alone."""
    if url.get_backend_name() != "sqlite" or _memory_db(url) or url.query.get("mode") == "ro":
        return
    path = url.database or ""
    if str(url.query.get("uri", "")).lower() in ("true", "1"):
        path = unquote(path.removeprefix("file:").partition("?")[0])
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return  # exists (its mode stays), or cannot be made: SQLite reports that on connect
    try:
        os.fchmod(fd, 0o600)  # a umask such as 0277 would have left less than 0600
    finally:
        os.close(fd)


def _connect_args(url: sa.URL, timeout: float, bounded: bool) -> dict[str, Any]:
    """DBAPI connect arguments bounding connect time and, when ``bounded``, each statement
    (left out for schema changes, which may take long on a big table). URL query values win.

    The statement bounds are the server's; a hung server or a stalled network is caught on the
    client side by the pool's watchdog (:func:`.sql_pool.step_bound`), by PyMySQL's socket
    timeouts, and by libpq's TCP options for a peer that stops acknowledging."""
    backend, dbapi = url.get_backend_name(), url.get_driver_name()
    bound = step_bound(timeout)
    args: dict[str, Any] = {}
    if backend == "sqlite":
        args = {"timeout": timeout, "check_same_thread": False}
    elif backend == "postgresql" and dbapi in ("psycopg", "psycopg2"):
        args["connect_timeout"] = max(2, math.ceil(timeout))  # libpq: whole seconds, 2 at least
        # Unacknowledged data (a dead peer) resets the connection after the step bound, and
        # keepalives find dead peers of idle pooled connections.
        args["tcp_user_timeout"] = int(bound * 1000)
        args["keepalives"] = 1
        args["keepalives_idle"] = max(1, math.ceil(timeout))
        args["keepalives_interval"] = max(1, math.ceil(timeout / 3))
        args["keepalives_count"] = 3
        if bounded:
            ms = max(1, int(timeout * 1000))
            user_options = url.query.get("options", "")
            options = f"-c statement_timeout={ms} -c lock_timeout={ms} {user_options}"
            args["options"] = options.strip()
    elif backend == "mysql" and dbapi == "pymysql":
        args["connect_timeout"] = timeout
        if bounded:
            # Each socket read / write (the handshake's too) waits at most the step bound, a
            # little longer than the server's max_statement_time (timeout + 1, set below).
            args["read_timeout"] = args["write_timeout"] = bound
    return {k: v for k, v in args.items() if k not in url.query or k == "options"}


def _session_setup(engine: Engine, timeout: float, bounded: bool) -> None:
    """Per-connection settings: MySQL's READ COMMITTED (consistent reads take no locks and see
    rows committed before the statement), lock-wait and (``bounded``) statement time bounds;
    SQLite's WAL mode."""
    dialect = engine.dialect
    backend = engine.url.get_backend_name()
    file_db = backend == "sqlite" and not _memory_db(engine.url)
    if backend not in ("mysql", "sqlite"):
        return

    @event.listens_for(engine, "connect")
    def _setup(dbapi_conn: Any, record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            if backend == "sqlite":
                if file_db:
                    cur.execute("PRAGMA journal_mode=WAL")
                return
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            cur.execute(f"SET SESSION innodb_lock_wait_timeout = {max(1, math.ceil(timeout))}")
            if bounded and getattr(dialect, "is_mariadb", False):
                cur.execute(f"SET SESSION max_statement_time = {timeout + 1:.3f}")
        finally:
            cur.close()


def _engine(url: sa.URL, timeout: float, *, bounded: bool) -> Engine:
    backend = url.get_backend_name()
    paramstyle = "named" if backend == "sqlite" else "pyformat"
    try:
        engine = sa.create_engine(
            url,
            # Pooling is the driver's own (sql_pool.ConnectionStack); an in-memory SQLite
            # database exists in one connection only, which StaticPool shares.
            poolclass=StaticPool if backend == "sqlite" and _memory_db(url) else NullPool,
            pool_reset_on_return=None,
            isolation_level="AUTOCOMMIT",
            paramstyle=paramstyle,
            connect_args=_connect_args(url, timeout, bounded),
        )
    except ImportError as exc:
        extra = SCHEMES[backend].extra if backend in SCHEMES else None
        hint = f"; install it with: pip install 'libmsilo[{extra}]'" if extra else ""
        raise SettingsError(f"db_url: {url.drivername} needs a missing package{hint}") from exc
    except (sa.exc.ArgumentError, TypeError) as exc:
        raise SettingsError(f"db_url: {exc}") from exc
    _session_setup(engine, timeout, bounded)
    return engine


class SqlDriver(DriverBase):
    """Stores messages in one SQL table (see :mod:`libmsilo.drivers.sql_schema`)."""

    def __init__(self, url: sa.URL, layout: StoreLayout, options: DriverOptions) -> None:
        self.layout = layout
        self._url = url
        self._timeout = options.timeout
        create_private_file(url)
        self._engine = _engine(url, options.timeout, bounded=True)
        self._dialect = self._engine.dialect
        self._dbapi_error: type[Exception] = self._dialect.loaded_dbapi.Error
        # Whether a failure means a lost server depends on the dialect: see _translate.
        self.errors = ErrorTable(
            "database",
            failed=(sa.exc.SQLAlchemyError, self._dbapi_error, OSError),
            retryable=is_retryable,
            tries=_TRIES,
        )
        single = url.get_backend_name() == "sqlite" and _memory_db(url)
        self._pool = ConnectionStack(
            self._engine,
            single=single,
            bound=step_bound(options.timeout),
            size=options.pool_size,
            wait=options.timeout,
        )
        self._table = build_table(layout, sa.MetaData())
        self._ops: SqlOps | None = None
        self._limits: ValueLimits | None = None
        self._prepare_lock = threading.Lock()
        self._ddl_engine: Engine | None = None  # unbounded statements, created when needed

    # ---- plumbing -----------------------------------------------------------------------------

    @contextmanager
    def _schema_conn(self, *, bounded: bool = False) -> Iterator[Connection]:
        """A SQLAlchemy connection for reflection (``bounded``: with the statement bounds) or
        DDL (without), holding one of the pool's places while open, so that ``pool_size``
        bounds these connections too (see :meth:`.ConnectionStack.reserved`)."""
        if self._pool.closed:
            raise StorageError("the SQL driver is closed")
        # The in-memory database lives in the stack's one connection (StaticPool).
        memory = self._url.get_backend_name() == "sqlite" and _memory_db(self._url)
        if bounded or memory:
            engine = self._engine
        else:
            if self._ddl_engine is None:
                self._ddl_engine = _engine(self._url, self._timeout, bounded=False)
            engine = self._ddl_engine
        with self._schema_place():
            try:
                sa_conn = engine.connect()
            except (sa.exc.SQLAlchemyError, self._dbapi_error, OSError) as exc:
                raise storage_error(exc, self._dialect, None, connecting=True) from exc
            with sa_conn:
                yield sa_conn

    def _schema_place(self) -> AbstractContextManager[None]:
        """The pool place a schema connection holds."""
        return self._pool.reserved()

    def _prepare(self) -> SqlOps:
        """Compile the statements and read the table's column limits, on one connection."""
        with self._prepare_lock:
            if self._ops is None or self._limits is None:
                with self._schema_conn(bounded=True) as sa_conn:
                    ops = self._compile(sa_conn)
                    check_schema(sa_conn, self.layout)
                    self._limits = reflect_limits(sa_conn, self.layout)
                return ops
            return self._ops

    def _compile(self, sa_conn: Connection | None = None) -> SqlOps:
        """The statements, compiled once a connection (``sa_conn``, else one of its own)
        initialized the dialect (server version, features)."""
        if self._ops is None:
            if sa_conn is None:
                with self._schema_conn(bounded=True) as conn:
                    return self._compile(conn)
            packet, step = self._mysql_session(sa_conn)
            self._ops = SqlOps(
                self._table, self._dialect, self._timeout, max_packet=packet, id_step=step
            )
        return self._ops

    def _mysql_session(self, conn: Connection) -> tuple[int | None, int | None]:
        """MySQL's ``max_allowed_packet`` for this session (read-only per session on MariaDB,
        and raising the global one is not a driver's business), and the step between the ids
        of one multi-row INSERT when the server gives such rows consecutive ids (InnoDB
        ``innodb_autoinc_lock_mode`` 0 or 1), else None; (None, None) elsewhere."""
        if self._dialect.name not in ("mysql", "mariadb"):
            return None, None
        row = conn.exec_driver_sql(
            "SELECT @@max_allowed_packet, @@innodb_autoinc_lock_mode, @@auto_increment_increment"
        ).fetchone()
        if not row:
            return None, None
        packet = int(row[0]) if row[0] else None
        step = int(row[2]) if row[1] is not None and int(row[1]) in (0, 1) and row[2] else None
        return packet, step

    def _translate(self, exc: BaseException, context: object = None) -> BaseException:
        """StorageUnavailable when the server cannot be reached or ``context`` (the step's
        pooled connection) was lost; the error table for everything else."""
        if isinstance(exc, self.errors.failed) and not isinstance(exc, MsiloError):
            conn = context if isinstance(context, Pooled) else None
            return storage_error(exc, self._dialect, conn)
        return super()._translate(exc)

    def _run(self, step: Callable[[PooledConnection], T]) -> T:
        """Run ``step`` on a pooled connection; a failure is rolled back and raised translated
        (the method's :func:`storage_step` retries deadlocks)."""
        conn = self._pool.checkout()
        try:
            result = step(conn)
        except BaseException as exc:
            error = self._fail(conn, exc)
            if error is exc:
                raise
            raise error from exc
        self._pool.checkin(conn)
        return result

    def _fail(self, conn: PooledConnection, exc: BaseException) -> BaseException:
        """Roll back the failed step and give the connection back (or drop it when lost or in
        an unknown state); the error to raise for ``exc``."""
        error = self._translate(exc, conn)
        healthy = isinstance(error, MsiloError) and not isinstance(error, StorageUnavailable)
        if healthy:
            try:
                conn.dbapi.rollback()
            except Exception:
                healthy = False
        if healthy:
            self._pool.checkin(conn)
        else:
            self._pool.discard(conn, lost=isinstance(error, StorageUnavailable))
        return error

    def _ready(self) -> SqlOps:
        ops = self._ops
        if ops is None or self._limits is None:
            ops = self._prepare()
        return ops

    # ---- schema -------------------------------------------------------------------------------

    @storage_step
    def create_schema(self) -> None:
        """Create the table and its indexes if missing (safe from many processes at once);
        an existing table must be at this libmsilo's schema version (else
        :class:`~libmsilo.errors.SchemaOutdated`)."""
        with self._schema_conn() as conn:
            create_schema(conn, self.layout)
        self._limits = None

    @storage_step
    def drop_schema(self) -> None:
        """Drop the table (with its indexes) and its schema version."""
        with self._schema_conn() as conn:
            drop_schema(conn, self.layout)
        self._limits = None

    @storage_step
    def migrate(self) -> None:
        """Take an OpenSIPS/Kamailio table or an older libmsilo one to the current schema
        version step by step, keeping its rows (safe from many processes at once)."""
        with self._schema_conn() as conn:
            migrate_schema(conn, self.layout)
        self._limits = None

    @storage_step
    def schema_version(self) -> int | None:
        """The table's libmsilo schema version; None when it does not exist."""
        with self._schema_conn() as conn:
            return read_version(conn, self.layout)

    # ---- messages -----------------------------------------------------------------------------

    @storage_step
    def insert(self, msg: NewMessage, max_messages: int = 0) -> int | None:
        """Store ``msg``; None when the owner already holds ``max_messages`` live messages."""
        ops = self._ready()
        params = self._row_params(ops, msg)
        return self._run(lambda c: ops.insert(c.cursor, c.dbapi, params, max_messages))

    def insert_many(
        self, msgs: Sequence[NewMessage], max_messages: int = 0
    ) -> list[int | MsiloError | None]:
        """Store ``msgs`` in one transaction (see :mod:`.batch`): a message the table cannot
        hold gets its own error; should the database refuse one row, the rest are stored one
        by one so that only it fails."""
        if len(msgs) <= 1:
            return batch.insert_each(self, msgs, max_messages)
        ops = self._step(self._ready)

        def store(
            rows: list[tuple[NewMessage, dict[str, Any]]],
        ) -> Sequence[int | MsiloError | None]:
            params = [p for _, p in rows]
            return self._batch_step(
                lambda c: ops.insert_batch(c.cursor, c.dbapi, params, max_messages),
                lambda: batch.insert_each(self, [m for m, _ in rows], max_messages),
            )

        return batch.insert_checked(
            self, msgs, max_messages, lambda msg: (msg, self._row_params(ops, msg)), store
        )

    def delete_many(self, mids: Sequence[int]) -> list[bool | MsiloError]:
        """Delete the rows of ``mids`` with one ``DELETE … WHERE id IN (…)`` per chunk."""

        def store(ids: list[int]) -> set[int]:
            ops = self._step(self._ready)

            def one(chunk: list[int]) -> set[int]:
                return self._batch_step(lambda c: ops.delete_batch(c.cursor, c.dbapi, chunk))

            return {mid for chunk in _chunks(ids) for mid in one(chunk)}

        return batch.delete_checked(self, mids, store)

    def release_many(
        self, releases: Sequence[batch.Release], max_attempts: int = 0
    ) -> list[ReleaseResult | MsiloError]:
        """End failed deliveries with one statement (or one transaction) per chunk (see
        :meth:`.SqlOps.release_batch`); should the database refuse a chunk, its releases run
        one by one so that only the bad one fails."""

        def store(items: list[batch.Release]) -> list[ReleaseResult | MsiloError]:
            ops = self._step(self._ready)

            def one(chunk: list[batch.Release]) -> list[ReleaseResult | MsiloError]:
                return self._batch_step(
                    lambda c: list(ops.release_batch(c.cursor, c.dbapi, chunk, max_attempts)),
                    lambda: batch.release_each(self, chunk, max_attempts),
                )

            return [result for chunk in _chunks(items) for result in one(chunk)]

        return batch.release_checked(self, releases, max_attempts, store)

    def _batch_step(
        self, step: Callable[[PooledConnection], T], each: Callable[[], T] | None = None
    ) -> T:
        """Run a batch statement (or transaction) as one storage step: on a pooled connection,
        failures translated, deadlocks retried. With ``each``, a failure other than a lost
        database runs ``each`` instead: the items one by one, so that only a bad one fails."""
        try:
            return self._step(lambda: self._run(step))
        except StorageUnavailable:
            raise
        except MsiloError:
            if each is None:
                raise
            return each()

    def _row_params(self, ops: SqlOps, msg: NewMessage) -> dict[str, Any]:
        """The insert parameters of ``msg``; InvalidRequest when the table cannot hold it."""
        limits = self._limits or limits_from_table(self._table, self._dialect.name)
        limits.check(msg)
        if ops.kind == "postgresql":
            texts = (msg.src_addr, msg.dst_addr, msg.username, msg.domain, msg.ctype)
            for text in (*texts, msg.extra_hdrs, msg.callid):
                if "\x00" in text:
                    raise InvalidRequest("PostgreSQL text cannot hold NUL characters")
        elif ops.max_body is not None and len(msg.body) > ops.max_body:
            raise InvalidRequest(
                f"body is {len(msg.body)} bytes; the server's max_allowed_packet allows "
                f"{ops.max_body}"
            )
        params = {
            "src_addr": msg.src_addr,
            "dst_addr": msg.dst_addr,
            "username": msg.username,
            "domain": msg.domain,
            "body": msg.body,
            "ctype": msg.ctype,
            "inc_time": msg.inc_time,
            "exp_time": msg.exp_time,
            "snd_time": msg.snd_time,
            "extra_hdrs": msg.extra_hdrs,
            "callid": msg.callid,
        }
        return params

    @storage_step
    def claim(
        self, username: str, domain: str, now: int, lease_until: int, token: str, limit: int = 0
    ) -> list[StoredMessage]:
        """Lease the owner's unexpired, unleased offline messages to ``token``, in id order."""
        ops = self._ready()
        params = {"u": username, "d": domain, **_lease_params(now, lease_until, token, limit)}
        return self._run(lambda c: ops.claim(c.cursor, c.dbapi, params, False))

    @storage_step
    def claim_due_reminders(
        self, now: int, lease_until: int, token: str, limit: int = 0
    ) -> list[StoredMessage]:
        """Lease due reminders (``0 < snd_time <= now``) of every owner, in id order."""
        ops = self._ready()
        params = _lease_params(now, lease_until, token, limit)
        return self._run(lambda c: ops.claim(c.cursor, c.dbapi, params, True))

    @storage_step
    def delete(self, mid: int) -> bool:
        """Delete one row; False when it did not exist."""
        ops = self._ready()
        return self._run(lambda c: ops.changed(ops.delete_sql, c.cursor, {"mid": mid}) > 0)

    @storage_step
    def release(
        self, mid: int, token: str | None, *, to_offline: bool = False, max_attempts: int = 0
    ) -> ReleaseResult:
        """End a failed delivery (see :meth:`libmsilo.drivers.base.Driver.release`)."""
        ops = self._ready()
        return self._run(
            lambda c: ops.release(c.cursor, c.dbapi, mid, token, to_offline, max_attempts)
        )

    @storage_step
    def count(self, username: str, domain: str, now: int) -> int:
        """Number of the owner's unexpired messages."""
        ops = self._ready()
        params = {"u": username, "d": domain, "now": now}
        return self._run(lambda c: ops.count(c.cursor, params))

    @storage_step
    def list(self, username: str, domain: str, now: int, limit: int = 0) -> list[StoredMessage]:
        """The owner's unexpired messages in id order, not leased."""
        ops = self._ready()
        params = {"u": username, "d": domain, "now": now, "lim": limit if limit > 0 else NO_LIMIT}
        return self._run(lambda c: ops.list(c.cursor, params))

    @storage_step
    def get(self, mid: int) -> StoredMessage | None:
        """One row by id, expired or not."""
        ops = self._ready()
        return self._run(lambda c: ops.get(c.cursor, mid))

    @storage_step
    def purge(self, username: str, domain: str) -> int:
        """Delete every row of the owner; how many."""
        ops = self._ready()
        params = {"u": username, "d": domain}
        return self._run(lambda c: ops.changed(ops.purge_sql, c.cursor, params))

    @storage_step
    def delete_expired(self, now: int) -> int:
        """Delete rows with ``exp_time <= now``; how many."""
        ops = self._ready()
        return self._run(lambda c: ops.changed(ops.expired_sql, c.cursor, {"now": now}))

    @storage_step
    def totals(self, now: int) -> StoreTotals:
        """Unexpired rows and live leases: one counting query (it reads the whole table)."""
        ops = self._ready()
        return StoreTotals(*self._run(lambda c: ops.totals(c.cursor, now)))

    @storage_step
    def ping(self) -> None:
        """Read from the table: the server answers and the table exists."""
        ops = self._ready()
        self._run(lambda c: ops.get(c.cursor, 0))

    def close(self) -> None:
        """Close every connection; the driver is unusable afterwards."""
        self._pool.close()
        self._engine.dispose()
        if self._ddl_engine is not None:
            self._ddl_engine.dispose()


def _chunks(items: list[T]) -> Iterator[list[T]]:
    """``items`` in slices of at most :data:`_CHUNK` (the ids of one statement)."""
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _lease_params(now: int, lease_until: int, token: str, limit: int) -> dict[str, object]:
    """The parameters both claim statements take."""
    return {"now": now, "lu": lease_until, "tok": token, "lim": limit if limit > 0 else NO_LIMIT}


def open_sql(url: str, layout: StoreLayout, options: DriverOptions) -> SqlDriver:
    """Factory for ``sqlite``, ``postgresql``, ``postgres``, ``mysql`` and ``mariadb`` URLs."""
    return SqlDriver(sql_url(url), layout, options)
