"""Raw MongoDB baseline: pymongo (or mongomock, the in-process fake) by hand.

A hand-written store with the quota off takes an id from a sequence document and inserts the row;
a claim leases every eligible row of the owner with one ``update_many`` (each document is updated
atomically, so two claims never share a row) and reads them back by token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, tzinfo
from itertools import islice
from typing import Any
from urllib.parse import urlsplit

from bson.binary import Binary
from bson.int64 import Int64
from pymongo import ASCENDING, ReturnDocument

from ..records import CORE_FIELDS
from .workload import EXPIRE_TIME, RawMessage, Row, render_dump, render_reminder

__all__ = ["RawMongo", "mongo_database", "mongo_document"]

Doc = dict[str, Any]
_FIELDS = CORE_FIELDS


def mongo_database(url: str) -> tuple[Any, Any]:
    """(client, database) for a ``mongodb://`` or ``mongomock://`` URL."""
    parts = urlsplit(url)
    name = parts.path.strip("/") or "msilo"
    if parts.scheme == "mongomock":
        import mongomock

        client: Any = mongomock.MongoClient()
    else:
        from pymongo import MongoClient

        client = MongoClient(url, serverSelectionTimeoutMS=5000)
    return client, client[name]


def mongo_document(row: Row, mid: int) -> Doc:
    """The document libmsilo's Mongo driver keeps for ``row`` (also the raw baseline's)."""
    doc: Doc = {"_id": Int64(mid)}
    for name, value in zip(_FIELDS, row, strict=True):
        if isinstance(value, bytes):
            doc[name] = Binary(value)
        elif isinstance(value, int):
            doc[name] = Int64(value)
        else:
            doc[name] = value
    doc.update(lease_token=None, lease_until=None, attempts=0)
    doc["exp_at"] = datetime.fromtimestamp(row[7], UTC)
    return doc


class RawMongo:
    """msilo on one collection plus a sequence document."""

    client = "pymongo"

    def __init__(self, url: str, table: str, zone: tzinfo) -> None:
        self.url, self.table, self.zone = url, table, zone
        self._client, self._db = mongo_database(url)
        if url.startswith("mongomock"):
            self.client = "mongomock"
        self.rows = self._db[table]
        self.seq = self._db[f"{table}_seq"]

    def create(self) -> None:
        """The same indexes as libmsilo's driver (owner + id, snd_time, exp_time)."""
        self.rows.create_index([("username", ASCENDING), ("domain", ASCENDING), ("_id", ASCENDING)])
        self.rows.create_index([("snd_time", ASCENDING)])
        self.rows.create_index([("exp_time", ASCENDING)])
        self.rows.create_index([("exp_at", ASCENDING)], expireAfterSeconds=86_400)
        self.seq.update_one({"_id": "mid"}, {"$max": {"seq": Int64(0)}}, upsert=True)

    def drop(self) -> None:
        """Drop both collections."""
        self._db.drop_collection(self.table)
        self._db.drop_collection(f"{self.table}_seq")

    def bulk_load(self, rows: Iterable[Row]) -> None:
        """insert_many with ids taken from the sequence in one step per chunk."""
        it = iter(rows)
        while chunk := list(islice(it, 5000)):
            top = self.seq.find_one_and_update(
                {"_id": "mid"},
                {"$inc": {"seq": Int64(len(chunk))}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
            first = int(top["seq"]) - len(chunk) + 1
            self.rows.insert_many([mongo_document(r, first + i) for i, r in enumerate(chunk)])

    def analyze(self) -> None:
        """Nothing to do: MongoDB has no planner statistics to refresh."""

    def server_version(self) -> str:
        """The server's version (mongomock's own for the fake)."""
        if self.client == "mongomock":
            from importlib.metadata import version

            return f"mongomock {version('mongomock')}"
        return str(self._client.server_info().get("version", "?"))

    def store(self, row: tuple[str, str, str, str, bytes, str], now: int) -> int:
        """Take an id (findAndModify $inc), insert the document."""
        top = self.seq.find_one_and_update(
            {"_id": "mid"}, {"$inc": {"seq": Int64(1)}}, return_document=ReturnDocument.AFTER
        )
        mid = int(top["seq"])
        self.rows.insert_one(mongo_document((*row, now, now + EXPIRE_TIME, 0), mid))
        return mid

    def _claim(self, flt: Mapping[str, Any], now: int, lease: int, token: str) -> list[Doc]:
        free = [{"lease_token": None}, {"lease_until": {"$lte": now}}]
        self.rows.update_many(
            {**flt, "$or": free}, {"$set": {"lease_token": token, "lease_until": Int64(lease)}}
        )
        return list(self.rows.find({**flt, "lease_token": token}, sort=[("_id", ASCENDING)]))

    def dump(
        self, username: str, domain: str, now: int, lease: int, token: str
    ) -> list[RawMessage]:
        """update_many leases the owner's rows; find reads them back by token."""
        flt = {"username": username, "domain": domain, "snd_time": 0, "exp_time": {"$gt": now}}
        return [
            render_dump(
                int(d["_id"]),
                d["src_addr"],
                d["dst_addr"],
                d["ctype"],
                bytes(d["body"]),
                int(d["inc_time"]),
                self.zone,
            )
            for d in self._claim(flt, now, lease, token)
        ]

    def reply_ok(self, mid: int) -> None:
        """delete_one."""
        self.rows.delete_one({"_id": mid})

    def sweep(self, now: int, lease: int, token: str) -> list[RawMessage]:
        """The same claim for due reminders across owners."""
        flt = {"snd_time": {"$gt": 0, "$lte": now}, "exp_time": {"$gt": now}}
        return [
            render_reminder(
                int(d["_id"]),
                d["username"],
                d["domain"],
                d["ctype"],
                bytes(d["body"]),
                int(d["snd_time"]),
                self.zone,
            )
            for d in self._claim(flt, now, lease, token)
        ]

    def purge(self, now: int) -> int:
        """delete_many."""
        return int(self.rows.delete_many({"exp_time": {"$lte": now}}).deleted_count)

    def close(self) -> None:
        """Close the client."""
        self._client.close()
