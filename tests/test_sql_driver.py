"""SQL-specific tests of the SQL driver: URLs, schema shape, migration of OpenSIPS and Kamailio
tables, value limits, bodies, error mapping and recovery after a lost connection."""

from __future__ import annotations

import multiprocessing
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest
import sqlalchemy as sa

import libmsilo
from libmsilo.drivers import DriverOptions, NewMessage, ReleaseResult, StoreLayout, open_driver
from libmsilo.drivers.schema_version import SCHEMA_VERSION, VERSIONS
from libmsilo.drivers.sql import _TRIES, SqlDriver, _connect_args, open_sql, sql_url
from libmsilo.drivers.sql_ops import SqlOps
from libmsilo.drivers.sql_pool import is_retryable
from libmsilo.drivers.sql_schema import VERSION_COLUMNS
from libmsilo.errors import (
    InvalidRequest,
    SchemaOutdated,
    SettingsError,
    StorageError,
    StorageUnavailable,
)
from libmsilo.testing import make_message, unique_table
from tests.backends import backend_url
from tests.schema_versions import check_version_cycle

NOW = 1_700_000_000
HOUR = 3600


@dataclass
class Backend:
    kind: str  # "sqlite", "postgresql" or "mysql"
    url: str
    engine: sa.Engine  # for raw SQL beside the driver

    def sql(self, statement: str, **params: Any) -> list[Any]:
        """Run one raw statement (committed); its rows, if any."""
        with self.engine.begin() as conn:
            result = conn.execute(sa.text(statement), params)
            return list(result) if result.returns_rows else []

    def columns(self, table: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return {c["name"]: c for c in sa.inspect(conn).get_columns(table)}

    def indexes(self, table: str) -> list[list[str]]:
        with self.engine.connect() as conn:
            return [
                list(map(str, ix["column_names"])) for ix in sa.inspect(conn).get_indexes(table)
            ]


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind: str = request.param
    url = f"sqlite:///{tmp_path / 'msilo.db'}" if kind == "sqlite" else backend_url(kind)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    yield Backend(kind, url, engine)
    engine.dispose()


def _open(backend: Backend, layout: StoreLayout) -> SqlDriver:
    return open_sql(backend.url, layout, DriverOptions(timeout=10))


@pytest.fixture
def driver(backend: Backend) -> Iterator[SqlDriver]:
    d = _open(backend, StoreLayout(table=unique_table("silo_")))
    d.create_schema()
    yield d
    d.drop_schema()
    d.close()


# ---- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "drivername"),
    [
        ("postgres://u@h/db", "postgresql+psycopg"),
        ("postgresql://u@h/db", "postgresql+psycopg"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2"),
        ("mysql://u@h/db", "mysql+pymysql"),
        ("mariadb://u@h/db", "mysql+pymysql"),
        ("MariaDB+mysqldb://u@h/db", "mysql+mysqldb"),
        ("sqlite:///x.db", "sqlite"),
        ("sqlite://", "sqlite"),
    ],
)
def test_url_schemes(url: str, drivername: str) -> None:
    assert sql_url(url).drivername == drivername


@pytest.mark.parametrize("url", ["oracle://u@h/db", "sqlite", "postgres://u@h:notaport/db"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(SettingsError):
        open_sql(url, StoreLayout(), DriverOptions())


def test_registry_opens_sql_driver(tmp_path: Path) -> None:
    d = open_driver(f"sqlite:///{tmp_path / 'x.db'}")
    assert isinstance(d, SqlDriver)
    d.close()


def test_timeouts_reach_the_dbapi() -> None:
    pg = _connect_args(sql_url("postgresql://h/db"), 2.5, bounded=True)
    assert pg["connect_timeout"] == 3
    assert "statement_timeout=2500" in pg["options"] and "lock_timeout=2500" in pg["options"]
    assert "options" not in _connect_args(sql_url("postgresql://h/db"), 2.5, bounded=False)
    my = _connect_args(sql_url("mysql://h/db"), 2.5, bounded=True)
    assert my["connect_timeout"] == 2.5 and my["read_timeout"] > 2.5
    assert _connect_args(sql_url("sqlite:///x.db"), 2.5, bounded=True)["timeout"] == 2.5
    # a value in the URL wins
    assert "connect_timeout" not in _connect_args(
        sql_url("postgresql://h/db?connect_timeout=9"), 2.5, bounded=True
    )


# ---- schema -----------------------------------------------------------------------------------


def test_schema_shape(backend: Backend, driver: SqlDriver) -> None:
    table = driver.layout.table
    cols = backend.columns(table)
    assert list(cols) == [
        "mid", "src_addr", "dst_addr", "username", "domain", "inc_time", "exp_time",
        "snd_time", "ctype", "body", "lease_token", "lease_until", "attempts", "extra_hdrs",
        "callid",
    ]  # fmt: skip
    assert cols["extra_hdrs"]["nullable"] and not cols["callid"]["nullable"]
    assert cols["callid"]["type"].length == 128
    for name in ("inc_time", "exp_time", "snd_time", "lease_until"):
        assert isinstance(cols[name]["type"], sa.BigInteger), name
    for name, length in [("src_addr", 255), ("username", 64), ("domain", 64), ("ctype", 255)]:
        assert cols[name]["type"].length == length, name
    assert cols["lease_token"]["nullable"] and cols["body"]["nullable"]
    assert not cols["attempts"]["nullable"] and not cols["exp_time"]["nullable"]
    assert sorted(backend.indexes(table)) == [
        ["exp_time"],
        ["snd_time"],
        ["username", "domain", "mid"],
    ]
    if backend.kind == "sqlite":
        ddl = backend.sql("SELECT sql FROM sqlite_master WHERE name = :t", t=table)[0][0]
        assert "INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT" in ddl
        assert backend.sql("PRAGMA journal_mode")[0][0] == "wal"
    else:
        assert isinstance(cols["mid"]["type"], sa.BigInteger)
    if backend.kind == "mysql":
        row = backend.sql(
            "SELECT engine, table_collation FROM information_schema.tables"
            " WHERE table_schema = DATABASE() AND table_name = :t",
            t=table,
        )[0]
        assert row[0] == "InnoDB" and row[1] in ("utf8mb4_nopad_bin", "utf8mb4_0900_bin")
        assert type(cols["body"]["type"]).__name__ == "LONGBLOB"


def test_times_beyond_2038_are_stored_as_integers(backend: Backend, driver: SqlDriver) -> None:
    msg = make_message(inc_time=2**31 + 5, exp_time=2**40, snd_time=2**33)
    mid = driver.insert(msg)
    stored = driver.get(mid or 0)
    assert stored is not None
    assert (stored.inc_time, stored.exp_time, stored.snd_time) == (2**31 + 5, 2**40, 2**33)
    raw = backend.sql(f"SELECT exp_time FROM {driver.layout.table} WHERE exp_time > :x", x=2**39)
    assert [r[0] for r in raw] == [2**40]  # compared as numbers, not text
    assert driver.claim_due_reminders(2**33 - 1, 2**33 + 30, "t") == []
    assert [r.mid for r in driver.claim_due_reminders(2**33, 2**33 + 30, "t")] == [mid]


def test_ids_are_never_reused(driver: SqlDriver) -> None:
    first = driver.insert(make_message())
    second = driver.insert(make_message())
    assert first is not None and second is not None
    assert driver.delete(second)
    third = driver.insert(make_message())
    assert third is not None and third > second


def test_create_and_drop_are_idempotent(backend: Backend) -> None:
    d = _open(backend, StoreLayout(table=unique_table("silo_")))
    try:
        d.drop_schema()  # nothing to drop yet
        d.create_schema()
        d.create_schema()
        mid = d.insert(make_message())
        d.create_schema()
        assert mid is not None and d.get(mid) is not None
    finally:
        d.drop_schema()
        d.drop_schema()
        d.close()
    with backend.engine.connect() as conn:
        assert not sa.inspect(conn).has_table(d.layout.table)


def test_custom_column_names(backend: Backend) -> None:
    layout = StoreLayout(
        table=unique_table("silo_"), mid="id", src_addr="from_uri", username="usr", body="payload"
    )
    d = _open(backend, layout)
    d.create_schema()
    try:
        mid = d.insert(make_message(body=b"x"))
        assert "from_uri" in backend.columns(layout.table)
        got = d.claim("alice", "example.com", NOW, NOW + 30, "tok")
        assert [(r.mid, r.body) for r in got] == [(mid, b"x")]
    finally:
        d.drop_schema()
        d.close()


def test_claims_without_update_returning(driver: SqlDriver) -> None:
    """The SELECT … FOR UPDATE then UPDATE claim (MySQL's, and SQLite's before 3.35) on every
    database."""
    driver.count("alice", "example.com", NOW)  # compiles the statements
    driver._ops = SqlOps(driver._table, driver._dialect, 10, returning=False)
    mids = [driver.insert(make_message(body=bytes([i]))) for i in range(5)]
    due = driver.insert(make_message(user="carol", snd_time=NOW - 1))
    first = driver.claim("alice", "example.com", NOW, NOW + 30, "t1", limit=2)
    rest = driver.claim("alice", "example.com", NOW, NOW + 30, "t2")
    assert [r.mid for r in first] == mids[:2] and [r.mid for r in rest] == mids[2:]
    assert all(r.lease_token == "t2" and r.lease_until == NOW + 30 for r in rest)
    assert [r.body for r in first + rest] == [bytes([i]) for i in range(5)]
    stored = driver.get(mids[4] or 0)
    assert stored is not None and stored.lease_token == "t2"
    assert driver.claim("alice", "example.com", NOW, NOW + 30, "t3") == []
    assert [r.mid for r in driver.claim_due_reminders(NOW, NOW + 30, "t4")] == [due]


# ---- values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "length"),
    [("src_addr", 255), ("dst_addr", 255), ("username", 64), ("domain", 64), ("ctype", 255)],
)
def test_column_overflow_is_refused_before_the_database(
    driver: SqlDriver, monkeypatch: pytest.MonkeyPatch, field: str, length: int
) -> None:
    base = make_message()
    fits = NewMessage(**{**_fields(base), field: "x" * length})
    assert driver.insert(fits) is not None  # exactly the column length is fine
    too_long = NewMessage(**{**_fields(base), field: "x" * (length + 1)})

    def no_database() -> None:
        raise AssertionError("the database was used")

    monkeypatch.setattr(driver._pool, "checkout", no_database)
    with pytest.raises(InvalidRequest, match=field):
        driver.insert(too_long)
    monkeypatch.undo()
    assert driver.count(fits.username, fits.domain, NOW) == 1


def _fields(msg: NewMessage) -> dict[str, Any]:
    return {k: getattr(msg, k) for k in NewMessage.__dataclass_fields__}


def test_multibyte_text_counts_characters(driver: SqlDriver) -> None:
    user = "é" * 64  # 128 bytes in UTF-8, 64 characters: fits VARCHAR(64)
    mid = driver.insert(make_message(user=user))
    stored = driver.get(mid or 0)
    assert stored is not None and stored.username == user


def test_bodies_with_every_byte_value(driver: SqlDriver) -> None:
    rng = random.Random(7)
    bodies = [
        bytes(range(256)),
        bytes(reversed(range(256))),
        b"\x00" * 1000,
        bytes(rng.getrandbits(8) for _ in range(100_000)),  # above MySQL's 64 KiB BLOB
        b"",
    ]
    mids = [driver.insert(make_message(body=b)) for b in bodies]
    for mid, body in zip(mids, bodies, strict=True):
        stored = driver.get(mid or 0)
        assert stored is not None and stored.body == body and type(stored.body) is bytes
    listed = driver.list("alice", "example.com", NOW)
    assert [r.body for r in listed] == bodies
    claimed = driver.claim("alice", "example.com", NOW, NOW + 30, "tok")
    assert [r.body for r in claimed] == bodies


def test_null_body_and_ctype_read_back_empty(backend: Backend, driver: SqlDriver) -> None:
    backend.sql(
        f"INSERT INTO {driver.layout.table} (username, domain, exp_time, body, ctype)"
        " VALUES ('alice', 'example.com', :exp, NULL, NULL)",
        exp=NOW + HOUR,
    )
    [row] = driver.list("alice", "example.com", NOW)
    assert row.body == b"" and row.ctype == ""


def test_unencodable_text_is_an_invalid_request(driver: SqlDriver) -> None:
    with pytest.raises(InvalidRequest):
        driver.insert(make_message(user="bad\udcff"))
    assert driver.insert(make_message()) is not None  # the connection is still usable


# ---- migration --------------------------------------------------------------------------------

OPENSIPS_DDL = {
    "postgresql": [
        """CREATE TABLE {t} (
            id SERIAL PRIMARY KEY NOT NULL,
            src_addr VARCHAR(255) DEFAULT '' NOT NULL, dst_addr VARCHAR(255) DEFAULT '' NOT NULL,
            username VARCHAR(64) DEFAULT '' NOT NULL, domain VARCHAR(64) DEFAULT '' NOT NULL,
            inc_time INTEGER DEFAULT 0 NOT NULL, exp_time INTEGER DEFAULT 0 NOT NULL,
            snd_time INTEGER DEFAULT 0 NOT NULL,
            ctype VARCHAR(255) DEFAULT NULL, body BYTEA DEFAULT NULL)""",
        "ALTER SEQUENCE {t}_id_seq MAXVALUE 2147483647 CYCLE",
        "CREATE INDEX {t}_account_idx ON {t} (username, domain)",
    ],
    "mysql": [
        """CREATE TABLE {t} (
            id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
            src_addr CHAR(255) DEFAULT '' NOT NULL, dst_addr CHAR(255) DEFAULT '' NOT NULL,
            username CHAR(64) DEFAULT '' NOT NULL, domain CHAR(64) DEFAULT '' NOT NULL,
            inc_time INT DEFAULT 0 NOT NULL, exp_time INT DEFAULT 0 NOT NULL,
            snd_time INT DEFAULT 0 NOT NULL,
            ctype CHAR(255) DEFAULT NULL, body BLOB DEFAULT NULL) ENGINE=InnoDB""",
        "CREATE INDEX account_idx ON {t} (username, domain)",
    ],
    "sqlite": [
        """CREATE TABLE {t} (
            id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
            src_addr CHAR(255) DEFAULT '' NOT NULL, dst_addr CHAR(255) DEFAULT '' NOT NULL,
            username CHAR(64) DEFAULT '' NOT NULL, domain CHAR(64) DEFAULT '' NOT NULL,
            inc_time INTEGER DEFAULT 0 NOT NULL, exp_time INTEGER DEFAULT 0 NOT NULL,
            snd_time INTEGER DEFAULT 0 NOT NULL,
            ctype CHAR(255) DEFAULT NULL, body BLOB DEFAULT NULL)""",
        "CREATE INDEX {t}_account_idx ON {t} (username, domain)",
    ],
}

_KAMAILIO_COLUMNS = """
    src_addr VARCHAR(255) DEFAULT '' NOT NULL, dst_addr VARCHAR(255) DEFAULT '' NOT NULL,
    username VARCHAR(64) DEFAULT '' NOT NULL, domain VARCHAR(64) DEFAULT '' NOT NULL,
    inc_time INTEGER DEFAULT 0 NOT NULL, exp_time INTEGER DEFAULT 0 NOT NULL,
    snd_time INTEGER DEFAULT 0 NOT NULL, ctype VARCHAR(32) DEFAULT 'text/plain' NOT NULL,
    body {blob}, extra_hdrs TEXT, callid VARCHAR(128) DEFAULT '' NOT NULL,
    status INTEGER DEFAULT 0 NOT NULL)"""

KAMAILIO_DDL = {
    "postgresql": [
        "CREATE TABLE {t} (id SERIAL PRIMARY KEY NOT NULL,"
        + _KAMAILIO_COLUMNS.format(blob="BYTEA"),
        "CREATE INDEX {t}_account_idx ON {t} (username, domain)",
    ],
    "mysql": [
        "CREATE TABLE {t} (id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,"
        + _KAMAILIO_COLUMNS.format(blob="BLOB"),
        "CREATE INDEX account_idx ON {t} (username, domain)",
    ],
    "sqlite": [
        "CREATE TABLE {t} (id INTEGER PRIMARY KEY NOT NULL,"
        + _KAMAILIO_COLUMNS.format(blob="BLOB"),
        "CREATE INDEX {t}_account_idx ON {t} (username, domain)",
    ],
}


@pytest.fixture(params=["opensips", "kamailio"])
def c_module_table(request: pytest.FixtureRequest, backend: Backend) -> Iterator[tuple[str, str]]:
    """A ``silo`` table as the C module's DDL makes it, with one row the module stored."""
    flavour: str = request.param
    table = unique_table("silo_c")
    ddl = (OPENSIPS_DDL if flavour == "opensips" else KAMAILIO_DDL)[backend.kind]
    for statement in ddl:
        backend.sql(statement.format(t=table))
    columns = "src_addr, dst_addr, username, domain, inc_time, exp_time, snd_time, ctype, body"
    values = ":src, :dst, :user, :domain, :inc, :exp, 0, :ctype, :body"
    if flavour == "kamailio":
        columns += ", extra_hdrs, callid"
        values += ", 'P-Asserted-Identity: <sip:bob@example.org>\r\n', 'call-1@host'"
    backend.sql(
        f"INSERT INTO {table} ({columns}) VALUES ({values})",
        src="sip:bob@example.org",
        dst="sip:alice@example.com",
        user="alice",
        domain="example.com",
        inc=NOW - 60,
        exp=NOW + HOUR,
        ctype="text/plain",
        body=b"from the C module \x00\xff",
    )
    yield flavour, table
    backend.sql(f"DROP TABLE IF EXISTS {table}")


def test_migrate_c_module_table(backend: Backend, c_module_table: tuple[str, str]) -> None:
    flavour, table = c_module_table
    [(old_id,)] = backend.sql(f"SELECT id FROM {table}")
    d = _open(backend, StoreLayout(table=table, mid="id"))
    try:
        with pytest.raises(StorageError, match="msilo migrate"):
            d.claim("alice", "example.com", NOW, NOW + 30, "tok")
        d.migrate()
        d.migrate()  # idempotent
        cols = backend.columns(table)
        assert {"lease_token", "lease_until", "attempts"} <= set(cols)
        indexed = backend.indexes(table)
        assert ["exp_time"] in indexed and ["snd_time"] in indexed
        assert len([ix for ix in indexed if ix[:2] == ["username", "domain"]]) == 1

        old = d.get(old_id)
        assert old is not None
        assert (old.src_addr, old.dst_addr, old.username, old.domain) == (
            "sip:bob@example.org",
            "sip:alice@example.com",
            "alice",
            "example.com",
        )
        assert (old.inc_time, old.exp_time, old.snd_time, old.attempts) == (
            NOW - 60,
            NOW + HOUR,
            0,
            0,
        )
        assert old.body == b"from the C module \x00\xff" and old.ctype == "text/plain"

        new_id = d.insert(make_message(body=b"new"), 10)
        assert new_id is not None and new_id > old_id
        got = d.claim("alice", "example.com", NOW, NOW + 30, "tok")
        assert [r.mid for r in got] == [old_id, new_id]
        assert d.release(old_id, "tok") is ReleaseResult.RELEASED
        assert [r.mid for r in d.claim("alice", "example.com", NOW, NOW + 30, "t2")] == [old_id]
        assert d.delete(old_id) and d.delete(new_id)
        assert d.count("alice", "example.com", NOW) == 0
        # the C module keeps writing its own columns beside libmsilo, and libmsilo reads them
        assert {"extra_hdrs", "callid"} <= set(backend.columns(table))
        assert d.schema_version() == SCHEMA_VERSION
        backend.sql(
            f"INSERT INTO {table} (src_addr, dst_addr, username, domain, inc_time, exp_time,"
            " snd_time, ctype, body) VALUES ('sip:c@example.org', 'sip:alice@example.com',"
            " 'alice', 'example.com', :inc, :exp, 0, 'text/plain', :body)",
            inc=NOW,
            exp=NOW + HOUR,
            body=b"C module after migrate",
        )
        [c_row] = d.claim("alice", "example.com", NOW, NOW + 30, "t3")
        assert c_row.body == b"C module after migrate" and c_row.attempts == 0
        assert d.delete(c_row.mid)
        if flavour == "kamailio":
            # extra NOT NULL columns took their defaults; ctype is only VARCHAR(32) here
            d.insert(make_message(user="carol"))
            [(callid, status)] = backend.sql(
                f"SELECT callid, status FROM {table} WHERE username = 'carol'"
            )
            assert (callid, status) == ("", 0)
            with pytest.raises(InvalidRequest, match="ctype"):
                d.insert(make_message(ctype="application/vnd.example+json; v=1"))
        if backend.kind != "sqlite":  # 32-bit INT time columns are left as they are
            with pytest.raises(InvalidRequest, match="exp_time"):
                d.insert(make_message(exp_time=2**31))
        if backend.kind == "mysql":  # BLOB holds 64 KiB - 1
            with pytest.raises(InvalidRequest, match="body"):
                d.insert(make_message(body=b"x" * 65536))
    finally:
        d.close()


def test_migrate_missing_table(backend: Backend) -> None:
    d = _open(backend, StoreLayout(table=unique_table("silo_none"), mid="id"))
    try:
        with pytest.raises(StorageError, match="does not exist"):
            d.migrate()
    finally:
        d.close()


def test_migrate_foreign_table(backend: Backend) -> None:
    table = unique_table("silo_x")
    backend.sql(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name VARCHAR(10))")
    d = _open(backend, StoreLayout(table=table, mid="id"))
    try:
        with pytest.raises(StorageError, match="src_addr"):
            d.migrate()
    finally:
        d.close()
        backend.sql(f"DROP TABLE {table}")


def test_migrate_own_table_changes_nothing(backend: Backend, driver: SqlDriver) -> None:
    mid = driver.insert(make_message())
    before = sorted(backend.indexes(driver.layout.table))
    driver.migrate()
    assert sorted(backend.indexes(driver.layout.table)) == before
    assert driver.get(mid or 0) is not None


def test_schema_versions_are_recorded_and_checked(backend: Backend, driver: SqlDriver) -> None:
    table = driver.layout.table
    assert backend.sql("SELECT version FROM msilo_version WHERE table_name = :t", t=table) == [
        (SCHEMA_VERSION,)
    ]

    def record(version: int | None) -> None:
        if version is None:  # judged by its columns: all there, so current
            backend.sql("DELETE FROM msilo_version WHERE table_name = :t", t=table)
        else:
            backend.sql(
                "UPDATE msilo_version SET version = :v WHERE table_name = :t", v=version, t=table
            )

    check_version_cycle(driver, record)
    record(1)
    fresh = _open(backend, driver.layout)  # a worker that does not create: refused on first use
    try:
        with pytest.raises(SchemaOutdated, match="msilo migrate"):
            fresh.count("alice", "example.com", NOW)
        driver.migrate()
        assert fresh.count("alice", "example.com", NOW) == 0  # and works once migrated
        assert fresh.schema_version() == SCHEMA_VERSION
    finally:
        fresh.close()


def test_migrate_api_takes_a_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'api.db'}"
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:  # libmsilo's first schema: leases, no Kamailio columns
        conn.execute(
            sa.text(
                "CREATE TABLE silo (mid INTEGER PRIMARY KEY AUTOINCREMENT, src_addr VARCHAR(255)"
                " NOT NULL DEFAULT '', dst_addr VARCHAR(255) NOT NULL DEFAULT '', username"
                " VARCHAR(64) NOT NULL DEFAULT '', domain VARCHAR(64) NOT NULL DEFAULT '',"
                " inc_time BIGINT NOT NULL DEFAULT 0, exp_time BIGINT NOT NULL DEFAULT 0,"
                " snd_time BIGINT NOT NULL DEFAULT 0, ctype VARCHAR(255), body BLOB,"
                " lease_token VARCHAR(64), lease_until BIGINT, attempts INTEGER NOT NULL"
                " DEFAULT 0)"
            )
        )
    engine.dispose()
    assert libmsilo.migrate(url) == libmsilo.Migration(1, SCHEMA_VERSION)
    again = libmsilo.migrate(url)
    assert again == libmsilo.Migration(SCHEMA_VERSION, SCHEMA_VERSION) and not again.changed
    with libmsilo.Silo.from_settings(libmsilo.MsiloSettings(db_url=url)) as silo:
        assert silo.driver.insert(make_message()) is not None


def test_every_schema_version_has_its_sql_step() -> None:
    assert sorted(VERSION_COLUMNS) == sorted(VERSIONS) == list(range(1, SCHEMA_VERSION + 1))


def test_drop_schema_removes_the_version_table_with_its_last_row(backend: Backend) -> None:
    drivers = [_open(backend, StoreLayout(table=unique_table("silo_"))) for _ in range(2)]
    try:
        for d in drivers:
            d.create_schema()
        drivers[0].drop_schema()
        assert drivers[0].schema_version() is None and drivers[1].schema_version() is not None
        with backend.engine.connect() as conn:
            assert sa.inspect(conn).has_table("msilo_version")
        drivers[1].drop_schema()
        if backend.kind == "sqlite":  # a new database file: no other table's row is left
            with backend.engine.connect() as conn:
                assert not sa.inspect(conn).has_table("msilo_version")
    finally:
        for d in drivers:
            d.close()


# ---- errors and connections -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["postgresql://root@127.0.0.1:1/test", "mysql://root@127.0.0.1:1/test"]
)
def test_unreachable_server_is_storage_unavailable(url: str) -> None:
    d = open_sql(url, StoreLayout(table="silo"), DriverOptions(timeout=2))
    with pytest.raises(StorageUnavailable) as info:
        d.count("alice", "example.com", NOW)
    assert info.value.__cause__ is not None
    with pytest.raises(StorageUnavailable):
        d.create_schema()
    d.close()


