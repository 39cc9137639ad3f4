"""MongoDB storage driver (pymongo); ``mongomock://`` runs it in-process for tests.

One collection ``<table>`` holds the messages (``_id`` = mid, the layout's field names, bodies as
BSON binary, times int64, plus ``exp_at`` for the TTL index and ``uncounted``); ``<table>_counters``
holds the id sequence and ``<table>_owners`` one quota counter per owner. Each step is atomic on
a real server without transactions: single-document writes and filters that re-check every
condition. The design, the quota counter's crash safety and the TTL backstop are described in
``docs/mongo-driver.md``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import parse_qsl, urlsplit

from bson.binary import Binary
from bson.errors import BSONError, InvalidDocument
from bson.int64 import Int64
from pymongo import ASCENDING, DESCENDING, DeleteOne, MongoClient, ReturnDocument, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    ConnectionFailure,
    DuplicateKeyError,
    InvalidName,
    OperationFailure,
    PyMongoError,
)

from ..errors import MsiloError, SettingsError, StorageError, StorageUnavailable
from ..records import DEFAULT_TTL_DELAY
from . import DriverOptions, batch
from .base import NewMessage, ReleaseResult, StoredMessage, StoreLayout, StoreTotals
from .plumbing import ErrorTable, storage_step
from .schema_version import SCHEMA_VERSION, RecordedVersion
from .schemes import scheme_of

if TYPE_CHECKING:
    from .aio import BridgedDriver

__all__ = [
    "DEFAULT_TTL_DELAY",
    "MongoDriver",
    "mongo_on_asyncio",
    "open_mongo",
    "open_mongo_async",
    "open_mongomock",
]

log = logging.getLogger("libmsilo")

DEFAULT_DATABASE = "msilo"

Doc = dict[str, Any]

_EXP_AT = "exp_at"
_UNCOUNTED = "uncounted"
# owner counter fields
_COUNT = "count"
_VERSION = "version"
_EPOCH = "epoch"
_RESERVED_AT = "reserved_at"
_SEQUENCE_ID = "mid"
_SCHEMA_ID = "schema"  # the counters document holding the schema version
_INDEX_NOT_FOUND = 27  # server error code: a concurrent creator dropped the index first

_RESERVE_TRIES = 8  # each failed try made progress or lost a race; give up (refuse) after these
_RELEASE_TRIES = 4
_INSERT_TRIES = 3
_BATCH = 500
_CLAIM_BATCH = 1000  # candidate ids per claim round (the size of one ``$in`` list)
_REMEMBERED = 100_000  # claimed rows whose owner and counter epoch the driver keeps for delete
_INVALID_DB_CHARS = frozenset('/\\. "$\x00')


def _as_date(epoch: int) -> datetime | None:
    try:
        return datetime.fromtimestamp(epoch, UTC)
    except (OverflowError, OSError, ValueError):
        return None  # outside the datetime range: the TTL backstop ignores the row


def _new_epoch() -> str:
    return secrets.token_hex(8)


class _Closeable(Protocol):
    def close(self) -> None: ...


class MongoDriver(RecordedVersion):
    """The :class:`~libmsilo.drivers.base.Driver` on one MongoDB database."""

    # ConnectionFailure includes AutoReconnect and ServerSelectionTimeoutError. Nothing is
    # retried here: pymongo retries reads and single-document writes once itself.
    errors = ErrorTable(
        "MongoDB",
        unavailable=(ConnectionFailure,),
        # ValueError: what the client or the BSON encoder raises for a value it cannot take.
        failed=(PyMongoError, BSONError, ValueError),
        invalid=(UnicodeError, OverflowError, InvalidDocument),  # incl. DocumentTooLarge
    )
    _store_kind = "MongoDB collection"

    def __init__(
        self,
        database: Database[Doc],
        layout: StoreLayout | None = None,
        *,
        client: _Closeable | None = None,
        timeout: float = 5.0,
        ttl_delay: int | None = DEFAULT_TTL_DELAY,
        quota_grace: float | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """Use ``database``; ``client`` (closed by :meth:`close`) is the client that owns it."""
        self._layout = layout or StoreLayout()
        columns = {getattr(self._layout, f.name) for f in fields(StoreLayout) if f.name != "table"}
        clash = {_EXP_AT, _UNCOUNTED} & columns
        if clash:
            raise SettingsError(f"the MongoDB driver reserves the field names {sorted(clash)}")
        self._db = database
        self._client = client
        self._ttl_delay = ttl_delay
        self._grace = quota_grace if quota_grace is not None else max(60.0, 10 * timeout)
        self._wall = wall_clock
        self._closed = False
        table = self._store_name = self._layout.table
        self._names = (table, f"{table}_counters", f"{table}_owners")
        # mid -> (owner, counter epoch read when this driver claimed the row); see delete().
        self._claimed: dict[int, tuple[Doc, object]] = {}
        self._claimed_lock = threading.Lock()

    @property
    def database(self) -> Database[Doc]:
        """The database holding ``<table>``, ``<table>_counters`` and ``<table>_owners``."""
        return self._db

    # ---- plumbing ------------------------------------------------------------------------------

    @property
    def _database(self) -> Database[Doc]:
        if self._closed:
            raise StorageUnavailable("the MongoDB driver is closed")
        return self._db

    def _collection(self, index: int) -> Collection[Doc]:
        return self._database[self._names[index]]

    @property
    def _rows(self) -> Collection[Doc]:
        return self._collection(0)

    @property
    def _counters(self) -> Collection[Doc]:
        return self._collection(1)

    @property
    def _owners(self) -> Collection[Doc]:
        return self._collection(2)

    def _owner(self, username: str, domain: str) -> Doc:
        lay = self._layout
        return {lay.username: username, lay.domain: domain}

    def _owner_of(self, doc: Mapping[str, Any]) -> Doc:
        lay = self._layout
        return {lay.username: doc.get(lay.username), lay.domain: doc.get(lay.domain)}

    def _lease_free(self, now: int) -> list[Doc]:
        lay = self._layout
        return [{lay.lease_token: None}, {lay.lease_until: None}, {lay.lease_until: {"$lte": now}}]

    def _lease_set(self, token: str, lease_until: int) -> Doc:
        lay = self._layout
        return {"$set": {lay.lease_token: token, lay.lease_until: Int64(lease_until)}}

    def _document(self, msg: NewMessage) -> Doc:
        """The row without its ``_id`` (values checked by :func:`.plumbing.check_message`)."""
        lay = self._layout
        doc: Doc = {
            lay.src_addr: msg.src_addr,
            lay.dst_addr: msg.dst_addr,
            **self._owner(msg.username, msg.domain),
            lay.body: Binary(bytes(msg.body)),
            lay.ctype: msg.ctype,
            lay.inc_time: Int64(msg.inc_time),
            lay.exp_time: Int64(msg.exp_time),
            lay.snd_time: Int64(msg.snd_time),
            lay.lease_token: None,
            lay.lease_until: None,
            lay.attempts: 0,
        }
        if msg.extra_hdrs:  # absent fields read back as ""
            doc[lay.extra_hdrs] = msg.extra_hdrs
        if msg.callid:
            doc[lay.callid] = msg.callid
        exp_at = _as_date(msg.exp_time)
        if exp_at is not None:
            doc[_EXP_AT] = exp_at
        return doc

    def _stored(self, doc: Mapping[str, Any]) -> StoredMessage:
        lay = self._layout
        try:
            body = doc.get(lay.body) or b""
            lease_until = doc.get(lay.lease_until)
            return StoredMessage(
                src_addr=str(doc[lay.src_addr]),
                dst_addr=str(doc[lay.dst_addr]),
                username=str(doc[lay.username]),
                domain=str(doc[lay.domain]),
                body=body.encode() if isinstance(body, str) else bytes(body),
                ctype=str(doc[lay.ctype]),
                inc_time=int(doc[lay.inc_time]),
                exp_time=int(doc[lay.exp_time]),
                snd_time=int(doc.get(lay.snd_time) or 0),
                extra_hdrs=str(doc.get(lay.extra_hdrs) or ""),
                callid=str(doc.get(lay.callid) or ""),
                mid=int(doc["_id"]),
                lease_token=doc.get(lay.lease_token),
                lease_until=None if lease_until is None else int(lease_until),
                attempts=int(doc.get(lay.attempts) or 0),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageError(f"malformed document {doc.get('_id')!r} in MongoDB") from exc

    # ---- schema ---------------------------------------------------------------------------------

    @storage_step
    def create_schema(self) -> None:
        """Create the indexes (the collections appear with them), seed the id sequence and
        record the schema version; a store at another version is refused. Every step may run in
        many processes at once: an index created with the same keys and options, an upsert on
        ``_id`` (the server retries one that loses the race) and a dropped index that is already
        gone all count as done."""
        lay, rows = self._layout, self._rows
        rows.create_index([(lay.username, ASCENDING), (lay.domain, ASCENDING), ("_id", ASCENDING)])
        rows.create_index([(lay.snd_time, ASCENDING)])
        rows.create_index([(lay.exp_time, ASCENDING)])
        self._ensure_ttl()
        self._seed_sequence()
        self._settle_version()

    def _read_version(self) -> int | None:
        doc = self._counters.find_one({"_id": _SCHEMA_ID})
        return None if doc is None else int(doc["version"])

    def _seed_version(self) -> None:
        self._counters.update_one(
            {"_id": _SCHEMA_ID}, {"$setOnInsert": {"version": SCHEMA_VERSION}}, upsert=True
        )

    def _raise_version(self) -> int | None:
        self._counters.update_one(
            {"_id": _SCHEMA_ID}, {"$max": {"version": SCHEMA_VERSION}}, upsert=True
        )
        return self._read_version()

    def _ensure_ttl(self) -> None:
        rows, name = self._rows, f"{_EXP_AT}_1"
        current = rows.index_information().get(name)
        if current is not None and (
            self._ttl_delay is None or current.get("expireAfterSeconds") != self._ttl_delay
        ):
            try:
                rows.drop_index(name)  # the server refuses to change an index's options in place
            except OperationFailure as exc:
                if exc.code != _INDEX_NOT_FOUND:
                    raise
        if self._ttl_delay is not None:
            rows.create_index([(_EXP_AT, ASCENDING)], name=name, expireAfterSeconds=self._ttl_delay)

    def _seed_sequence(self) -> None:
        # $max keeps the sequence ahead of existing rows (e.g. when only the counters were lost).
        top = self._rows.find_one({"_id": {"$gt": 0}}, {"_id": True}, sort=[("_id", DESCENDING)])
        highest = int(top["_id"]) if top is not None else 0
        self._counters.update_one(
            {"_id": _SEQUENCE_ID}, {"$max": {"seq": Int64(highest)}}, upsert=True
        )

    @storage_step
    def drop_schema(self) -> None:
        """Drop the message, sequence and owner collections."""
        for name in self._names:
            self._database.drop_collection(name)

    @storage_step
    def migrate(self) -> None:
        """Record the current schema version: documents are schemaless, and the fields a
        version adds (leases, Kamailio's ``extra_hdrs`` and ``callid``) read as unset when
        missing."""
        self._migrate_version()

    @storage_step
    def ping(self) -> None:
        """Ask the server for a ``ping``."""
        self._database.command("ping")

    # ---- insert and quota ----------------------------------------------------------------------

    @storage_step
    def insert(self, msg: NewMessage, max_messages: int = 0) -> int | None:
        """Store ``msg``; ``None`` when the owner holds ``max_messages`` unexpired rows."""
        doc = self._document(msg)
        owner = self._owner(msg.username, msg.domain)
        epoch = self._reserve(owner, max_messages, msg.inc_time)
        if epoch is None:
            return None
        try:
            return self._insert_row(doc)
        except ConnectionFailure:
            # The row may have landed: the slot stays taken until the re-sync, never too low.
            raise
        except Exception:
            # The server (or the encoder) refused the row, so nothing was stored: give the slot
            # back.
            self._give_back(owner, epoch, 1)
            raise

    def insert_many(
        self, msgs: Sequence[NewMessage], max_messages: int = 0
    ) -> list[int | MsiloError | None]:
        """Store ``msgs``: each takes its quota slot as :meth:`insert` does, then one ``$inc``
        takes the ids of all and one unordered ``insert_many`` writes them. A row the server
        refuses gets its own error and gives its slot back; one whose id was taken meanwhile
        (a reseeded sequence) is inserted alone."""
        return batch.insert_checked(
            self,
            msgs,
            max_messages,
            lambda msg: msg,
            lambda todo: self._step(lambda: self._insert_batch(todo, max_messages)),
        )

    def _insert_batch(
        self, msgs: Sequence[NewMessage], max_messages: int
    ) -> list[int | MsiloError | None]:
        results: list[int | MsiloError | None] = [None] * len(msgs)
        taken: list[tuple[int, Doc, Doc, str]] = []  # (index, document, owner, epoch)
        for i, msg in enumerate(msgs):
            try:
                doc = self._document(msg)
            except MsiloError as exc:
                results[i] = exc
                continue
            owner = self._owner(msg.username, msg.domain)
            epoch = self._reserve(owner, max_messages, msg.inc_time)
            if epoch is not None:
                taken.append((i, doc, owner, epoch))
        if not taken:
            return results
        last = self._next_mid(len(taken))
        rows = [
            {"_id": Int64(last - len(taken) + 1 + n), **doc}
            for n, (_, doc, _, _) in enumerate(taken)
        ]
        refused: set[int] = set()
        try:
            self._rows.insert_many(rows, ordered=False)
        except BulkWriteError as exc:
            refused = {int(error["index"]) for error in exc.details.get("writeErrors", [])}
        except ConnectionFailure:
            raise  # the rows may have landed: their slots stay taken until the re-sync
        except Exception:
            # Refused before or while sending (an encoder error): see which rows landed.
            ids = [row["_id"] for row in rows]
            found = self._rows.find({"_id": {"$in": ids}}, {"_id": True})
            present = {int(d["_id"]) for d in found}
            refused = {n for n, row in enumerate(rows) if int(row["_id"]) not in present}
        for n, (i, doc, owner, epoch) in enumerate(taken):
            if n not in refused:
                results[i] = int(rows[n]["_id"])
                continue
            try:
                results[i] = self._insert_row(doc)  # a duplicate id: a fresh one, alone
            except ConnectionFailure:
                raise
            except Exception as exc:
                self._give_back(owner, epoch, 1)
                error = self._translate(exc)
                results[i] = error if isinstance(error, MsiloError) else StorageError(str(exc))
        return results

    def _next_mid(self, count: int = 1) -> int:
        """Take ``count`` ids from the sequence; the last of them."""
        for _ in range(2):
            try:
                seq = self._counters.find_one_and_update(
                    {"_id": _SEQUENCE_ID},
                    {"$inc": {"seq": Int64(count)}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:
                continue  # two first-ever upserts raced; the document exists now
            if seq is not None:
                return int(seq["seq"])
        raise StorageError("could not allocate a message id")

    def _insert_row(self, doc: Doc) -> int:
        for attempt in range(_INSERT_TRIES):
            mid = self._next_mid()
            try:
                self._rows.insert_one({"_id": Int64(mid), **doc})
                return mid
            except DuplicateKeyError:
                if attempt == _INSERT_TRIES - 1:
                    raise
                log.warning("MongoDB id sequence of %s is behind its rows; reseeding", self._names)
                self._seed_sequence()
        raise AssertionError("unreachable")

    def _reserve(self, owner: Doc, max_messages: int, inc_time: int) -> str | None:
        """Take one slot of the owner's counter; return the counter's epoch, None at quota."""
        flt: Doc = {"_id": owner}
        if max_messages > 0:
            flt[_COUNT] = {"$lt": max_messages}
        for _ in range(_RESERVE_TRIES):
            taken = self._owners.find_one_and_update(
                flt,
                {"$inc": {_COUNT: 1, _VERSION: 1}, "$max": {_RESERVED_AT: self._wall()}},
                projection={_EPOCH: True},
                return_document=ReturnDocument.AFTER,
            )
            if taken is not None:
                return str(taken[_EPOCH])
            state = self._owners.find_one({"_id": owner})
            if state is None:
                self._create_counter(owner)
            elif max_messages <= 0:
                continue  # the counter changed under us (removed by delete_expired): retry
            elif not (
                self._uncount_expired(owner, state, inc_time)
                or self._resync(owner, state, max_messages)
            ):
                return None
        log.warning("MongoDB quota reservation for %r kept racing; refusing", owner)
        return None

    def _counted(self, owner: Doc) -> int:
        return self._rows.count_documents({**owner, _UNCOUNTED: {"$ne": True}})

    def _create_counter(self, owner: Doc) -> None:
        # No reservation can be in flight without a counter, so a recount is exact here.
        counter = {
            "_id": owner,
            _COUNT: self._counted(owner),
            _VERSION: 0,
            _EPOCH: _new_epoch(),
            _RESERVED_AT: self._wall(),
        }
        with contextlib.suppress(DuplicateKeyError):  # another store created it first
            self._owners.insert_one(counter)

    def _uncount_expired(self, owner: Doc, state: Mapping[str, Any], inc_time: int) -> bool:
        """Take the owner's rows expired by ``inc_time`` out of its counter; True if any."""
        marked = self._rows.update_many(
            {**owner, _UNCOUNTED: {"$ne": True}, self._layout.exp_time: {"$lte": inc_time}},
            {"$set": {_UNCOUNTED: True}},
        ).modified_count
        if marked:
            self._give_back(owner, state.get(_EPOCH), marked)
        return marked > 0

    def _resync(self, owner: Doc, state: Mapping[str, Any], max_messages: int) -> bool:
        """Re-sync a leaked counter to a recount; True when a retry may now succeed."""
        if float(state.get(_RESERVED_AT) or 0) > self._wall() - self._grace:
            return False  # a recent reservation may still be inserting: cannot tell a leak
        actual = self._counted(owner)
        if actual == state.get(_COUNT):
            return False
        written = self._owners.update_one(
            {"_id": owner, _VERSION: state.get(_VERSION), _EPOCH: state.get(_EPOCH)},
            {"$set": {_COUNT: actual, _EPOCH: _new_epoch()}, "$inc": {_VERSION: 1}},
        ).modified_count
        if not written:
            return True  # someone reserved or re-synced meanwhile: look again
        log.warning(
            "MongoDB quota counter of %r re-synced from %s to %s", owner, state.get(_COUNT), actual
        )
        return actual < max_messages

    def _give_back(self, owner: Doc, epoch: object, slots: int) -> None:
        if epoch is not None and slots:
            self._owners.update_one({"_id": owner, _EPOCH: epoch}, {"$inc": {_COUNT: -slots}})

    def _remove(self, owner: Doc, extra: Mapping[str, Any], *, single: bool = False) -> int:
        """Delete the owner's rows matching ``extra`` and give their slots back."""
        epoch = self._epochs([owner]).get(self._owner_key(owner))
        base = {**extra, **owner}
        if single:
            return self._remove_one(owner, base, epoch)
        counted = self._rows.delete_many({**base, _UNCOUNTED: {"$ne": True}}).deleted_count
        other = self._rows.delete_many({**base, _UNCOUNTED: True}).deleted_count
        self._give_back(owner, epoch, counted)
        return counted + other

    def _remove_one(self, owner: Doc, flt: Mapping[str, Any], epoch: object) -> int:
        """Delete one row of ``owner`` matching ``flt``; its slot goes back under ``epoch``
        (read before this call) unless the row was out of the counter. Returns 0 or 1."""
        doc = self._rows.find_one_and_delete(flt, projection={_UNCOUNTED: True})
        if doc is None:
            return 0
        if doc.get(_UNCOUNTED) is not True:
            self._give_back(owner, epoch, 1)
        return 1

    def _owner_key(self, owner: Mapping[str, Any]) -> tuple[Any, Any]:
        lay = self._layout
        return owner.get(lay.username), owner.get(lay.domain)

    def _epochs(self, owners: list[Doc]) -> dict[tuple[Any, Any], object]:
        """The counter epochs of ``owners`` (one read), keyed by (username, domain)."""
        if len(owners) == 1:
            state = self._owners.find_one({"_id": owners[0]}, {_EPOCH: True})
            states = [] if state is None else [state]
        else:
            states = list(self._owners.find({"_id": {"$in": owners}}, {_EPOCH: True}))
        return {self._owner_key(s["_id"]): s.get(_EPOCH) for s in states}

    # ---- claims ---------------------------------------------------------------------------------

    @storage_step
    def claim(
        self, username: str, domain: str, now: int, lease_until: int, token: str, limit: int = 0
    ) -> list[StoredMessage]:
        """Lease the owner's deliverable rows in id order: find the candidates, lease them with
        one ``updateMany`` that re-checks every condition, read back what got the token."""
        lay = self._layout
        owner = self._owner(username, domain)
        eligible: Doc = {
            **owner,
            lay.snd_time: 0,
            lay.exp_time: {"$gt": now},
            "$or": self._lease_free(now),
        }
        return self._lease(eligible, owner, now, lease_until, token, limit)

    @storage_step
    def claim_due_reminders(
        self, now: int, lease_until: int, token: str, limit: int = 0
    ) -> list[StoredMessage]:
        """Lease due reminders across owners in id order, the same way as :meth:`claim`."""
        lay = self._layout
        due: Doc = {
            lay.snd_time: {"$gt": 0, "$lte": now},
            lay.exp_time: {"$gt": now},
            "$or": self._lease_free(now),
        }
        return self._lease(due, {}, now, lease_until, token, limit)

    def _lease(
        self,
        eligible: Doc,
        owner: Doc,
        now: int,
        lease_until: int,
        token: str,
        limit: int,
    ) -> list[StoredMessage]:
        """Lease rows matching ``eligible`` (``owner``: the owner they all belong to, or {}) in
        id order, at most ``limit`` when > 0; remember their owners' counter epochs."""
        lay = self._layout
        update = self._lease_set(token, lease_until)
        ours: Doc = {**owner, lay.lease_token: token, lay.lease_until: Int64(lease_until)}
        claimed: list[StoredMessage] = []
        last: int | None = None
        while limit <= 0 or len(claimed) < limit:
            want = min(limit - len(claimed), _CLAIM_BATCH) if limit > 0 else _CLAIM_BATCH
            # ``_id`` above the last candidate: a lease that is already over (lease_until <=
            # now) must not make the loop take the same row again.
            flt = {**eligible, "_id": {"$gt": last}} if last is not None else eligible
            found = self._rows.find(flt, {"_id": True}, sort=[("_id", ASCENDING)], limit=want)
            ids = [doc["_id"] for doc in found]
            if not ids:
                break
            last = int(ids[-1])
            chosen = {"_id": {"$in": ids}}
            if self._rows.update_many({**eligible, **chosen}, update).modified_count:
                docs = self._rows.find({**ours, **chosen}, sort=[("_id", ASCENDING)])
                claimed += [self._stored(doc) for doc in docs]
            if len(ids) < want:
                break
        self._remember(claimed)
        return claimed

    def _remember(self, rows: list[StoredMessage]) -> None:
        """Keep the owner and counter epoch of rows just claimed, for their delete."""
        if not rows:
            return
        owners = {(r.username, r.domain): self._owner(r.username, r.domain) for r in rows}
        epochs = self._epochs(list(owners.values()))
        with self._claimed_lock:
            for r in rows:
                epoch = epochs.get((r.username, r.domain))
                if epoch is not None:  # no counter yet: delete reads the state itself
                    self._claimed[r.mid] = (owners[(r.username, r.domain)], epoch)
            for _ in range(len(self._claimed) - _REMEMBERED):
                del self._claimed[next(iter(self._claimed))]  # the oldest first

    def _forget(self, mid: int) -> tuple[Doc, object] | None:
        with self._claimed_lock:
            return self._claimed.pop(mid, None)

    # ---- reply outcomes -------------------------------------------------------------------------

    @storage_step
    def delete(self, mid: int) -> bool:
        """Delete one row; False when it did not exist."""
        lay = self._layout
        known = self._forget(mid)
        if known is not None:
            owner, epoch = known
            if self._remove_one(owner, {"_id": mid, **owner}, epoch):
                return True
            # Gone already, or (after the store was dropped and made anew) another row.
        row = self._rows.find_one({"_id": mid}, {lay.username: True, lay.domain: True})
        if row is None:
            return False
        return self._remove(self._owner_of(row), {"_id": mid}, single=True) > 0

    def delete_many(self, mids: Sequence[int]) -> list[bool | MsiloError]:
        """Delete the rows of ``mids``: one read of their owners and quota state, one unordered
        ``bulk_write`` of deletes that each re-check them, one more giving the slots back
        (see :meth:`_bulk_outcome` for rows another writer changed meanwhile)."""
        return batch.delete_checked(self, mids, lambda ids: self._step(lambda: self._deleted(ids)))

    def _deleted(self, ids: list[int]) -> set[int]:
        """Delete the rows of ``ids`` (checked, distinct); those this batch deleted."""
        lay = self._layout
        known = {mid: self._forget(mid) for mid in ids}
        projection = {lay.username: True, lay.domain: True, _UNCOUNTED: True}
        rows = {doc["_id"]: doc for doc in self._rows.find({"_id": {"$in": ids}}, projection)}
        if not rows:
            return set()
        # The counters' epochs, read before deleting: remembered by the claim, else read now.
        epochs: dict[int, object] = {}
        unknown: dict[tuple[Any, Any], Doc] = {}
        for mid, row in rows.items():
            owner = self._owner_of(row)
            remembered = known.get(mid)
            if remembered is not None and remembered[0] == owner:
                epochs[mid] = remembered[1]
            else:
                unknown[self._owner_key(owner)] = owner
        read = self._epochs(list(unknown.values())) if unknown else {}
        ops = []
        for mid, row in rows.items():
            if mid not in epochs:
                epochs[mid] = read.get(self._owner_key(row))
            counted = {"$ne": True} if row.get(_UNCOUNTED) is not True else True
            ops.append(DeleteOne({"_id": mid, **self._owner_of(row), _UNCOUNTED: counted}))
        done = self._rows.bulk_write(ops, ordered=False).deleted_count
        gone, again, exact = self._bulk_outcome(done, list(rows), lambda mid, now: True)
        slots: dict[tuple[Any, Any, object], list[Any]] = {}  # (owner, epoch) -> [owner, n]
        for mid in gone:
            row = rows[mid]
            if row.get(_UNCOUNTED) is not True:
                owner = self._owner_of(row)
                slot = slots.setdefault((*self._owner_key(owner), epochs[mid]), [owner, 0])
                slot[1] += 1
        if not exact:
            # Other writers deleted some of these rows too; which ones is unknown, so each
            # owner gets back only the slots this batch surely freed (never too many: a slot
            # kept heals with the counter's re-sync, see docs/mongo-driver.md).
            lost = len(gone) - done
            gone = gone[:done]
            for slot in slots.values():
                slot[1] = max(0, slot[1] - lost)
        self._give_back_many([(o, e, n) for (*_, e), (o, n) in slots.items()])
        deleted = set(gone)
        deleted.update(mid for mid in again if self.delete(mid))
        return deleted

    def _give_back_many(self, slots: list[tuple[Doc, object, int]]) -> None:
        """:meth:`_give_back` for each (owner, epoch, slots), in one bulk write."""
        ops = [
            UpdateOne({"_id": owner, _EPOCH: epoch}, {"$inc": {_COUNT: -n}})
            for owner, epoch, n in slots
            if epoch is not None and n
        ]
        if ops:
            self._owners.bulk_write(ops, ordered=False)

    def _bulk_outcome(
        self, done: int, ids: list[int], missed: Callable[[int, Doc], bool]
    ) -> tuple[list[int], list[int], bool]:
        """Which writes of an unordered bulk (one per row of ``ids``, each re-checking the row
        as read before) took effect, given that ``done`` did (pymongo counts them, no more).

        All, when all did. Else the rows are read again: a row still there that ``missed``
        says this bulk did not write was changed before its write came (which then matched
        nothing): it is to be tried alone. The other rows (changed or gone) were written by
        this bulk or by another writer meanwhile: when there are exactly ``done`` of them they
        are this bulk's (``exact``), else which ``done`` of them cannot be told. Returns (the
        other rows, the rows to try alone, exact)."""
        if done == len(ids):
            return ids, [], True
        now = {doc["_id"]: doc for doc in self._rows.find({"_id": {"$in": ids}}, self._state)}
        again = [mid for mid in ids if mid in now and missed(mid, now[mid])]
        changed = [mid for mid in ids if mid not in again]
        return changed, again, len(changed) == done

    @property
    def _state(self) -> Doc:
        """The fields a release reads of a row: owner, lease token and attempts."""
        lay = self._layout
        return {lay.username: True, lay.domain: True, lay.lease_token: True, lay.attempts: True}

    def _release_plan(
        self, row: Doc | None, token: str | None, to_offline: bool, max_attempts: int
    ) -> tuple[Doc, Doc | None] | None:
        """What the release of ``row`` (its :attr:`_state`) by ``token`` does: None when that
        is not the caller's lease (NOT_FOUND); else the compare-and-set filter on the state
        read, and the update (None: drop the row at ``max_attempts``)."""
        lay = self._layout
        held = row.get(lay.lease_token) if row is not None else None
        if row is None or held is None or (token is not None and held != token):
            return None
        seen = row.get(lay.attempts)
        same: Doc = {"_id": row["_id"], **self._owner_of(row), lay.lease_token: held}
        same[lay.attempts] = seen
        if 0 < max_attempts <= int(seen or 0) + 1:
            return same, None
        changes: Doc = {lay.lease_token: None, lay.lease_until: None}
        if to_offline:
            changes[lay.snd_time] = Int64(0)
        return same, {"$set": changes, "$inc": {lay.attempts: 1}}

    @storage_step
    def release(
        self, mid: int, token: str | None, *, to_offline: bool = False, max_attempts: int = 0
    ) -> ReleaseResult:
        """Clear a failed delivery's lease (compare-and-set), or drop the row at max_attempts."""
        self._forget(mid)
        for _ in range(_RELEASE_TRIES):
            row = self._rows.find_one({"_id": mid}, self._state)
            plan = self._release_plan(row, token, to_offline, max_attempts)
            if plan is None:
                return ReleaseResult.NOT_FOUND
            same, update = plan
            if update is None:
                if self._remove(self._owner_of(same), same, single=True):
                    return ReleaseResult.DROPPED
            elif self._rows.update_one(same, update).matched_count:
                return ReleaseResult.RELEASED
        return ReleaseResult.NOT_FOUND  # the row kept changing: another delivery owns it

    def release_many(
        self, releases: Sequence[batch.Release], max_attempts: int = 0
    ) -> list[ReleaseResult | MsiloError]:
        """End failed deliveries: one read of the rows, one unordered ``bulk_write`` of
        compare-and-set updates (see :meth:`_bulk_outcome` for rows another writer changed
        meanwhile); a row to drop at ``max_attempts`` is released alone."""
        return batch.release_checked(
            self,
            releases,
            max_attempts,
            lambda items: self._step(lambda: self._released(items, max_attempts)),
        )

    def _released(
        self, items: list[batch.Release], max_attempts: int
    ) -> list[ReleaseResult | MsiloError]:
        """Release ``items`` (checked, distinct ids); one answer each."""
        lay = self._layout
        ids = [mid for mid, _, _ in items]
        for mid in ids:
            self._forget(mid)
        rows = {doc["_id"]: doc for doc in self._rows.find({"_id": {"$in": ids}}, self._state)}
        results: list[ReleaseResult | MsiloError] = [ReleaseResult.NOT_FOUND] * len(items)
        alone: list[int] = []
        ops = []
        place: dict[int, int] = {}  # mid -> its item
        seen: dict[int, object] = {}  # mid -> attempts read
        for i, (mid, token, offline) in enumerate(items):
            plan = self._release_plan(rows.get(mid), token, offline, max_attempts)
            if plan is None:
                continue
            same, update = plan
            if update is None:
                alone.append(i)
                continue
            ops.append(UpdateOne(same, update))
            place[mid], seen[mid] = i, same[lay.attempts]
        if ops:
            done = self._rows.bulk_write(ops, ordered=False).matched_count
            # A row whose attempts are those read was not released by this bulk's write.
            written, again, _ = self._bulk_outcome(
                done, list(place), lambda mid, now: now.get(lay.attempts) == seen[mid]
            )
            for mid in written[:done]:  # inexact: this many were released, which is unknown
                results[place[mid]] = ReleaseResult.RELEASED
            alone += [place[mid] for mid in again]
        for i in alone:
            results[i] = batch.release_each(self, [items[i]], max_attempts)[0]
        return results

    # ---- inbox and housekeeping -----------------------------------------------------------------

    @storage_step
    def count(self, username: str, domain: str, now: int) -> int:
        """Number of the owner's unexpired rows (reminders included)."""
        return self._rows.count_documents(
            {**self._owner(username, domain), self._layout.exp_time: {"$gt": now}}
        )

    @storage_step
    def totals(self, now: int) -> StoreTotals:
        """Unexpired rows and live leases: two counts (the expiry index serves the first)."""
        lay = self._layout
        live: Doc = {lay.exp_time: {"$gt": now}}
        held: Doc = {**live, lay.lease_token: {"$ne": None}, lay.lease_until: {"$gt": now}}
        return StoreTotals(self._rows.count_documents(live), self._rows.count_documents(held))

    @storage_step
    def list(self, username: str, domain: str, now: int, limit: int = 0) -> list[StoredMessage]:
        """The owner's unexpired rows in id order, not leased."""
        docs = self._rows.find(
            {**self._owner(username, domain), self._layout.exp_time: {"$gt": now}},
            sort=[("_id", ASCENDING)],
            limit=max(limit, 0),
        )
        return [self._stored(doc) for doc in docs]

    @storage_step
    def get(self, mid: int) -> StoredMessage | None:
        """One row by id, expired or not."""
        doc = self._rows.find_one({"_id": mid})
        return None if doc is None else self._stored(doc)

    @storage_step
    def purge(self, username: str, domain: str) -> int:
        """Delete every row of the owner."""
        return self._remove(self._owner(username, domain), {})

    @storage_step
    def delete_expired(self, now: int) -> int:
        """Delete rows with ``exp_time <= now``: per batch, read the owners' counter epochs at
        once, delete each owner's counted rows, then every uncounted one, then give the slots
        back."""
        lay = self._layout
        expired: Doc = {lay.exp_time: {"$lte": now}}
        counted: Doc = {**expired, _UNCOUNTED: {"$ne": True}}
        projection = {lay.username: True, lay.domain: True}
        total = 0
        while True:
            batch = list(self._rows.find(counted, projection, limit=_BATCH))
            owners = {self._owner_key(doc): self._owner_of(doc) for doc in batch}
            epochs = self._epochs(list(owners.values())) if owners else {}
            deleted = 0
            slots: dict[int, list[Doc]] = {}  # slots to give back -> those owners' counters
            for key, owner in owners.items():
                gone = self._rows.delete_many({**counted, **owner}).deleted_count
                deleted += gone
                epoch = epochs.get(key)
                if gone and epoch is not None:
                    slots.setdefault(gone, []).append({"_id": owner, _EPOCH: epoch})
            # Rows out of the counter hold no slot: no owner needed.
            deleted += self._rows.delete_many({**expired, _UNCOUNTED: True}).deleted_count
            for n, counters in slots.items():
                self._owners.update_many({"$or": counters}, {"$inc": {_COUNT: -n}})
            total += deleted
            # A short batch was every counted expired row (each owner's delete took all of its
            # own); nothing deleted: another process is deleting the same rows.
            if not deleted or len(batch) < _BATCH:
                break
        # Counters of owners without rows are only kept while a reservation may be in flight.
        self._owners.delete_many(
            {_COUNT: {"$lte": 0}, _RESERVED_AT: {"$lt": self._wall() - self._grace}}
        )
        return total

    def close(self) -> None:
        """Close the client (when the driver owns it); the driver is unusable afterwards."""
        self._closed = True
        if self._client is not None:
            self._client.close()


# ---- factories -----------------------------------------------------------------------------------


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _client_options(url: str, options: DriverOptions) -> dict[str, Any]:
    """The client's keyword arguments: ``options.timeout`` as the server selection, connect and
    socket timeouts and the pool's wait, ``options.pool_size`` as ``maxPoolSize`` (at most that
    many connections per server), unless the URL sets them itself."""
    given = {key.lower() for key, _ in parse_qsl(urlsplit(url).query)}
    wanted: dict[str, Any] = {
        key: _milliseconds(options.timeout)
        for key in (
            "serverSelectionTimeoutMS",
            "connectTimeoutMS",
            "socketTimeoutMS",
            "waitQueueTimeoutMS",
        )
    }
    wanted["maxPoolSize"] = options.pool_size
    chosen = {key: value for key, value in wanted.items() if key.lower() not in given}
    return {"appname": "libmsilo", **chosen}


def _client(factory: Callable[..., Any], url: str, options: DriverOptions) -> Any:
    """A client of ``factory`` (``MongoClient`` or ``AsyncMongoClient``) for ``url``."""
    try:
        return factory(url, **_client_options(url, options))
    except (ConfigurationError, ValueError) as exc:  # InvalidURI, bad ports, failed SRV lookups
        raise SettingsError(f"db_url: {exc}") from exc


def _default_database(client: Any) -> Any:
    """The database the URL's path names (default ``msilo``)."""
    try:
        return client.get_default_database(DEFAULT_DATABASE)
    except (ConfigurationError, InvalidName) as exc:
        raise SettingsError(f"db_url: {exc}") from exc


def open_mongo(url: str, layout: StoreLayout, options: DriverOptions) -> MongoDriver:
    """Factory for ``mongodb://``, ``mongodb+srv://`` and (tests only) ``mongomock://`` URLs.

    The database is the URL's path (default ``msilo``); the client's timeouts and pool are
    those of :func:`_client_options`; ``options.ttl_delay`` is the TTL index's.
    """
    timeout, ttl_delay = options.timeout, options.ttl_delay  # what the driver itself takes
    if scheme_of(url, "mongo").backend == "mongomock":
        name = urlsplit(url).path.lstrip("/") or DEFAULT_DATABASE
        return open_mongomock(name, layout, timeout=timeout, ttl_delay=ttl_delay)
    client: MongoClient[Doc] = _client(MongoClient, url, options)
    try:
        database = _default_database(client)
    except SettingsError:
        client.close()
        raise
    return MongoDriver(database, layout, client=client, timeout=timeout, ttl_delay=ttl_delay)


def mongo_on_asyncio(
    database: Any, layout: StoreLayout | None = None, *, client: Any, **kwargs: Any
) -> BridgedDriver:
    """The driver on pymongo's asyncio objects (``AsyncDatabase``, its ``AsyncMongoClient``, or
    look-alikes): the same steps run on the event loop, each call awaited through
    :mod:`.aio_bridge`. ``kwargs`` go to :class:`MongoDriver`."""
    from .aio import BridgedDriver
    from .aio_bridge import AsyncFace

    face = cast("Database[Doc]", AsyncFace(database))
    return BridgedDriver(MongoDriver(face, layout, client=AsyncFace(client), **kwargs))


async def open_mongo_async(url: str, layout: StoreLayout, options: DriverOptions) -> BridgedDriver:
    """The MongoDB driver on pymongo's ``AsyncMongoClient`` for ``mongodb://`` and
    ``mongodb+srv://`` URLs: :func:`open_mongo`'s client settings, the steps of
    :func:`mongo_on_asyncio`. The client connects on its first operation."""
    from pymongo import AsyncMongoClient

    if scheme_of(url, "mongo").backend == "mongomock":
        raise SettingsError("db_url: mongomock:// has no native asyncio driver")
    client: AsyncMongoClient[Doc] = _client(AsyncMongoClient, url, options)
    try:
        database = _default_database(client)
    except SettingsError:
        await client.close()
        raise
    return mongo_on_asyncio(
        database, layout, client=client, timeout=options.timeout, ttl_delay=options.ttl_delay
    )


def open_mongomock(
    database: str = DEFAULT_DATABASE,
    layout: StoreLayout | None = None,
    **kwargs: Any,
) -> MongoDriver:
    """A driver on a new, empty in-process mongomock server (tests only).

    mongomock runs each operation in the calling thread without locking, so two threads can
    both match a document and both modify it; every operation here holds one lock, which
    gives back the per-document atomicity a real server has. ``kwargs`` go to
    :class:`MongoDriver` (e.g. ``ttl_delay=None``).
    """
    try:
        import mongomock
    except ImportError as exc:
        raise SettingsError(
            "db_url: mongomock:// needs the mongomock package; "
            "install it with: pip install 'libmsilo[testing]'"
        ) from exc
    if not database or len(database) > 63 or _INVALID_DB_CHARS & set(database):
        raise SettingsError(f"db_url: {database!r} is not a valid MongoDB database name")
    client: _Closeable = mongomock.MongoClient()
    locked = _SerializedDatabase(cast(Any, client)[database], threading.RLock())
    return MongoDriver(cast("Database[Doc]", locked), layout, client=client, **kwargs)


class _Serialized:
    """A mongomock object whose every call runs under one lock, cursors read inside it."""

    def __init__(self, target: Any, lock: threading.RLock) -> None:
        self._target = target
        self._lock = lock

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                result = attr(*args, **kwargs)
                if hasattr(result, "__next__"):  # a cursor: read it while holding the lock
                    return list(result)
                return result

        return locked


class _SerializedDatabase(_Serialized):
    """A mongomock database handing out serialized collections."""

    def __getitem__(self, name: str) -> _Serialized:
        return _SerializedCollection(self._target[name], self._lock)


class _SerializedCollection(_Serialized):
    """A serialized mongomock collection whose ``bulk_write`` takes the operations of this
    pymongo (mongomock's bulk builder predates their ``sort`` argument)."""

    def bulk_write(self, requests: Sequence[Any], ordered: bool = True) -> Any:
        with self._lock:
            return self._target.bulk_write([_Sortless(op) for op in requests], ordered=ordered)


class _Sortless:
    """A pymongo bulk operation that adds itself to a builder without ``sort=None``."""

    def __init__(self, operation: Any) -> None:
        self._operation = operation

    def _add_to_bulk(self, bulk: Any) -> None:
        self._operation._add_to_bulk(_SortlessBuilder(bulk))


class _SortlessBuilder:
    """A mongomock bulk builder whose methods take (and refuse a real) ``sort``."""

    def __init__(self, bulk: Any) -> None:
        self._bulk = bulk

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._bulk, name)

        def call(*args: Any, sort: object = None, **kwargs: Any) -> Any:
            if sort is not None:
                raise NotImplementedError("mongomock: bulk operations with a sort")
            return method(*args, **kwargs)

        return call
