"""Raw SQL baselines: sqlite3, psycopg and PyMySQL, on a table libmsilo's own DDL created."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import tzinfo
from itertools import islice
from typing import Any

from sqlalchemy.engine import make_url

from ..drivers import open_driver
from ..drivers.base import Driver, StoreLayout
from ..drivers.schemes import scheme_of
from ..errors import SettingsError
from ..records import CORE_FIELDS
from .workload import RawMessage, Row, render_dump, render_reminder

__all__ = ["RawMySQL", "RawPostgres", "RawSQLite", "open_raw_sql"]

COLUMNS = CORE_FIELDS  # Kamailio's optional extra_hdrs and callid keep their defaults
_DUMP_COLS = "mid, src_addr, dst_addr, ctype, body, inc_time"
_SWEEP_COLS = "mid, username, domain, ctype, body, snd_time"
_CHUNK = 5000


def _chunks(rows: Iterable[Row], size: int = _CHUNK) -> Iterator[list[Row]]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


def _server(url: str, default_port: int) -> tuple[str, int, str | None, str | None, str | None]:
    """(host, port, user, password, database) of a server URL."""
    u = make_url(url)
    return u.host or "localhost", u.port or default_port, u.username, u.password, u.database


class _RawSQL:
    """What the three dialects share: the statements, with ``{p}`` for the placeholder."""

    client = "sql"
    placeholder = "?"
    conn: Any  # the DBAPI connection, opened by the subclass

    def __init__(self, url: str, table: str, zone: tzinfo) -> None:
        self.url, self.table, self.zone = url, table, zone
        p = self.placeholder
        free = f"(lease_token IS NULL OR lease_until <= {p})"
        self.insert_sql = (
            f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({', '.join([p] * len(COLUMNS))})"
        )
        self.owner_pred = (
            f"username = {p} AND domain = {p} AND snd_time = 0 AND exp_time > {p} AND {free}"
        )
        self.due_pred = f"snd_time > 0 AND snd_time <= {p} AND exp_time > {p} AND {free}"
        self.delete_sql = f"DELETE FROM {table} WHERE mid = {p}"
        self.purge_sql = f"DELETE FROM {table} WHERE exp_time <= {p}"

    def _on_driver(self, step: Callable[[Driver], None]) -> None:
        driver = open_driver(self.url, StoreLayout(table=self.table))
        try:
            step(driver)
        finally:
            driver.close()

    def create(self) -> None:
        """Create the table with libmsilo's own DDL, so both sides have the same indexes."""
        self._on_driver(lambda d: d.create_schema())

    def drop(self) -> None:
        """Drop the table (through libmsilo's DDL, which knows every index it made)."""
        self._on_driver(lambda d: d.drop_schema())

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def _dumped(self, rows: Sequence[Sequence[Any]]) -> list[RawMessage]:
        return [
            render_dump(r[0], r[1], r[2], r[3], bytes(r[4]), r[5], self.zone)
            for r in sorted(rows, key=lambda r: int(r[0]))
        ]

    def _reminded(self, rows: Sequence[Sequence[Any]]) -> list[RawMessage]:
        return [
            render_reminder(r[0], r[1], r[2], r[3], bytes(r[4]), r[5], self.zone)
            for r in sorted(rows, key=lambda r: int(r[0]))
        ]


class _Returning(_RawSQL):
    """SQLite and PostgreSQL: the connection runs statements itself (``conn.execute``) and a
    claim is one ``UPDATE … RETURNING`` (``claim_sql`` / ``sweep_sql``, set by the subclass)."""

    claim_sql = sweep_sql = ""

    def analyze(self) -> None:
        """ANALYZE the table: the planner must know about the seeded rows."""
        self.conn.execute(f"ANALYZE {self.table}")

    def dump(
        self, username: str, domain: str, now: int, lease: int, token: str
    ) -> list[RawMessage]:
        """One statement leases the owner's rows."""
        rows = self.conn.execute(self.claim_sql, (token, lease, username, domain, now, now))
        return self._dumped(rows.fetchall())

    def reply_ok(self, mid: int) -> None:
        """DELETE the row."""
        self.conn.execute(self.delete_sql, (mid,))

    def sweep(self, now: int, lease: int, token: str) -> list[RawMessage]:
        """One statement leases the due reminders."""
        rows = self.conn.execute(self.sweep_sql, (token, lease, now, now, now))
        return self._reminded(rows.fetchall())

    def purge(self, now: int) -> int:
        """One DELETE."""
        return int(self.conn.execute(self.purge_sql, (now,)).rowcount)