def test_sqlite_unopenable_file_is_storage_unavailable(tmp_path: Path) -> None:
    d = open_sql(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}", StoreLayout(), DriverOptions())
    with pytest.raises(StorageUnavailable):
        d.count("alice", "example.com", NOW)
    d.close()


def test_sql_error_is_storage_error_with_cause(backend: Backend, driver: SqlDriver) -> None:
    driver.insert(make_message())
    backend.sql(f"DROP TABLE {driver.layout.table}")
    with pytest.raises(StorageError) as info:
        driver.count("alice", "example.com", NOW)
    assert not isinstance(info.value, StorageUnavailable)
    assert info.value.__cause__ is not None
    driver.create_schema()  # the driver still works
    assert driver.count("alice", "example.com", NOW) == 0


def test_closed_driver_refuses_work(backend: Backend) -> None:
    d = _open(backend, StoreLayout(table=unique_table("silo_")))
    d.create_schema()
    d.drop_schema()
    d.close()
    with pytest.raises(StorageError, match="closed"):
        d.count("alice", "example.com", NOW)
    with pytest.raises(StorageError, match="closed"):
        d.create_schema()


def _session_id(backend: Backend, d: SqlDriver) -> int:
    query = "SELECT pg_backend_pid()" if backend.kind == "postgresql" else "SELECT CONNECTION_ID()"
    conn = d._pool.checkout()
    try:
        conn.cursor.execute(query)
        return int(conn.cursor.fetchone()[0])
    finally:
        d._pool.checkin(conn)


