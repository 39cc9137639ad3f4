"""Creating, versioning and migrating the SQL driver's table, safe when many processes do it.

Every schema change runs under one lock per database: a transaction-level advisory lock on
PostgreSQL (whose DDL is transactional, so a change is all or nothing), ``GET_LOCK`` on
MySQL/MariaDB, an immediate (write) transaction on SQLite. Under the lock a process looks before
it creates, so whoever comes second finds everything made. A creator that takes no lock (an older
libmsilo, a hand-written script) can still win a race; its "already exists" makes the step start
over, where the look-first finds the object, and is never an error.

Versions (see :mod:`.schema_version`) live in the table ``msilo_version`` (``table_name``,
``version``), one row per silo table; the C modules' own ``version`` table is left alone (they
refuse to start when its ``silo`` row changes). A table without a row is judged by its columns
(:data:`.sql_schema.VERSION_COLUMNS`): a C module's table is version 0, one made by a libmsilo
before versions were recorded is 1.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import StorageError
from .base import StoreLayout
from .schema_version import SCHEMA_VERSION, check_version
from .sql_schema import (
    MIGRATED_FIELDS,
    ROW_FIELDS,
    VERSION_COLUMNS,
    add_columns,
    build_table,
    create_table,
    drop_table,
    ensure_indexes,
)

__all__ = [
    "VERSION_TABLE",
    "check_schema",
    "create_schema",
    "drop_schema",
    "migrate_schema",
    "read_version",
]

log = logging.getLogger("libmsilo")
T = TypeVar("T")

#: The table that records the libmsilo schema version of each silo table.
VERSION_TABLE = "msilo_version"
#: Seconds a process waits for another one's schema change before giving up.
LOCK_WAIT = 60.0

_LOCK_NAME = "libmsilo.schema"
# pg_advisory_xact_lock takes a signed 64-bit key; this one is libmsilo's.
_PG_LOCK_KEY = int.from_bytes(hashlib.sha1(_LOCK_NAME.encode()).digest()[:8], "big", signed=True)
_TRIES = 5  # a step that lost a race to a creator that took no lock is run again
# "Already exists" from a concurrent creator: PostgreSQL SQLSTATEs (duplicate table / object /
# column; a unique violation in the catalogs or on the version row) and MySQL error numbers
# (table exists, duplicate column, duplicate key name, duplicate entry).
_PG_EXISTS = frozenset({"42P07", "42710", "42701", "23505"})
_MYSQL_EXISTS = frozenset({1050, 1060, 1061, 1062})


def _version_table() -> sa.Table:
    return sa.Table(
        VERSION_TABLE,
        sa.MetaData(),
        sa.Column("table_name", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )


def _already_exists(exc: BaseException) -> bool:
    """True when ``exc`` says an object this step creates was just created by someone else."""
    orig = getattr(exc, "orig", None) or exc
    if getattr(orig, "sqlstate", None) in _PG_EXISTS:
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _MYSQL_EXISTS:
        return True
    text = str(orig).lower()
    return "already exists" in text or "duplicate column" in text


@contextmanager
def _schema_lock(conn: Connection, wait: float) -> Iterator[None]:
    """Hold the database's libmsilo schema lock (and, where DDL is transactional, one
    transaction) while the block runs; commit when it ends normally."""
    kind = conn.dialect.name
    if kind in ("mysql", "mariadb"):
        name = _mysql_lock_name(conn)
        got = conn.exec_driver_sql(
            "SELECT GET_LOCK(%(name)s, %(wait)s)", {"name": name, "wait": wait}
        ).scalar()
        if got != 1:
            raise StorageError(f"another process held the schema lock for {wait:.0f} s; retry")
        try:
            yield
        finally:
            try:
                conn.exec_driver_sql("SELECT RELEASE_LOCK(%(name)s)", {"name": name})
            except sa.exc.DBAPIError:  # the session is gone, and its lock with it
                log.debug("could not release the schema lock", exc_info=True)
        return
    if kind == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # waits for other writers up to the busy timeout
    else:
        conn.exec_driver_sql("BEGIN")
        if kind == "postgresql":
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {max(1, int(wait * 1000))}")
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")
            conn.exec_driver_sql("SET LOCAL lock_timeout = 0")
    try:
        yield
    except BaseException:
        try:
            conn.exec_driver_sql("ROLLBACK")
        except Exception:
            log.debug("rollback after a failed schema change failed", exc_info=True)
        raise
    conn.exec_driver_sql("COMMIT")


def _mysql_lock_name(conn: Connection) -> str:
    """``GET_LOCK`` names are server-wide: one per database, within the 64-character limit."""
    database = str(conn.exec_driver_sql("SELECT DATABASE()").scalar() or "")
    name = f"{_LOCK_NAME}.{database}"
    return name if len(name) <= 64 else f"{_LOCK_NAME}.{hashlib.sha1(name.encode()).hexdigest()}"


def _locked(conn: Connection, wait: float, step: Callable[[], T]) -> T:
    """Run ``step`` under the schema lock; again when a creator that took no lock won a race."""
    for attempt in range(_TRIES):
        try:
            with _schema_lock(conn, wait):
                return step()
        except sa.exc.DBAPIError as exc:
            if attempt + 1 == _TRIES or not _already_exists(exc):
                raise
            conn.rollback()
            log.debug("schema step lost a race (%s); running it again", exc.orig)
    raise AssertionError("unreachable")  # the loop returns or raises


# ---- versions -----------------------------------------------------------------------------------


def _recorded(conn: Connection, layout: StoreLayout) -> int | None:
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    versions = _version_table()
    query = sa.select(versions.c.version).where(versions.c.table_name == layout.table)
    found = conn.execute(query).scalar()
    return None if found is None else int(found)


def _judged(conn: Connection, layout: StoreLayout) -> int:
    """The version a table without a recorded one has, by its columns."""
    existing = {c["name"].lower() for c in sa.inspect(conn).get_columns(layout.table)}
    version = 0
    for number, fields in sorted(VERSION_COLUMNS.items()):
        if not all(getattr(layout, f).lower() in existing for f in fields):
            break
        version = number
    return version


def read_version(conn: Connection, layout: StoreLayout) -> int | None:
    """The libmsilo schema version of the table (recorded, else judged by its columns); None
    when the table does not exist."""
    if not sa.inspect(conn).has_table(layout.table):
        return None
    recorded = _recorded(conn, layout)
    return recorded if recorded is not None else _judged(conn, layout)


def _record(conn: Connection, layout: StoreLayout, version: int) -> None:
    """Store ``version`` as the table's (the caller holds the schema lock)."""
    versions = _version_table()
    versions.create(conn, checkfirst=True)
    row = versions.c.table_name == layout.table
    if conn.execute(sa.update(versions).where(row).values(version=version)).rowcount == 0:
        conn.execute(sa.insert(versions).values(table_name=layout.table, version=version))