class RawSQLite(_Returning):
    """sqlite3 in autocommit mode; a claim is one ``UPDATE … RETURNING`` (SQLite ≥ 3.35)."""

    client = "sqlite3"

    def __init__(self, url: str, table: str, zone: tzinfo) -> None:
        super().__init__(url, table, zone)
        path = make_url(url).database
        if not path or path == ":memory:":
            raise SettingsError("bench: SQLite needs a database file (sqlite:///path)")
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        set_lease = f"UPDATE {table} SET lease_token = ?, lease_until = ?"
        self.claim_sql = f"{set_lease} WHERE {self.owner_pred} RETURNING {_DUMP_COLS}"
        self.sweep_sql = f"{set_lease} WHERE {self.due_pred} RETURNING {_SWEEP_COLS}"

    def bulk_load(self, rows: Iterable[Row]) -> None:
        """executemany in one transaction per chunk."""
        for chunk in _chunks(rows):
            self.conn.execute("BEGIN")
            self.conn.executemany(self.insert_sql, chunk)
            self.conn.execute("COMMIT")

    def server_version(self) -> str:
        """The SQLite library's version."""
        return f"SQLite {sqlite3.sqlite_version}"

    def store(self, row: tuple[str, str, str, str, bytes, str], now: int) -> int:
        """One INSERT, its own transaction."""
        cur = self.conn.execute(self.insert_sql, (*row, now, now + 259200, 0))
        return int(cur.lastrowid or 0)


class RawPostgres(_Returning):
    """psycopg 3 in autocommit mode; a claim is one ``UPDATE … WHERE mid IN (SELECT … FOR
    UPDATE SKIP LOCKED) RETURNING``, so concurrent dumps never lease the same row."""

    client = "psycopg"
    placeholder = "%s"

    def __init__(self, url: str, table: str, zone: tzinfo) -> None:
        import psycopg

        super().__init__(url, table, zone)
        host, port, user, password, database = _server(url, 5432)
        self.conn = psycopg.connect(
            host=host, port=port, user=user, password=password, dbname=database, autocommit=True
        )
        set_lease = f"UPDATE {table} SET lease_token = %s, lease_until = %s"

        def claim(pred: str, cols: str) -> str:
            pick = f"SELECT mid FROM {table} WHERE {pred} ORDER BY mid FOR UPDATE SKIP LOCKED"
            return f"{set_lease} WHERE mid IN ({pick}) RETURNING {cols}"

        self.claim_sql = claim(self.owner_pred, _DUMP_COLS)
        self.sweep_sql = claim(self.due_pred, _SWEEP_COLS)
        self.insert_returning = f"{self.insert_sql} RETURNING mid"

    def bulk_load(self, rows: Iterable[Row]) -> None:
        """COPY … FROM STDIN."""
        with self.conn.cursor() as cur:
            sql = f"COPY {self.table} ({', '.join(COLUMNS)}) FROM STDIN"
            with cur.copy(sql) as copy:  # built from checked names
                for row in rows:
                    copy.write_row(row)

    def server_version(self) -> str:
        """The server's version string."""
        row = self.conn.execute("SELECT version()").fetchone()
        return str(row[0]).split(" on ")[0] if row else "?"

    def store(self, row: tuple[str, str, str, str, bytes, str], now: int) -> int:
        """One INSERT … RETURNING mid."""
        cur = self.conn.execute(self.insert_returning, (*row, now, now + 259200, 0))
        found = cur.fetchone()
        return int(found[0]) if found else 0