def _kill_session(backend: Backend, session: int) -> None:
    if backend.kind == "postgresql":
        backend.sql("SELECT pg_terminate_backend(:p)", p=session)
        alive = "SELECT count(*) FROM pg_stat_activity WHERE pid = :p"
    else:
        backend.sql(f"KILL {session}")
        alive = "SELECT count(*) FROM information_schema.processlist WHERE id = :p"
    for _ in range(200):  # wait until the server has closed it
        if backend.sql(alive, p=session)[0][0] == 0:
            return
        time.sleep(0.05)
    raise AssertionError("the session did not end")


def test_driver_recovers_after_the_server_drops_its_connection(
    backend: Backend, driver: SqlDriver
) -> None:
    if backend.kind == "sqlite":
        pytest.skip("SQLite has no server connection to lose")
    mid = driver.insert(make_message())
    first = _session_id(backend, driver)
    _kill_session(backend, first)
    assert driver.get(mid or 0) is not None  # a new connection, transparently
    assert _session_id(backend, driver) != first


def test_lost_connection_mid_step_is_storage_unavailable(
    backend: Backend, driver: SqlDriver
) -> None:
    if backend.kind == "sqlite":
        pytest.skip("SQLite has no server connection to lose")
    driver.insert(make_message())
    session = _session_id(backend, driver)

    def killed_first(conn: Any) -> int:
        _kill_session(backend, session)
        conn.cursor.execute("SELECT 1")
        conn.cursor.fetchall()
        return 0

    with pytest.raises(StorageUnavailable):
        driver._run(killed_first)
    assert driver.count("alice", "example.com", NOW) == 1


