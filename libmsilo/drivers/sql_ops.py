"""The SQL driver's steps: SQLAlchemy Core statements compiled once per dialect, run on a DBAPI
cursor of a connection in autocommit mode.

Each step is one statement when the database makes that atomic, else one short transaction:

- claims: PostgreSQL ``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING``;
  SQLite the same ``UPDATE … RETURNING`` (one writer at a time); MySQL/MariaDB, which has no
  ``UPDATE … RETURNING``, ``SELECT … FOR UPDATE SKIP LOCKED`` then ``UPDATE`` in a transaction.
- quota: ``INSERT … SELECT … FROM (SELECT count(*) …) WHERE n < max`` counts and inserts in
  one statement, and a per-owner lock taken in an earlier statement serializes the owner's
  inserts, so the count always sees the rows other writers committed (PostgreSQL
  ``pg_advisory_xact_lock``, MySQL ``GET_LOCK``; SQLite needs none, having one writer).
  Without the lock two writers could both count ``max - 1`` and both insert.
- batch acks and releases: ``DELETE … WHERE id IN (…)`` (``RETURNING id``; MySQL/MariaDB
  lock and read the rows first); releases without a ``max_attempts`` as one ``UPDATE … WHERE
  id IN (…) AND lease_token = CASE WHEN id = … THEN … END RETURNING id`` (each row's own
  token), else (and on MySQL/MariaDB) one transaction that locks the rows and decides each as
  ``release`` does.
- large bodies on MySQL/MariaDB: PyMySQL sends bytes as a hex literal (it has no binary
  protocol and no raw ``_binary'…'`` escaping), so one statement carries a body of at most
  about half of ``max_allowed_packet``; that limit is a server global (read-only per session
  on MariaDB), which a driver should not change. A larger body is written in one transaction:
  ``INSERT`` with its first part, then ``UPDATE … SET body = CONCAT(body, part)`` for the rest,
  so the row is never seen half-written. A stored row must still travel back in one packet,
  so bodies above ``max_allowed_packet`` minus a margin for the other columns are refused.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy import bindparam as bp
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler

from ..errors import StorageError
from .base import MESSAGE_FIELDS, ReleaseResult, StoredMessage
from .sql_schema import ROW_FIELDS

__all__ = ["NO_LIMIT", "SqlOps"]

#: LIMIT value meaning "all rows" (valid on all three databases).
NO_LIMIT = 2**63 - 1
_LEASE_SQL_CACHE_MAX = 256
# SQLAlchemy's placeholder for an "expanding" IN list, filled in by the driver per call.
_IDS_MARK = "__[POSTCOMPILE_ids]"
# Room in a MySQL packet for everything but the body: the SQL text and the other columns.
_PACKET_MARGIN = 64 * 1024
_MULTI_MAX = 256  # most rows in one multi-row INSERT
_ROW_MARGIN = 2048  # bytes counted per row besides its body when filling one


class _Sql:
    """One compiled statement: its text and the values of binds SQLAlchemy added itself."""

    __slots__ = ("defaults", "text")

    def __init__(self, stmt: sa.ClauseElement, dialect: Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        self.text = compiled.string
        if "POSTCOMPILE" in self.text:  # would need SQLAlchemy's runtime expansion
            raise RuntimeError(f"statement needs runtime expansion: {self.text}")
        # binds made from literal values (e.g. SQLite's "OFFSET 0"); the driver's own are required
        self.defaults = {
            name: bind.effective_value
            for bind, name in compiled.bind_names.items()
            if not bind.required
        }

    def run(self, cur: Any, params: dict[str, Any]) -> None:
        cur.execute(self.text, {**self.defaults, **params} if self.defaults else params)


_BYTEA_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")

# Positions in a row selected as ROW_FIELDS.
_BODY, _CTYPE = ROW_FIELDS.index("body"), ROW_FIELDS.index("ctype")
_EXTRA, _CALLID = ROW_FIELDS.index("extra_hdrs"), ROW_FIELDS.index("callid")
_MID, _TOKEN = ROW_FIELDS.index("mid"), ROW_FIELDS.index("lease_token")
_ATTEMPTS = ROW_FIELDS.index("attempts")
assert (_BODY, _CTYPE, _EXTRA, _CALLID) == (4, 5, 9, 10) and _TOKEN == _MID + 1  # _row's layout


def _text_column(value: Any) -> str:
    """A text column a C server may leave NULL or write as a BLOB (Kamailio's extra_hdrs); on
    PostgreSQL Kamailio's db_postgres writes that BLOB into the text column in bytea hex form
    (``\\x50...``), which no header line can look like."""
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "surrogateescape")
    text = str(value)
    if text.startswith("\\x") and _BYTEA_HEX.fullmatch(text, 2):
        return bytes.fromhex(text[2:]).decode("utf-8", "surrogateescape")
    return text


def _row(r: Any) -> StoredMessage:
    body, ctype, extra, callid = r[_BODY], r[_CTYPE], r[_EXTRA], r[_CALLID]
    plain_extra = type(extra) is str and not extra.startswith("\\x")
    if type(body) is bytes and ctype is not None and plain_extra and callid is not None:
        return StoredMessage(*r)  # the usual case: columns are selected in field order
    # NULL body / ctype (OpenSIPS stores body-less requests) read back as empty values; so do
    # the extra_hdrs and callid a C server left NULL (or wrote as a BLOB)
    body = body if type(body) is bytes else bytes(body or b"")
    fixed: tuple[Any, ...] = (
        *r[:4], body, ctype or "", *r[6:9], _text_column(extra), _text_column(callid), *r[11:],
    )  # fmt: skip
    return StoredMessage(*fixed)


def _leased(r: Any, token: str, lease_until: int) -> StoredMessage:
    return _row((*r[:_TOKEN], token, lease_until, r[_ATTEMPTS]))


def _ids(mids: list[int]) -> dict[str, Any]:
    """The binds m0, m1, … of an id list."""
    return {f"m{i}": mid for i, mid in enumerate(mids)}


def _release_binds(items: list[tuple[int, str | None, bool]]) -> dict[str, Any]:
    """The binds of :meth:`SqlOps._release_update` for ``items`` (mid, token, to_offline)."""
    binds: dict[str, Any] = {}
    for i, (mid, token, offline) in enumerate(items):
        binds.update({f"m{i}": mid, f"t{i}": token, f"s{i}": 0 if offline else None})
    return binds


class SqlOps:
    """Every driver step for one table on one (initialized) dialect.

    ``max_packet`` is MySQL's ``max_allowed_packet``; with it, :attr:`max_body` is the largest
    body the server can take and give back (None: no limit besides the column's)."""

    def __init__(
        self,
        table: sa.Table,
        dialect: Dialect,
        timeout: float,
        returning: bool | None = None,
        *,
        max_packet: int | None = None,
        id_step: int | None = None,
    ) -> None:
        self.table = table
        self.dialect = dialect
        self.kind = "mysql" if dialect.name in ("mysql", "mariadb") else dialect.name
        self.timeout = timeout
        c = table.c
        cols = [c[f] for f in ROW_FIELDS]
        owner = sa.and_(c.username == bp("u"), c.domain == bp("d"))
        free = sa.or_(c.lease_token.is_(None), c.lease_until <= bp("now"))
        live = c.exp_time > bp("now")
        self._begin = "BEGIN IMMEDIATE" if self.kind == "sqlite" else "BEGIN"
        version = getattr(dialect, "server_version_info", None) or (0,)
        if self.kind == "mysql":
            maria = getattr(dialect, "is_mariadb", False)
            skip = version >= ((10, 6) if maria else (8, 0, 1))
        else:
            skip = True  # PostgreSQL 9.5+; SQLite ignores FOR UPDATE
        # UPDATE … RETURNING: PostgreSQL, SQLite 3.35+; never MySQL / MariaDB.
        if returning is None:
            returning = self.kind != "mysql" and bool(dialect.update_returning)
        self.returning = returning

        def compile_(stmt: sa.ClauseElement) -> _Sql:
            return _Sql(stmt, dialect)

        def pick(where: sa.ColumnElement[bool]) -> sa.Select[Any]:
            return (
                sa.select(c.mid)
                .where(where)
                .order_by(c.mid)
                .limit(bp("lim"))
                .with_for_update(skip_locked=skip)
            )

        due = sa.and_(c.snd_time > 0, c.snd_time <= bp("now"))
        claim_where = sa.and_(owner, c.snd_time == 0, live, free)
        due_where = sa.and_(due, live, free)
        lease: dict[str, Any] = {"lease_token": bp("tok"), "lease_until": bp("lu")}
        if self.returning:
            self.claim_sql = compile_(
                sa.update(table)
                .where(c.mid.in_(pick(claim_where).scalar_subquery()))
                .values(**lease)
                .returning(*cols)
            )
            self.due_sql = compile_(
                sa.update(table)
                .where(c.mid.in_(pick(due_where).scalar_subquery()))
                .values(**lease)
                .returning(*cols)
            )
        else:

            def locking(where: sa.ColumnElement[bool]) -> sa.Select[Any]:
                return (
                    sa.select(*cols)
                    .where(where)
                    .order_by(c.mid)
                    .limit(bp("lim"))
                    .with_for_update(skip_locked=skip)
                )

            self.claim_sql = compile_(locking(claim_where))
            self.due_sql = compile_(locking(due_where))
        # The id list of a MySQL claim varies in length: compiled once with an expanding bind,
        # whose marker is replaced by one named placeholder per id.
        lease_ids = sa.update(table).where(c.mid.in_(bp("ids", expanding=True))).values(**lease)
        self._lease_template = lease_ids.compile(dialect=dialect).string
        if _IDS_MARK not in self._lease_template:
            raise RuntimeError(f"unexpected IN-list rendering: {self._lease_template}")
        self._bind_mark = ":{}" if dialect.paramstyle == "named" else "%({})s"
        self._lease_sql: dict[int, str] = {}
        # Batch acks: DELETE … WHERE id IN (…) [RETURNING id], the same way.
        self.delete_returning = bool(dialect.delete_returning)
        by_ids = sa.delete(table).where(c.mid.in_(bp("ids", expanding=True)))
        returned = by_ids.returning(c.mid) if self.delete_returning else by_ids
        self._delete_template = returned.compile(dialect=dialect).string
        self._delete_sql: dict[int, str] = {}
        pick_ids = sa.select(c.mid).where(c.mid.in_(bp("ids", expanding=True))).with_for_update()
        self._pick_template = pick_ids.compile(dialect=dialect).string
        self._pick_sql: dict[int, str] = {}
        # Batch releases: the rows' lease state, locked in id order; the dropped rows' DELETE;
        # one UPDATE of the released rows, compiled per row count (_release_update).
        state_ids = (
            sa.select(c.mid, c.lease_token, c.attempts)
            .where(c.mid.in_(bp("ids", expanding=True)))
            .order_by(c.mid)
            .with_for_update()
        )
        self._state_template = state_ids.compile(dialect=dialect).string
        self._state_sql: dict[int, str] = {}
        self._drop_template = by_ids.compile(dialect=dialect).string
        self._drop_sql: dict[int, str] = {}
        self._release_sql: dict[int, str] = {}

        values = {f: bp(f, type_=c[f].type) for f in MESSAGE_FIELDS}
        insert = sa.insert(table).values(**values)
        # The count sits in a derived table: MySQL refuses the target table in a WHERE
        # subquery of INSERT … SELECT, and SQLite before 3.39 refuses HAVING without GROUP BY.
        live_count = (
            sa.select(sa.func.count().label("n"))
            .select_from(table)
            .where(owner, c.exp_time > bp("inc_time"))
            .subquery("q")
        )
        counted = sa.select(*values.values()).where(live_count.c.n < bp("max"))
        quota = sa.insert(table).from_select(list(MESSAGE_FIELDS), counted)
        if self.kind == "postgresql":
            insert, quota = insert.returning(c.mid), quota.returning(c.mid)
        self.insert_sql = compile_(insert)
        self.quota_sql = compile_(quota)
        self.max_body: int | None = None
        self._body_part = NO_LIMIT  # bodies longer than this are sent in parts (MySQL)
        if self.kind == "mysql" and max_packet and max_packet > 2 * _PACKET_MARGIN:
            self.max_body = max_packet - _PACKET_MARGIN
            self._body_part = self.max_body // 2  # hex: two bytes on the wire per body byte
        # MySQL batches: one multi-row INSERT when its rows get consecutive ids (``id_step``
        # apart, from the first id the server reports); compiled per row count.
        self._id_step = id_step if self.kind == "mysql" else None
        self._multi_sql: dict[int, str] = {}
        part = bp("part", type_=c.body.type)
        append = (
            sa.update(table).where(c.mid == bp("mid")).values(body=sa.func.concat(c.body, part))
        )
        self.append_sql = compile_(append)
        if self.kind == "postgresql":
            key = bp("key", type_=sa.BigInteger)
            self.lock_sql = compile_(sa.select(sa.func.pg_advisory_xact_lock(key)))
        elif self.kind == "mysql":
            self.lock_sql = compile_(sa.select(sa.func.get_lock(bp("key"), bp("wait"))))
            self.unlock_sql = compile_(sa.select(sa.func.release_lock(bp("key"))))

        self.get_sql = compile_(sa.select(*cols).where(c.mid == bp("mid")))
        self.count_sql = compile_(sa.select(sa.func.count()).select_from(table).where(owner, live))
        held = sa.and_(c.lease_token.is_not(None), c.lease_until > bp("now"))
        self.totals_sql = compile_(
            sa.select(sa.func.count(), sa.func.count(sa.case((held, 1)))).where(live)
        )
        self.list_sql = compile_(
            sa.select(*cols).where(owner, live).order_by(c.mid).limit(bp("lim"))
        )
        self.delete_sql = compile_(sa.delete(table).where(c.mid == bp("mid")))
        self.purge_sql = compile_(sa.delete(table).where(owner))
        self.expired_sql = compile_(sa.delete(table).where(c.exp_time <= bp("now")))
        # release: clear the lease held by the token (any lease when no token), count the attempt
        self.release_sql: dict[tuple[bool, bool], _Sql] = {}
        for by_token in (False, True):
            for offline in (False, True):
                held = c.lease_token == bp("tok") if by_token else c.lease_token.is_not(None)
                changes: dict[str, Any] = {
                    "lease_token": sa.null(),
                    "lease_until": sa.null(),
                    "attempts": c.attempts + 1,
                }
                if offline:
                    changes["snd_time"] = sa.literal_column("0")
                stmt = sa.update(table).where(c.mid == bp("mid"), held).values(**changes)
                self.release_sql[by_token, offline] = compile_(stmt)
        self.lease_state_sql = compile_(
            sa.select(c.lease_token, c.attempts).where(c.mid == bp("mid")).with_for_update()
        )

    # ---- helpers ------------------------------------------------------------------------------

    def owner_key(self, username: str, domain: str) -> bytes:
        """A digest naming the owner's quota lock (unique per table)."""
        text = f"{self.table.name}\0{username}\0{domain}"
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def _lease_update(self, count: int) -> str:
        """``UPDATE … SET lease … WHERE id IN (<count> binds m0, m1, …)``."""
        return self._in_list(self._lease_template, self._lease_sql, count)

    def _in_list(self, template: str, cache: dict[int, str], count: int) -> str:
        """``template`` with its id list as ``count`` binds m0, m1, …"""
        text = cache.get(count)
        if text is None:
            marks = ", ".join(self._bind_mark.format(f"m{i}") for i in range(count))
            text = template.replace(_IDS_MARK, marks)
            if len(cache) < _LEASE_SQL_CACHE_MAX:
                cache[count] = text
        return text

    # ---- steps --------------------------------------------------------------------------------

    def insert(self, cur: Any, conn: Any, params: dict[str, Any], max_messages: int) -> int | None:
        """Insert a row (``params`` holds the message fields); None when at quota."""
        if max_messages <= 0:
            if len(params["body"]) > self._body_part:
                return self._insert_in_parts(self.insert_sql, cur, conn, params)
            self.insert_sql.run(cur, params)
            return self._inserted(cur)
        params["max"] = max_messages
        params["u"], params["d"] = params["username"], params["domain"]
        key = self.owner_key(params["u"], params["d"])
        if self.kind == "postgresql":
            cur.execute(self._begin)
            self.lock_sql.run(cur, {"key": int.from_bytes(key[:8], "big", signed=True)})
            self.quota_sql.run(cur, params)
            mid = self._inserted(cur)
            conn.commit()
            return mid
        if self.kind == "mysql":
            # GET_LOCK is held by the session, not the transaction: released in ``finally``,
            # after the commit of a large body's transaction.
            name = "msilo:" + key.hex()
            self.lock_sql.run(cur, {"key": name, "wait": self.timeout})
            got = cur.fetchone()
            if not got or got[0] != 1:
                raise StorageError("timed out waiting for the owner's quota lock")
            try:
                if len(params["body"]) > self._body_part:
                    return self._insert_in_parts(self.quota_sql, cur, conn, params)
                self.quota_sql.run(cur, params)
                return self._inserted(cur)
            finally:
                self.unlock_sql.run(cur, {"key": name})
                cur.fetchall()
        self.quota_sql.run(cur, params)  # SQLite: one statement, one writer
        return self._inserted(cur)

    def _insert_in_parts(
        self, sql: _Sql, cur: Any, conn: Any, params: dict[str, Any]
    ) -> int | None:
        """MySQL: insert a body too large for one statement in parts, in one transaction."""
        cur.execute(self._begin)
        mid = self._insert_row(sql, cur, params)
        conn.commit()
        return mid

    def _insert_row(self, sql: _Sql, cur: Any, params: dict[str, Any]) -> int | None:
        """Insert one row inside the caller's transaction (a large MySQL body in parts)."""
        body: bytes = params["body"]
        size = self._body_part
        if len(body) <= size:
            sql.run(cur, params)
            return self._inserted(cur)
        sql.run(cur, {**params, "body": body[:size]})
        mid = self._inserted(cur)
        if mid is not None:
            for start in range(size, len(body), size):
                self.append_sql.run(cur, {"mid": mid, "part": body[start : start + size]})
        return mid

    def insert_batch(
        self, cur: Any, conn: Any, rows: list[dict[str, Any]], max_messages: int
    ) -> list[int | None]:
        """Insert ``rows`` in one transaction: with a quota, every owner's lock is taken first,
        in sorted order (two batches never wait on each other in a cycle), and each row is
        counted against the rows committed before and those inserted earlier in the batch."""
        sql = self.insert_sql
        keys: list[bytes] = []
        if max_messages > 0:
            sql = self.quota_sql
            for params in rows:
                params["max"] = max_messages
                params["u"], params["d"] = params["username"], params["domain"]
            keys = sorted({self.owner_key(p["u"], p["d"]) for p in rows})
        if self.kind == "postgresql" and hasattr(conn, "pipeline"):  # psycopg 3
            return self._insert_batch_pg(cur, conn, sql, rows, keys)
        cur.execute(self._begin)
        held: list[str] = []
        try:
            if keys and self.kind == "postgresql":  # psycopg2: no pipeline mode
                for key in keys:
                    self.lock_sql.run(cur, {"key": int.from_bytes(key[:8], "big", signed=True)})
            if keys and self.kind == "mysql":
                for key in keys:
                    name = "msilo:" + key.hex()
                    self.lock_sql.run(cur, {"key": name, "wait": self.timeout})
                    got = cur.fetchone()
                    if not got or got[0] != 1:
                        raise StorageError("timed out waiting for an owner's quota lock")
                    held.append(name)
            if self._id_step and not keys:
                mids = self._insert_multi(cur, rows)
            else:
                mids = [self._insert_row(sql, cur, params) for params in rows]
            conn.commit()
            return mids
        finally:
            for name in held:
                self.unlock_sql.run(cur, {"key": name})
                cur.fetchall()

    def _insert_multi(self, cur: Any, rows: list[dict[str, Any]]) -> list[int | None]:
        """MySQL, no quota: the rows in multi-row INSERTs (each within half a packet, as a
        single row's is), a body too large for that on its own; ids from the first one."""
        mids: list[int | None] = []
        start = 0
        while start < len(rows):
            end, size = start, 0
            while end < len(rows) and end - start < _MULTI_MAX:
                size += len(rows[end]["body"]) + _ROW_MARGIN
                if end > start and size > self._body_part:
                    break
                end += 1
            chunk = rows[start:end]
            if len(chunk) == 1:
                mids.append(self._insert_row(self.insert_sql, cur, chunk[0]))
            else:
                cur.execute(
                    self._multi_insert(len(chunk)),
                    {f"{k}_{i}": v for i, p in enumerate(chunk) for k, v in p.items()},
                )
                first = int(cur.lastrowid)
                step = self._id_step or 1
                mids += [first + i * step for i in range(len(chunk))]
            start = end
        return mids

    def _multi_insert(self, count: int) -> str:
        """``INSERT … VALUES (…), (…)`` of ``count`` rows, binds ``<field>_<i>``."""
        text = self._multi_sql.get(count)
        if text is None:
            c = self.table.c
            rows = [
                {f: bp(f"{f}_{i}", type_=c[f].type) for f in MESSAGE_FIELDS} for i in range(count)
            ]
            text = sa.insert(self.table).values(rows).compile(dialect=self.dialect).string
            if len(self._multi_sql) < _LEASE_SQL_CACHE_MAX:
                self._multi_sql[count] = text
        return text

    def _insert_batch_pg(
        self, cur: Any, conn: Any, sql: _Sql, rows: list[dict[str, Any]], keys: list[bytes]
    ) -> list[int | None]:
        """PostgreSQL: the whole transaction in one pipeline (psycopg's pipeline mode): the
        owners' locks in order, then every insert, their ids read at the end."""
        numbers = [int.from_bytes(key[:8], "big", signed=True) for key in keys]
        with conn.pipeline():
            cur.execute(self._begin)
            if numbers:
                locks = [{**self.lock_sql.defaults, "key": n} for n in numbers]
                cur.executemany(self.lock_sql.text, locks)
            # A cursor of its own: its result sets are the inserts' alone.
            with conn.cursor() as ins:
                ins.executemany(sql.text, [{**sql.defaults, **p} for p in rows], returning=True)
                mids: list[int | None] = []
                while True:
                    row = ins.fetchone()
                    mids.append(None if row is None else int(row[0]))
                    if not ins.nextset():
                        break
        conn.commit()
        return mids

    def delete_batch(self, cur: Any, conn: Any, mids: list[int]) -> set[int]:
        """Delete the rows of ``mids`` in one statement; the ids that existed."""
        binds = _ids(mids)
        delete = self._in_list(self._delete_template, self._delete_sql, len(mids))
        if self.delete_returning:
            cur.execute(delete, binds)
            return {int(r[0]) for r in cur.fetchall()}
        cur.execute(self._begin)
        cur.execute(self._in_list(self._pick_template, self._pick_sql, len(mids)), binds)
        found = {int(r[0]) for r in cur.fetchall()}
        if found:
            cur.execute(delete, binds)
        conn.commit()
        return found

    def release_batch(
        self, cur: Any, conn: Any, items: list[tuple[int, str | None, bool]], max_attempts: int
    ) -> list[ReleaseResult]:
        """End the failed deliveries ``items`` (mid, token or None, to_offline; distinct ids)
        as :meth:`release` ends each: without ``max_attempts`` and with ``UPDATE … RETURNING``,
        one statement whose WHERE holds each row's own token; else one transaction that locks
        the rows, decides each from its lease and attempts, then deletes the dropped rows and
        updates the released ones with one statement each."""
        if max_attempts <= 0 and self.returning:
            cur.execute(self._release_update(len(items)), _release_binds(items))
            done = {int(r[0]) for r in cur.fetchall()}
            released, missing = ReleaseResult.RELEASED, ReleaseResult.NOT_FOUND
            return [released if mid in done else missing for mid, _, _ in items]
        ids = sorted(mid for mid, _, _ in items)
        cur.execute(self._begin)
        cur.execute(self._in_list(self._state_template, self._state_sql, len(ids)), _ids(ids))
        state = {int(r[0]): (r[1], r[2]) for r in cur.fetchall()}
        results: list[ReleaseResult] = []
        drop: list[int] = []
        keep: list[tuple[int, str | None, bool]] = []
        for mid, token, offline in items:
            held, attempts = state.get(mid, (None, 0))
            if held is None or (token is not None and held != token):
                results.append(ReleaseResult.NOT_FOUND)
            elif 0 < max_attempts <= attempts + 1:
                drop.append(mid)
                results.append(ReleaseResult.DROPPED)
            else:  # the row is locked and leased: the UPDATE needs no token
                keep.append((mid, None, offline))
                results.append(ReleaseResult.RELEASED)
        if drop:
            cur.execute(self._in_list(self._drop_template, self._drop_sql, len(drop)), _ids(drop))
        if keep:
            cur.execute(self._release_update(len(keep)), _release_binds(keep))
            if self.returning:
                cur.fetchall()
        conn.commit()
        return results

    def _release_update(self, count: int) -> str:
        """``UPDATE … WHERE id IN (m0, …)`` clearing the leases of ``count`` rows, each only
        when held by its token ``t<i>`` (any lease when NULL), counting the attempt and setting
        ``snd_time`` to ``s<i>`` when not NULL (a reminder turned offline); ``RETURNING id``
        where the database has it."""
        text = self._release_sql.get(count)
        if text is None:
            c = self.table.c
            mids = [bp(f"m{i}", type_=c.mid.type) for i in range(count)]

            def each(name: str, column: sa.Column[Any]) -> sa.Case[Any]:
                return sa.case(
                    *[
                        (
                            c.mid == mid,
                            sa.func.coalesce(bp(f"{name}{i}", type_=column.type), column),
                        )
                        for i, mid in enumerate(mids)
                    ]
                )

            stmt = (
                sa.update(self.table)
                .where(c.mid.in_(mids), c.lease_token == each("t", c.lease_token))
                .values(
                    lease_token=sa.null(),
                    lease_until=sa.null(),
                    attempts=c.attempts + sa.literal_column("1"),  # no bind of its own
                    snd_time=each("s", c.snd_time),
                )
            )
            if self.returning:
                stmt = stmt.returning(c.mid)
            text = stmt.compile(dialect=self.dialect).string
            if len(self._release_sql) < _LEASE_SQL_CACHE_MAX:
                self._release_sql[count] = text
        return text

    def _inserted(self, cur: Any) -> int | None:
        if self.kind == "postgresql":
            row = cur.fetchone()
            return None if row is None else int(row[0])
        return int(cur.lastrowid) if cur.rowcount > 0 else None

    def claim(self, cur: Any, conn: Any, params: dict[str, Any], due: bool) -> list[StoredMessage]:
        """Lease an owner's messages (``params``: u, d, now, lu, tok, lim) or due reminders."""
        sql = self.due_sql if due else self.claim_sql
        if self.returning:
            sql.run(cur, params)
            rows = sorted(cur.fetchall(), key=lambda r: r[_MID])
            return [_row(r) for r in rows]
        cur.execute(self._begin)
        sql.run(cur, params)
        rows = cur.fetchall()
        if rows:
            ids: dict[str, Any] = {f"m{i}": r[_MID] for i, r in enumerate(rows)}
            ids.update(tok=params["tok"], lu=params["lu"])
            cur.execute(self._lease_update(len(rows)), ids)
        conn.commit()
        return [_leased(r, params["tok"], params["lu"]) for r in rows]

    def release(
        self, cur: Any, conn: Any, mid: int, token: str | None, offline: bool, max_attempts: int
    ) -> ReleaseResult:
        """Clear a lease and count the attempt, or drop the row at ``max_attempts``."""
        params: dict[str, Any] = {"mid": mid, "tok": token}
        if max_attempts <= 0:
            self.release_sql[token is not None, offline].run(cur, params)
            return ReleaseResult.RELEASED if cur.rowcount > 0 else ReleaseResult.NOT_FOUND
        cur.execute(self._begin)
        self.lease_state_sql.run(cur, params)
        row = cur.fetchone()
        if row is None or row[0] is None or (token is not None and row[0] != token):
            conn.commit()
            return ReleaseResult.NOT_FOUND
        if row[1] + 1 >= max_attempts:
            self.delete_sql.run(cur, params)
            result = ReleaseResult.DROPPED
        else:
            self.release_sql[False, offline].run(cur, params)
            result = ReleaseResult.RELEASED
        conn.commit()
        return result

    def get(self, cur: Any, mid: int) -> StoredMessage | None:
        """One row by id."""
        self.get_sql.run(cur, {"mid": mid})
        row = cur.fetchone()
        return None if row is None else _row(row)

    def list(self, cur: Any, params: dict[str, Any]) -> list[StoredMessage]:
        """The owner's unexpired rows in id order (``params``: u, d, now, lim)."""
        self.list_sql.run(cur, params)
        return [_row(r) for r in cur.fetchall()]

    def count(self, cur: Any, params: dict[str, Any]) -> int:
        """The owner's unexpired rows (``params``: u, d, now)."""
        self.count_sql.run(cur, params)
        return int(cur.fetchone()[0])

    def totals(self, cur: Any, now: int) -> tuple[int, int]:
        """Every owner's unexpired rows, and those of them under a live lease."""
        self.totals_sql.run(cur, {"now": now})
        stored, leased = cur.fetchone()
        return int(stored), int(leased)

    @staticmethod
    def changed(sql: _Sql, cur: Any, params: dict[str, Any]) -> int:
        """Run a DELETE; how many rows it removed."""
        sql.run(cur, params)
        return max(int(cur.rowcount), 0)