class RawMySQL(_RawSQL):
    """PyMySQL in autocommit mode; a claim is ``SELECT … FOR UPDATE SKIP LOCKED`` then
    ``UPDATE`` in one transaction (MariaDB has no ``UPDATE … RETURNING``)."""

    client = "pymysql"
    placeholder = "%s"

    def __init__(self, url: str, table: str, zone: tzinfo) -> None:
        import pymysql

        super().__init__(url, table, zone)
        host, port, user, password, database = _server(url, 3306)
        self.conn = pymysql.connect(
            host=host,
            port=port,
            user=user or "root",
            password=password or "",
            database=database,
            autocommit=True,
        )
        with self.conn.cursor() as cur:
            # As libmsilo's driver: consistent reads take no locks (the claim locks what it takes).
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        self.claim_sql = (
            f"SELECT {_DUMP_COLS} FROM {table} WHERE {self.owner_pred} "
            "ORDER BY mid FOR UPDATE SKIP LOCKED"
        )
        self.sweep_sql = (
            f"SELECT {_SWEEP_COLS} FROM {table} WHERE {self.due_pred} "
            "ORDER BY mid FOR UPDATE SKIP LOCKED"
        )
        self.lease_sql = f"UPDATE {table} SET lease_token = %s, lease_until = %s WHERE mid IN "

    def bulk_load(self, rows: Iterable[Row]) -> None:
        """executemany, which PyMySQL turns into multi-row INSERTs, one transaction a chunk."""
        with self.conn.cursor() as cur:
            for chunk in _chunks(rows):
                self.conn.begin()
                cur.executemany(self.insert_sql, chunk)
                self.conn.commit()

    def analyze(self) -> None:
        """ANALYZE TABLE."""
        with self.conn.cursor() as cur:
            cur.execute(f"ANALYZE TABLE {self.table}")
            cur.fetchall()

    def server_version(self) -> str:
        """The server's version string."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            row = cur.fetchone()
        return f"MySQL/MariaDB {row[0]}" if row else "?"

    def store(self, row: tuple[str, str, str, str, bytes, str], now: int) -> int:
        """One INSERT (autocommit)."""
        with self.conn.cursor() as cur:
            cur.execute(self.insert_sql, (*row, now, now + 259200, 0))
            return int(cur.lastrowid)

    def _claim(self, sql: str, args: tuple[Any, ...], token: str, lease: int) -> list[Any]:
        with self.conn.cursor() as cur:
            self.conn.begin()
            try:
                cur.execute(sql, args)
                rows = list(cur.fetchall())
                if rows:
                    marks = ", ".join(["%s"] * len(rows))
                    cur.execute(f"{self.lease_sql}({marks})", (token, lease, *(r[0] for r in rows)))
                self.conn.commit()
            except BaseException:
                self.conn.rollback()
                raise
        return rows

    def dump(
        self, username: str, domain: str, now: int, lease: int, token: str
    ) -> list[RawMessage]:
        """SELECT … FOR UPDATE SKIP LOCKED, UPDATE the lease, COMMIT."""
        return self._dumped(self._claim(self.claim_sql, (username, domain, now, now), token, lease))

    def reply_ok(self, mid: int) -> None:
        """DELETE the row."""
        with self.conn.cursor() as cur:
            cur.execute(self.delete_sql, (mid,))

    def sweep(self, now: int, lease: int, token: str) -> list[RawMessage]:
        """The same claim for due reminders."""
        return self._reminded(self._claim(self.sweep_sql, (now, now, now), token, lease))

    def purge(self, now: int) -> int:
        """One DELETE."""
        with self.conn.cursor() as cur:
            return int(cur.execute(self.purge_sql, (now,)))


def open_raw_sql(url: str, table: str, zone: tzinfo) -> RawSQLite | RawPostgres | RawMySQL:
    """The raw baseline for a SQLAlchemy URL."""
    backend = scheme_of(url, "sql").backend
    if backend == "sqlite":
        return RawSQLite(url, table, zone)
    if backend == "postgresql":
        return RawPostgres(url, table, zone)
    return RawMySQL(url, table, zone)