class _Deadlock(Exception):
    sqlstate = "40P01"


def test_deadlocks_are_retried_a_bounded_number_of_times(driver: SqlDriver) -> None:
    assert is_retryable(_Deadlock())
    assert is_retryable(pymysql.err.OperationalError(1213, "Deadlock found"))
    assert not is_retryable(pymysql.err.OperationalError(1205, "Lock wait timeout"))
    assert not is_retryable(ValueError("x"))
    calls: list[int] = []

    def flaky(conn: Any) -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _Deadlock("deadlock detected")
        return "done"

    # One step (what every storage_step method runs) retries what the error table calls
    # retryable.
    assert driver._step(lambda: driver._run(flaky)) == "done" and len(calls) == 3

    def always(conn: Any) -> str:
        calls.append(1)
        raise _Deadlock("deadlock detected")

    calls.clear()
    with pytest.raises(_Deadlock):
        driver._step(lambda: driver._run(always))
    assert len(calls) == _TRIES
    assert driver.insert(make_message()) is not None


def _count_in_child(d: SqlDriver, results: Any) -> None:
    results.put(d.count("alice", "example.com", NOW))
    d.close()  # closing an inherited connection would end the parent's session


def test_forked_child_leaves_the_parents_connection_alone(
    backend: Backend, driver: SqlDriver
) -> None:
    if backend.kind == "sqlite":
        pytest.skip("no server session to protect")
    driver.insert(make_message())
    before = _session_id(backend, driver)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_count_in_child, args=(driver, results))
    child.start()
    assert results.get(timeout=60) == 1
    child.join(timeout=60)
    assert child.exitcode == 0
    assert _session_id(backend, driver) == before  # still the same, unharmed session
    assert driver.count("alice", "example.com", NOW) == 1