def _describe(layout: StoreLayout) -> str:
    return f"table {layout.table!r}"


def check_schema(conn: Connection, layout: StoreLayout) -> None:
    """Raise :class:`~libmsilo.errors.SchemaVersionError` unless the table, when it exists, is
    at this libmsilo's schema version."""
    version = read_version(conn, layout)
    if version is not None:
        check_version(version, _describe(layout))


# ---- create, drop, migrate -----------------------------------------------------------------------


def create_schema(conn: Connection, layout: StoreLayout, wait: float = LOCK_WAIT) -> None:
    """Create the table at the current version unless it exists; an existing one must be at
    the current version (its missing indexes are made: DDL is not transactional everywhere, so a
    create interrupted between statements is finished here)."""

    def step() -> None:
        version = read_version(conn, layout)
        if version is None:
            create_table(conn, layout)
            _record(conn, layout, SCHEMA_VERSION)
            return
        check_version(version, _describe(layout))
        ensure_indexes(conn, layout, build_table(layout, sa.MetaData()))
        if _recorded(conn, layout) is None:
            _record(conn, layout, version)

    _locked(conn, wait, step)


def drop_schema(conn: Connection, layout: StoreLayout, wait: float = LOCK_WAIT) -> None:
    """Drop the table (its indexes go with it) and its version row; the version table too
    once it holds no row, leaving the database as libmsilo found it."""

    def step() -> None:
        drop_table(conn, layout)
        if sa.inspect(conn).has_table(VERSION_TABLE):
            versions = _version_table()
            conn.execute(sa.delete(versions).where(versions.c.table_name == layout.table))
            if conn.execute(sa.select(sa.func.count()).select_from(versions)).scalar() == 0:
                versions.drop(conn)

    _locked(conn, wait, step)


def migrate_schema(
    conn: Connection, layout: StoreLayout, wait: float = LOCK_WAIT
) -> tuple[int, int]:
    """Take an existing table (a C module's or an older libmsilo's) up to the current version,
    one version at a time, keeping its rows; (version before, version after).

    Each step adds only what is missing and records its version once done, so a migration that
    was interrupted, or that several processes run at once, ends in the same place."""

    def step() -> tuple[int, int]:
        before = read_version(conn, layout)
        if before is None:
            raise StorageError(
                f"cannot migrate: table {layout.table!r} does not exist "
                "(create it with `msilo init`)"
            )
        if before > SCHEMA_VERSION:
            check_version(before, _describe(layout))
        existing = {c["name"].lower() for c in sa.inspect(conn).get_columns(layout.table)}
        absent = [
            getattr(layout, f)
            for f in ROW_FIELDS
            if f not in MIGRATED_FIELDS and getattr(layout, f).lower() not in existing
        ]
        if absent:
            raise StorageError(
                f"cannot migrate {layout.table!r}: no column {', '.join(absent)}; "
                "is it a silo table?"
            )
        table = build_table(layout, sa.MetaData())
        for version in range(before + 1, SCHEMA_VERSION + 1):
            added = add_columns(conn, layout, VERSION_COLUMNS.get(version, ()))
            added += ensure_indexes(conn, layout, table)
            _record(conn, layout, version)
            log.info(
                "migrated table %s to schema version %d%s",
                layout.table,
                version,
                f": added {', '.join(added)}" if added else "",
            )
        ensure_indexes(conn, layout, table)  # also when already current: finish a broken create
        if _recorded(conn, layout) is None:
            _record(conn, layout, before)
        return before, SCHEMA_VERSION

    return _locked(conn, wait, step)
