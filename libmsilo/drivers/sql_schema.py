"""The ``silo`` table for the SQL driver: its SQLAlchemy definition, value limits, and the
columns and indexes a migration adds (:mod:`.sql_migrate` runs them).

The table keeps the column names and meaning of the OpenSIPS (version 6) and Kamailio (version 8)
``silo`` tables, with 64-bit times, three lease columns and Kamailio's ``extra_hdrs`` and
``callid``, so libmsilo can share one table with a C server once ``migrate`` has run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.schema import CreateColumn

from ..errors import InvalidRequest, StorageError
from .base import LEASE_FIELDS, MESSAGE_FIELDS, NewMessage, StoreLayout

__all__ = [
    "LEASE_FIELDS",
    "MIGRATED_FIELDS",
    "ROW_FIELDS",
    "VERSION_COLUMNS",
    "ValueLimits",
    "add_columns",
    "build_table",
    "create_table",
    "drop_table",
    "ensure_indexes",
    "limits_from_table",
    "mysql_collation",
    "reflect_limits",
]

#: Every column, in :class:`StoredMessage` positional field order (rows are built from this).
ROW_FIELDS = (*MESSAGE_FIELDS, "mid", *LEASE_FIELDS)
#: The columns each libmsilo schema version adds to the table (see :mod:`.schema_version`);
#: version 0 is a C module's table, which has none of them.
VERSION_COLUMNS: dict[int, tuple[str, ...]] = {
    1: LEASE_FIELDS,
    2: ("extra_hdrs", "callid"),
}
#: Every column a migration adds; the others make a table a ``silo`` table.
MIGRATED_FIELDS = tuple(f for fields in VERSION_COLUMNS.values() for f in fields)

_TEXT_FIELDS = ("src_addr", "dst_addr", "username", "domain", "ctype", "callid")
_TIME_FIELDS = ("inc_time", "exp_time", "snd_time")
# Each index is "present" when some index starts with these columns (by field), whatever its name.
_INDEX_PREFIXES = {
    "owner": ("username", "domain"),
    "exp": ("exp_time",),
    "snd": ("snd_time",),
}
# MySQL BLOB types have no length attribute once reflected; their byte limits are fixed.
_MYSQL_BLOB_BYTES = {
    "TINYBLOB": 2**8 - 1,
    "BLOB": 2**16 - 1,
    "MEDIUMBLOB": 2**24 - 1,
    "LONGBLOB": 2**32 - 1,
}


def _index_name(table: str, suffix: str) -> str:
    """``<table>_<suffix>``, shortened with a hash to stay within 63 characters (PostgreSQL)."""
    name = f"{table}_{suffix}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha1(table.encode()).hexdigest()[:8]
    return f"{table[:40]}_{digest}_{suffix}"


def build_table(
    layout: StoreLayout, metadata: sa.MetaData, collation: str | None = None
) -> sa.Table:
    """The ``silo`` table named by ``layout``; column keys are the :class:`StoreLayout` field
    names. ``collation`` is the MySQL table collation (only used when creating it)."""
    mysql_kw: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}
    if collation:
        mysql_kw["mysql_collate"] = collation

    def text(field: str, length: int) -> sa.Column[Any]:
        return sa.Column(
            getattr(layout, field), sa.String(length), key=field, nullable=False, server_default=""
        )

    def time(field: str) -> sa.Column[Any]:
        return sa.Column(
            getattr(layout, field),
            sa.BigInteger(),
            key=field,
            nullable=False,
            server_default=sa.text("0"),
        )

    table = sa.Table(
        layout.table,
        metadata,
        # INTEGER PRIMARY KEY AUTOINCREMENT on SQLite: a 64-bit rowid that is never reused.
        sa.Column(
            layout.mid,
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            key="mid",
            primary_key=True,
            autoincrement=True,
        ),
        text("src_addr", 255),
        text("dst_addr", 255),
        text("username", 64),
        text("domain", 64),
        time("inc_time"),
        time("exp_time"),
        time("snd_time"),
        sa.Column(layout.ctype, sa.String(255), key="ctype", nullable=True),
        # MySQL's BLOB stops at 64 KiB; bodies of any size up to the packet limit must fit.
        sa.Column(
            layout.body,
            sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"),
            key="body",
            nullable=True,
        ),
        sa.Column(layout.lease_token, sa.String(64), key="lease_token", nullable=True),
        sa.Column(layout.lease_until, sa.BigInteger(), key="lease_until", nullable=True),
        sa.Column(
            layout.attempts,
            sa.Integer(),
            key="attempts",
            nullable=False,
            server_default=sa.text("0"),
        ),
        # Kamailio's columns, as its table has them (MySQL TEXT takes no literal default).
        sa.Column(layout.extra_hdrs, sa.Text(), key="extra_hdrs", nullable=True),
        text("callid", 128),
        sqlite_autoincrement=True,
        **mysql_kw,
    )
    for suffix, fields in _INDEX_PREFIXES.items():
        keys = (*fields, "mid") if suffix == "owner" else fields
        sa.Index(_index_name(layout.table, f"{suffix}_idx"), *(table.c[k] for k in keys))
    return table


def mysql_collation(dialect: Dialect) -> str:
    """A binary, NO PAD utf8mb4 collation: user parts are case-sensitive and ``'a'`` must not
    equal ``'a '`` (MySQL's PAD SPACE collations compare trailing spaces away)."""
    version = getattr(dialect, "server_version_info", None) or (0,)
    if getattr(dialect, "is_mariadb", False):
        return "utf8mb4_nopad_bin" if version >= (10, 2) else "utf8mb4_bin"
    return "utf8mb4_0900_bin" if version >= (8, 0) else "utf8mb4_bin"


@dataclass(frozen=True, slots=True)
class ValueLimits:
    """What the table's columns can hold; checked before a row is written."""

    text: tuple[tuple[str, int], ...]  # (field, max characters)
    ints: tuple[tuple[str, int, int], ...]  # (field, min, max)
    body: int | None  # max bytes, None when the backend has no practical column limit

    def check(self, msg: NewMessage) -> None:
        """Raise :class:`InvalidRequest` when a value of ``msg`` does not fit its column."""
        for field, limit in self.text:
            value: str = getattr(msg, field)
            if len(value) > limit:
                raise InvalidRequest(
                    f"{field} is {len(value)} characters long; the column holds {limit}"
                )
        for field, low, high in self.ints:
            number: int = getattr(msg, field)
            if not low <= number <= high:
                raise InvalidRequest(f"{field}={number} does not fit the column [{low}, {high}]")
        if self.body is not None and len(msg.body) > self.body:
            raise InvalidRequest(f"body is {len(msg.body)} bytes; the column holds {self.body}")


def _int_range(column_type: sa.types.TypeEngine[Any], dialect_name: str) -> tuple[int, int]:
    if dialect_name == "sqlite" or isinstance(column_type, sa.BigInteger):
        bits = 64  # SQLite integers are always 64-bit, whatever the declared type
    elif isinstance(column_type, sa.SmallInteger):
        bits = 16
    else:
        bits = 32
    if getattr(column_type, "unsigned", False):
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _body_limit(column_type: sa.types.TypeEngine[Any], dialect_name: str) -> int | None:
    if dialect_name not in ("mysql", "mariadb"):
        return None  # bytea and SQLite BLOBs hold far more than a SIP message
    fixed = _MYSQL_BLOB_BYTES.get(type(column_type).__name__.upper())
    length = getattr(column_type, "length", None)
    return length if isinstance(length, int) and fixed is None else fixed


def limits_from_table(table: sa.Table, dialect_name: str) -> ValueLimits:
    """The :class:`ValueLimits` of ``table`` (built or reflected) on ``dialect_name``."""
    text = []
    for field in _TEXT_FIELDS:
        length = getattr(table.c[field].type, "length", None)
        if isinstance(length, int):
            text.append((field, length))
    ints = tuple((f, *_int_range(table.c[f].type, dialect_name)) for f in _TIME_FIELDS)
    return ValueLimits(tuple(text), ints, _body_limit(table.c["body"].type, dialect_name))


def _reflect(conn: Connection, layout: StoreLayout) -> sa.Table | None:
    """The existing table with column keys set to field names, or None when it does not exist."""
    if not sa.inspect(conn).has_table(layout.table):
        return None
    reflected = sa.Table(layout.table, sa.MetaData(), autoload_with=conn)
    by_name = {c.name.lower(): c for c in reflected.columns}
    table = sa.Table(layout.table, sa.MetaData())
    for field in ROW_FIELDS:
        name = getattr(layout, field)
        column = by_name.get(name.lower())
        if column is not None:
            table.append_column(sa.Column(column.name, column.type, key=field))
    return table


def reflect_limits(conn: Connection, layout: StoreLayout) -> ValueLimits | None:
    """The limits of the existing table; None when it does not exist yet.

    Raises :class:`StorageError` when a column is missing (wrong layout, or not migrated)."""
    table = _reflect(conn, layout)
    if table is None:
        return None
    missing = [getattr(layout, f) for f in ROW_FIELDS if f not in table.c]
    if missing:
        migrated = {getattr(layout, f) for f in MIGRATED_FIELDS}
        hint = "run `msilo migrate`" if set(missing) <= migrated else "check the column names"
        raise StorageError(f"table {layout.table!r} has no column {', '.join(missing)} ({hint})")
    return limits_from_table(table, conn.dialect.name)


def create_table(conn: Connection, layout: StoreLayout) -> None:
    """Create the table unless it exists, then any of its indexes that is missing (DDL is not
    transactional everywhere: a create interrupted between statements is finished here)."""
    dialect = conn.dialect
    collation = mysql_collation(dialect) if dialect.name in ("mysql", "mariadb") else None
    table = build_table(layout, sa.MetaData(), collation)
    table.create(conn, checkfirst=True)
    ensure_indexes(conn, layout, table)


def drop_table(conn: Connection, layout: StoreLayout) -> None:
    """Drop the table (its indexes go with it); nothing when it does not exist."""
    build_table(layout, sa.MetaData()).drop(conn, checkfirst=True)


def ensure_indexes(conn: Connection, layout: StoreLayout, table: sa.Table) -> list[str]:
    """Create the owner, expiry and send-time indexes that no existing index already covers
    (one starting with the same columns counts, whatever its name); the names created."""
    indexed = [
        tuple(str(n).lower() for n in ix["column_names"])
        for ix in sa.inspect(conn).get_indexes(layout.table)
    ]
    indexes = {str(ix.name): ix for ix in table.indexes}
    added = []
    for suffix, fields in _INDEX_PREFIXES.items():
        prefix = tuple(getattr(layout, f).lower() for f in fields)
        if any(cols[: len(prefix)] == prefix for cols in indexed):
            continue
        name = _index_name(layout.table, f"{suffix}_idx")
        indexes[name].create(conn)
        added.append(name)
    return added


def add_columns(conn: Connection, layout: StoreLayout, fields: tuple[str, ...]) -> list[str]:
    """Add those of ``fields``' columns the existing table lacks (``ALTER TABLE … ADD COLUMN``);
    the names added."""
    existing = {c["name"].lower() for c in sa.inspect(conn).get_columns(layout.table)}
    table = build_table(layout, sa.MetaData())
    preparer = conn.dialect.identifier_preparer
    added: list[str] = []
    for field in fields:
        column = table.c[field]
        if column.name.lower() in existing:
            continue
        spec = CreateColumn(column).compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE {preparer.format_table(table)} ADD COLUMN {spec}"))
        added.append(column.name)
    return added