def test_create_schema_finishes_missing_indexes(backend: Backend, driver: SqlDriver) -> None:
    table = driver.layout.table
    backend.sql(f"DROP INDEX {table}_exp_idx" + (f" ON {table}" if backend.kind == "mysql" else ""))
    assert ["exp_time"] not in backend.indexes(table)
    driver.create_schema()
    assert ["exp_time"] in backend.indexes(table)


def test_idle_connections_are_pinged_and_replaced_when_dead(
    backend: Backend, driver: SqlDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver.insert(make_message())
    pings: list[int] = []
    real_ping = driver._dialect.do_ping

    def ping(dbapi_conn: Any) -> bool:
        pings.append(1)
        if len(pings) == 1:
            raise OSError("pretend the server went away")
        return bool(real_ping(dbapi_conn))

    first = driver._pool.checkout()
    driver._pool.checkin(first)
    monkeypatch.setattr(driver._pool, "_ping_after", -1.0)  # every idle connection is "old"
    monkeypatch.setattr(driver._dialect, "do_ping", ping)
    assert driver.count("alice", "example.com", NOW) == 1  # first ping fails: reconnected
    assert driver.count("alice", "example.com", NOW) == 1
    assert len(pings) >= 2
    second = driver._pool.checkout()
    assert second is not first
    driver._pool.checkin(second)
