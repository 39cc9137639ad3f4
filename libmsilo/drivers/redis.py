"""Redis driver (``redis://``, ``rediss://``, ``redis+cluster://``) on redis-py.

Key layout, for the key prefix ``P`` (the layout's table name):

``{P:version}``
    the libmsilo schema version of the store (see :mod:`.schema_version`).
``{P:seq}``
    the id counter (INCR); ``mid = counter * GROUPS + group``, so ids grow in insertion order,
    are unique across owners, and name the group that holds the message.
``{P:gN}:m:<mid>``
    one message: a hash whose fields are the layout's column names.
``{P:gN}:o:<len(user)>:<user>@<domain>:exp`` / ``...:off``
    an owner's messages (score = exp_time; quota, count, list, purge) and its deliverable
    non-reminders (score = mid; claim).
``{P:bK}:exp`` / ``{P:bK}:rem``
    cross-owner indexes for expiry (score = exp_time) and reminders (score = snd_time),
    split into ``BUCKETS`` keys; message ``mid`` is in bucket ``mid % BUCKETS``.

The group ``N`` of an owner is a stable hash of (user, domain) modulo ``GROUPS``: everything an
owner has shares the hash tag ``{P:gN}``, so each per-owner step is one Lua script in one slot
(Redis Cluster included), and nothing in a user name (``{``, ``}``, ``*``, ``:``) can move a key to
another slot or make two owners' keys collide. Bucket keys carry tags of their own: on a cluster
a bucket entry is written after the message (and removed after it), on standalone Redis the group
script maintains it in the same atomic step. Either way readers treat an entry whose message is
gone, or no longer a reminder, as stale and drop it.

Round trips: a store is INCRBY + one script; a claim, a delete or a release is one script. A
batch of stores is INCRBY + one insert script per slot, a batch of deletes one delete script per
slot (standalone Redis, where slots do not matter: one script for the batch), a batch of
releases one script each, a batch's scripts in one pipeline. The cross-owner sweeps (due
reminders, expiry) read the bucket indexes in one pipeline and then send their per-group scripts
in one pipeline (a cluster pipeline batches them per node); each script is still one atomic step
in one slot, so pipelining changes the number of round trips, not what any step does.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit

import redis
import redis.exceptions as rexc
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from ..errors import MsiloError, SettingsError, StorageUnavailable
from ..masking import mask_url
from . import DriverOptions, batch
from .base import NewMessage, ReleaseResult, StoredMessage, StoreLayout, StoreTotals
from .plumbing import ErrorTable, check_release, storage_step
from .redis_durability import WaitPolicy, prepare
from .redis_scripts import RECORD_FIELDS, SCRIPT_NAMES, build_scripts
from .schema_version import SCHEMA_VERSION, RecordedVersion
from .schemes import scheme_of

if TYPE_CHECKING:
    from .aio import BridgedDriver

__all__ = ["BUCKETS", "GROUPS", "RedisDriver", "open_redis", "open_redis_async", "owner_group"]

log = logging.getLogger("libmsilo")

#: Number of owner groups (hash tags). Part of the storage format: ids encode it.
GROUPS = 4096
#: Number of bucket keys per cross-owner index; must divide GROUPS.
BUCKETS = 16
#: Most message keys one script call handles (keeps Lua's unpack() within its stack), and the
#: page size of index reads.
_BATCH = 500
#: Most index pages one sweep reads per bucket (bounds the loop).
_MAX_PAGES = 1000
#: Most message keys the scripts of one pipeline handle together (bounds request and reply).
_PIPELINE_KEYS = 5000
#: Owners whose key names are kept ready (they repeat: a store, then the dump of the same owner).
_OWNER_CACHE = 4096
#: Scripts that only read: no durability wait after them.
_READ_SCRIPTS = frozenset({"list"})
#: Scripts that run in a bucket's slot (cluster only); the others run in a group's slot.
_BUCKET_SCRIPTS = frozenset({"index", "unindex"})

#: The release script's answer codes.
_RELEASED = (ReleaseResult.NOT_FOUND, ReleaseResult.RELEASED, ReleaseResult.DROPPED)

_UNAVAILABLE = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.ClusterDownError,
    rexc.RedisClusterException,
)

#: Sets the version key to ARGV[1] unless it holds a higher one; returns the old value (0: none).
_RAISE_VERSION = """
local old = tonumber(redis.call('GET', KEYS[1]) or '0')
if old < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return old
"""


Client = redis.Redis | RedisCluster
#: One script call: (script name, keys, arguments after the bucket base).
Call = tuple[str, Sequence[bytes], Sequence[bytes | int | str]]


def _text(value: str) -> bytes:
    # surrogatepass: any Python str round-trips, even one a lenient parser let through.
    return value.encode("utf-8", "surrogatepass")


def owner_group(username: str, domain: str) -> int:
    """The group (hash tag number) of an owner: stable across processes and versions."""
    user, dom = _text(username), _text(domain)
    digest = hashlib.blake2b(b"%d:" % len(user) + user + dom, digest_size=8).digest()
    return int.from_bytes(digest, "big") % GROUPS


@functools.lru_cache(maxsize=_OWNER_CACHE)
def _owner_keys(prefix: bytes, username: str, domain: str) -> tuple[int, bytes, bytes]:
    """(group, exp set key, off set key) of an owner under ``prefix``."""
    group = owner_group(username, domain)
    user = _text(username)
    stem = b"{%s:g%d}:o:%d:%s@%s:" % (prefix, group, len(user), user, _text(domain))
    return group, stem + b"exp", stem + b"off"


def _group_base(prefix: bytes, group: int) -> bytes:
    return b"{%s:g%d}:" % (prefix, group)


def _record(values: Sequence[Any]) -> StoredMessage:
    """A StoredMessage from the fields a script returns in RECORD_FIELDS order."""
    mid, src, dst, user, domain, body, ctype, inc, exp, snd, extra, callid = values[:12]
    token, until, attempts = values[12:]
    # Inlined decoding: this runs once per claimed row, the driver's hottest Python.
    return StoredMessage(
        (src or b"").decode("utf-8", "surrogatepass"),
        (dst or b"").decode("utf-8", "surrogatepass"),
        (user or b"").decode("utf-8", "surrogatepass"),
        (domain or b"").decode("utf-8", "surrogatepass"),
        bytes(body or b""),
        (ctype or b"").decode("utf-8", "surrogatepass"),
        int(inc) if inc is not None else 0,
        int(exp) if exp is not None else 0,
        int(snd) if snd is not None else 0,
        extra.decode("utf-8", "surrogatepass") if extra else "",
        callid.decode("utf-8", "surrogatepass") if callid else "",
        int(mid) if mid is not None else 0,
        token.decode("utf-8", "surrogatepass") if token is not None else None,
        int(until) if until is not None else None,
        int(attempts) if attempts is not None else 0,
    )


class RedisDriver(RecordedVersion):
    """Stores messages in Redis hashes and sorted sets; every per-owner step is one Lua script."""

    # redis-py retries a dropped connection itself (see open_redis); nothing is retried here.
    errors = ErrorTable("redis", unavailable=_UNAVAILABLE, failed=(rexc.RedisError, OSError))
    _store_kind = "Redis store"

    def __init__(
        self,
        connect: Callable[[], Client],
        layout: StoreLayout,
        *,
        wait: WaitPolicy | None = None,
        where: str = "redis",
    ) -> None:
        self._connect = connect
        self._wait = wait if wait is not None and wait.enabled else None
        self._where = where  # the URL with its password masked, for log messages
        self._client: Client | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._store_name = layout.table
        self._prefix = layout.table.encode()
        self._seq_key = b"{%s:seq}" % self._prefix
        self._version_key = b"{%s:version}" % self._prefix
        columns = {attr: getattr(layout, attr) for attr in RECORD_FIELDS}
        self._fields = {attr: name.encode() for attr, name in columns.items()}
        self._record_names = tuple(self._fields[a] for a in RECORD_FIELDS)
        self._sources = build_scripts(columns, BUCKETS)
        self._shas = {
            name: hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
            for name, source in self._sources.items()
        }
        self._buckets = [
            (b"{%s:b%d}:exp" % (self._prefix, b), b"{%s:b%d}:rem" % (self._prefix, b))
            for b in range(BUCKETS)
        ]
        self._bucket_base = b""
        self._execute: Callable[..., Any] = self._not_connected

    @staticmethod
    def _not_connected(*_args: Any) -> Any:
        raise StorageUnavailable("redis: not connected")

    # ---- connection and keys ------------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The redis-py client, connected on first use."""
        if self._closed:
            raise StorageUnavailable("redis: the driver is closed")
        if self._client is None:
            with self._lock:
                if self._client is None:
                    client = self._connect()
                    # Standalone: the group scripts keep the bucket indexes in the same step.
                    clustered = isinstance(client, RedisCluster)
                    try:
                        prepare(
                            client, self._wait or WaitPolicy(), self._where, clustered=clustered
                        )
                    except BaseException:
                        client.close()
                        raise
                    self._bucket_base = b"" if clustered else b"{%s:" % self._prefix
                    self._execute = client.execute_command
                    self._client = client
        return self._client

    def _command(self, name: str, keys: Sequence[bytes], args: Sequence[Any]) -> tuple[Any, ...]:
        """The EVALSHA command of one script call; group scripts get the bucket base first."""
        if name in _BUCKET_SCRIPTS:
            return ("EVALSHA", self._shas[name], len(keys), *keys, *args)
        return ("EVALSHA", self._shas[name], len(keys), *keys, self._bucket_base, *args)

    def _run(self, name: str, keys: Sequence[bytes], args: Sequence[bytes | int | str]) -> Any:
        """Run one script (EVALSHA straight away; loaded and retried once on NOSCRIPT)."""
        if self._wait is not None and name not in _READ_SCRIPTS:
            return self._run_many([(name, keys, args)])[0]  # the write and its WAIT, together
        client = self.client
        command = self._command(name, keys, args)
        try:
            return self._execute(*command)
        except rexc.NoScriptError:
            client.script_load(self._sources[name])
            return self._execute(*command)

    def _run_many(self, calls: Sequence[Call]) -> list[Any]:
        """Run script calls in pipelines (at most _PIPELINE_KEYS message keys each), replies in
        call order. Calls refused with NOSCRIPT (which did not run) are sent again once their
        scripts are loaded; any other error is raised after every reply was read."""
        replies: list[Any] = [None] * len(calls)
        chunk: list[int] = []
        keys = 0
        for i, (_, call_keys, _) in enumerate(calls):
            if chunk and keys + len(call_keys) > _PIPELINE_KEYS:
                self._pipeline(calls, chunk, replies)
                chunk, keys = [], 0
            chunk.append(i)
            keys += len(call_keys)
        if chunk:
            self._pipeline(calls, chunk, replies)
        return replies

    def _pipeline(self, calls: Sequence[Call], todo: list[int], replies: list[Any]) -> None:
        """Send ``calls[i]`` for each ``i`` in ``todo`` in one pipeline; store their replies."""
        client = self.client
        for attempt in range(2):
            pipe = client.pipeline(transaction=False)
            for i in todo:
                pipe.execute_command(*self._command(*calls[i]))
            wait = self._wait
            if wait is not None and any(calls[i][0] not in _READ_SCRIPTS for i in todo):
                pipe.execute_command(*wait.command())  # same connection: covers these writes
            else:
                wait = None
            results = pipe.execute(raise_on_error=False)
            if wait is not None:
                wait.check(results.pop())
            missing: list[int] = []
            for i, reply in zip(todo, results, strict=True):
                if isinstance(reply, rexc.NoScriptError) and attempt == 0:
                    missing.append(i)
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    replies[i] = reply
            if not missing:
                return
            for name in sorted({calls[i][0] for i in missing}):
                client.script_load(self._sources[name])
            todo = missing

    def _msg_key(self, mid: int) -> bytes:
        return b"{%s:g%d}:m:%d" % (self._prefix, mid % GROUPS, mid)

    def _owner_keys(self, username: str, domain: str) -> tuple[int, bytes, bytes]:
        return _owner_keys(self._prefix, username, domain)

    def _bucket_keys(self, bucket: int) -> tuple[bytes, bytes]:
        return self._buckets[bucket]

    def _unindex(self, mids: Iterable[int], *, also_exp: bool) -> None:
        """Drop ``mids`` from the bucket indexes (reminders only unless ``also_exp``); on a
        cluster only, the scripts did it already on standalone Redis."""
        if self._bucket_base:
            return
        by_bucket: dict[int, list[int]] = defaultdict(list)
        for mid in mids:
            by_bucket[mid % BUCKETS].append(mid)
        calls: list[Call] = [
            ("unindex", self._buckets[bucket], [int(also_exp), *group[i : i + _BATCH]])
            for bucket, group in by_bucket.items()
            for i in range(0, len(group), _BATCH)
        ]
        self._run_many(calls)

    def _read_indexes(self, keys: Sequence[bytes], now: int) -> list[int]:
        """The members of every key in ``keys`` with score <= ``now``, read in pipelined pages."""
        found: list[int] = []
        pending = list(keys)
        for page in range(_MAX_PAGES):
            if not pending:
                break
            pipe = self.client.pipeline(transaction=False)
            for key in pending:
                pipe.zrangebyscore(key, "-inf", now, start=page * _BATCH, num=_BATCH)
            more: list[bytes] = []
            for key, got in zip(pending, pipe.execute(), strict=True):
                found += _ints(got)
                if len(got) >= _BATCH:
                    more.append(key)
            pending = more
        return found

    # ---- schema -------------------------------------------------------------------------------

    @storage_step
    def create_schema(self) -> None:
        """Load the scripts (on every primary in cluster mode) and record the schema version;
        a store at another version is refused (:func:`.schema_version.check_version`)."""
        client = self.client
        for name in SCRIPT_NAMES:
            client.script_load(self._sources[name])
        self._settle_version()

    def _read_version(self) -> bytes | None:
        return cast("bytes | None", self.client.get(self._version_key))

    def _seed_version(self) -> None:
        self.client.set(self._version_key, SCHEMA_VERSION, nx=True)

    def _raise_version(self) -> int:
        return int(self.client.eval(_RAISE_VERSION, 1, self._version_key, SCHEMA_VERSION))

    @storage_step
    def drop_schema(self) -> None:
        """Delete every key under the prefix (scanning each primary in cluster mode)."""
        client = self.client
        pattern = b"{" + self._prefix + b":*"
        if isinstance(client, RedisCluster):
            for node in client.get_primaries():  # type: ignore[no-untyped-call]
                conn = client.get_redis_connection(node)
                self._delete_matching(conn, pattern)
        else:
            self._delete_matching(client, pattern)

    @staticmethod
    def _delete_matching(client: redis.Redis, pattern: bytes) -> None:
        batch: list[bytes] = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= _BATCH:
                RedisDriver._unlink(client, batch)
                batch = []
        RedisDriver._unlink(client, batch)

    @staticmethod
    def _unlink(client: redis.Redis, keys: list[bytes]) -> None:
        # One key per command: in cluster mode the keys of one node span many slots.
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.unlink(key)
        pipe.execute()

    @storage_step
    def migrate(self) -> None:
        """Record the current schema version: every version so far is the same hashes (fields a
        message lacks read as empty), and Redis stores have no OpenSIPS/Kamailio ancestor."""
        self._migrate_version()

    @storage_step
    def ping(self) -> None:
        """PING the server (a cluster: every node redis-py knows)."""
        self.client.ping()

    # ---- storing and claiming ---------------------------------------------------------------

    @storage_step
    def insert(self, msg: NewMessage, max_messages: int = 0) -> int | None:
        """Store ``msg`` unless its owner is at quota (checked inside the insert script)."""
        return self._insert_batch([msg], max_messages)[0]

    def insert_many(
        self, msgs: Sequence[NewMessage], max_messages: int = 0
    ) -> list[int | MsiloError | None]:
        """Store ``msgs``: one INCRBY takes their ids, one insert script per slot stores them
        (on standalone Redis one for the whole batch; each one atomic step, quota checked
        inside, message by message)."""
        return batch.insert_checked(
            self,
            msgs,
            max_messages,
            lambda msg: msg,
            lambda todo: self._step(lambda: self._insert_batch(todo, max_messages)),
        )

    def _insert_batch(self, msgs: Sequence[NewMessage], max_messages: int) -> list[int | None]:
        """Store checked messages; their ids, None for each refused at quota."""
        first = int(self.client.incrby(self._seq_key, len(msgs))) - len(msgs) + 1
        mids, calls, rows = self._insert_calls(msgs, first, max_messages)
        done = [self._run(*calls[0])] if len(calls) == 1 else self._run_many(calls)
        answers: list[int | None] = [None] * len(msgs)
        for part, replies in zip(rows, done, strict=True):
            for i, ok in zip(part, replies, strict=True):
                if ok:
                    answers[i] = mids[i]
        if not self._bucket_base:
            stored = [(m, msg) for m, msg in zip(answers, msgs, strict=True) if m is not None]
            if stored:
                self._index_new(stored)
        return answers

    def _insert_calls(
        self, msgs: Sequence[NewMessage], first: int, max_messages: int
    ) -> tuple[list[int], list[Call], list[list[int]]]:
        """The ids of ``msgs`` (sequence numbers from ``first``), the insert script calls that
        store them (one per slot on a cluster, else one; at most _BATCH messages each) and the
        positions in ``msgs`` of each call's messages."""
        prefix = self._prefix
        by_slot = not self._bucket_base  # a cluster: one call per group
        mids: list[int] = []
        calls: list[Call] = []
        rows: list[list[int]] = []
        open_calls: dict[int, tuple[list[bytes], list[Any], list[int]]] = {}
        for i, msg in enumerate(msgs):
            group = _owner_keys(prefix, msg.username, msg.domain)[0]
            mid = (first + i) * GROUPS + group
            mids.append(mid)
            slot = group if by_slot else 0
            part = open_calls.get(slot)
            if part is None or len(part[0]) >= _BATCH:
                part = open_calls[slot] = ([], [max_messages], [])
                calls.append(("insert", part[0], part[1]))
                rows.append(part[2])
            part[0].append(b"{%s:g%d}:m:%d" % (prefix, group, mid))
            part[1].extend(
                (
                    mid,
                    msg.inc_time,
                    msg.exp_time,
                    msg.snd_time,
                    _text(msg.src_addr),
                    _text(msg.dst_addr),
                    _text(msg.username),
                    _text(msg.domain),
                    bytes(msg.body),
                    _text(msg.ctype),
                    _text(msg.extra_hdrs),
                    _text(msg.callid),
                )
            )
            part[2].append(i)
        return mids, calls, rows

    def _index_new(self, stored: Sequence[tuple[int, NewMessage]]) -> None:
        """Cluster only: add new messages to the bucket indexes (one script per bucket); should
        that fail, delete them again (without their index entries they would never expire nor
        be reminded)."""
        by_bucket: dict[int, list[int]] = defaultdict(list)
        for mid, msg in stored:
            by_bucket[mid % BUCKETS] += (mid, msg.exp_time, msg.snd_time)
        calls: list[Call] = [
            ("index", self._buckets[bucket], triples[i : i + 3 * _BATCH])
            for bucket, triples in by_bucket.items()
            for i in range(0, len(triples), 3 * _BATCH)
        ]
        try:
            if len(calls) == 1:
                self._run(*calls[0])
            else:
                self._run_many(calls)
        except rexc.RedisError:
            undo = [mid for mid, _ in stored]
            try:
                self._run_many(
                    [
                        ("delete", [self._msg_key(undo[i]) for i in part], [undo[i] for i in part])
                        for part in self._slot_parts(undo)
                    ]
                )
            except rexc.RedisError:
                log.warning("redis: %d messages stored without their index entries", len(stored))
            raise

    def delete_many(self, mids: Sequence[int]) -> list[bool | MsiloError]:
        """Delete messages with one delete script per slot (standalone Redis: one for the
        batch), then their bucket entries (see :func:`.batch.delete_checked`)."""

        def store(ids: list[int]) -> set[int]:
            done = self._step(lambda: self._delete_batch(ids))
            return {mid for mid, ok in zip(ids, done, strict=True) if ok}

        return batch.delete_checked(self, mids, store)

    def _delete_batch(self, mids: Sequence[int]) -> list[bool]:
        """Delete checked ids (in order: a repeated id is found once); whether each was."""
        parts = self._slot_parts(mids)
        calls: list[Call] = [
            ("delete", [self._msg_key(mids[i]) for i in part], [mids[i] for i in part])
            for part in parts
        ]
        done = [self._run(*calls[0])] if len(calls) == 1 else self._run_many(calls)
        deleted = [False] * len(mids)
        for part, replies in zip(parts, done, strict=True):
            for i, ok in zip(part, replies, strict=True):
                deleted[i] = bool(ok)
        gone = [mid for mid, ok in zip(mids, deleted, strict=True) if ok]
        if gone:
            self._unindex(gone, also_exp=True)
        return deleted

    def _slot_parts(self, mids: Sequence[int]) -> list[list[int]]:
        """The positions in ``mids`` in parts of at most _BATCH, in order: one part per group
        on a cluster (one slot each), any ids together on standalone Redis."""
        if self._bucket_base:
            return [list(range(i, min(i + _BATCH, len(mids)))) for i in range(0, len(mids), _BATCH)]
        groups: dict[int, list[int]] = defaultdict(list)
        for i, mid in enumerate(mids):
            groups[mid % GROUPS].append(i)
        return [
            part[i : i + _BATCH] for part in groups.values() for i in range(0, len(part), _BATCH)
        ]

    @storage_step
    def claim(
        self, username: str, domain: str, now: int, lease_until: int, token: str, limit: int = 0
    ) -> list[StoredMessage]:
        """Lease the owner's deliverable messages in id order (one script)."""
        group, _, off_key = _owner_keys(self._prefix, username, domain)
        msg_base = b"{%s:g%d}:m:" % (self._prefix, group)
        rows = self._run("claim", (off_key,), (msg_base, now, lease_until, _text(token), limit))
        return [_record(r) for r in rows]

    @storage_step
    def claim_due_reminders(
        self, now: int, lease_until: int, token: str, limit: int = 0
    ) -> list[StoredMessage]:
        """Lease due reminders across owners in id order: one pipeline reads every bucket, one
        pipeline of per-group scripts leases them."""
        candidates = self._read_indexes([rem for _, rem in self._buckets], now)
        candidates.sort()
        claimed: list[StoredMessage] = []
        stale: list[int] = []
        start = 0
        token_arg = _text(token)
        # Claim in windows of at most the remaining limit, in id order, so exactly the first
        # ``limit`` eligible reminders are leased and none beyond (one window without a limit).
        while start < len(candidates) and (limit <= 0 or len(claimed) < limit):
            size = len(candidates) if limit <= 0 else limit - len(claimed)
            window = candidates[start : start + size]
            start += len(window)
            calls: list[Call] = [
                (
                    "claim_reminders",
                    [self._msg_key(m) for m in mids],
                    [now, lease_until, token_arg, *mids],
                )
                for _group, mids in _by_group(window)
            ]
            for rows, gone in self._run_many(calls):
                claimed += [_record(r) for r in rows]
                stale += _ints(gone)
        if stale:
            self._unindex(stale, also_exp=False)
        claimed.sort(key=lambda r: r.mid)
        return claimed

    # ---- delivery outcomes --------------------------------------------------------------------

    @storage_step
    def delete(self, mid: int) -> bool:
        """Delete one message, then its bucket entries."""
        return self._delete_batch([mid])[0]

    @storage_step
    def release(
        self, mid: int, token: str | None, *, to_offline: bool = False, max_attempts: int = 0
    ) -> ReleaseResult:
        """Clear a failed delivery's lease (or drop the message at ``max_attempts``)."""
        return self._release_batch([(mid, token, to_offline)], max_attempts)[0]

    def release_many(
        self, releases: Sequence[batch.Release], max_attempts: int = 0
    ) -> list[ReleaseResult | MsiloError]:
        """End failed deliveries with one pipeline of release scripts, then (on a cluster)
        their bucket entries; a bad item gets its own error. Scripts of one pipeline run in
        order, so a repeated id needs no step of its own (unlike :func:`.batch.release_checked`)."""
        results: list[ReleaseResult | MsiloError] = [ReleaseResult.NOT_FOUND] * len(releases)
        todo: list[int] = []
        for i, (mid, token, to_offline) in enumerate(releases):
            try:
                if check_release(mid, token, to_offline=to_offline, max_attempts=max_attempts):
                    todo.append(i)
            except MsiloError as exc:
                results[i] = exc
        if todo:
            items = [releases[i] for i in todo]
            done = self._step(lambda: self._release_batch(items, max_attempts))
            for i, result in zip(todo, done, strict=True):
                results[i] = result
        return results

    def _release_batch(
        self, releases: Sequence[batch.Release], max_attempts: int
    ) -> list[ReleaseResult]:
        """Release checked items: one script each (one pipeline for several)."""
        calls: list[Call] = [
            (
                "release",
                (self._msg_key(mid),),
                (
                    _group_base(self._prefix, mid % GROUPS),
                    mid,
                    int(token is not None),
                    _text(token or ""),
                    int(to_offline),
                    max_attempts,
                ),
            )
            for mid, token, to_offline in releases
        ]
        done = [self._run(*calls[0])] if len(calls) == 1 else self._run_many(calls)
        results: list[ReleaseResult] = []
        dropped: list[int] = []  # out of both bucket indexes
        offline: list[int] = []  # reminders turned offline: out of the reminder index
        for (mid, _, to_offline), (code, snd_before) in zip(releases, done, strict=True):
            results.append(_RELEASED[int(code)])
            if code == 2:
                dropped.append(mid)
            elif code == 1 and to_offline and int(snd_before) > 0:
                offline.append(mid)
        if dropped:
            self._unindex(dropped, also_exp=True)
        if offline:
            self._unindex(offline, also_exp=False)
        return results

    # ---- inbox and housekeeping ---------------------------------------------------------------

    @storage_step
    def count(self, username: str, domain: str, now: int) -> int:
        """Number of the owner's unexpired messages."""
        _, exp_key, _ = _owner_keys(self._prefix, username, domain)
        return int(self.client.zcount(exp_key, f"({now}", "+inf"))

    @storage_step
    def totals(self, now: int) -> StoreTotals:
        """Unexpired rows from the expiry indexes, one pipeline of ZCOUNTs (on a cluster an
        index entry may briefly lag its message); leases are not indexed: ``leased`` is None."""
        pipe = self.client.pipeline(transaction=False)
        for exp_key, _ in self._buckets:
            pipe.zcount(exp_key, f"({now}", "+inf")
        return StoreTotals(sum(int(n) for n in pipe.execute()), None)

    @storage_step
    def list(self, username: str, domain: str, now: int, limit: int = 0) -> list[StoredMessage]:
        """The owner's unexpired messages in id order (one script, nothing leased)."""
        group, exp_key, _ = _owner_keys(self._prefix, username, domain)
        msg_base = b"{%s:g%d}:m:" % (self._prefix, group)
        rows = self._run("list", [exp_key], [msg_base, now, limit])
        return [_record(r) for r in rows]

    @storage_step
    def get(self, mid: int) -> StoredMessage | None:
        """One message by id, expired or not."""
        values = self.client.hmget(self._msg_key(mid), self._record_names)
        if values[0] is None:
            return None
        return _record(values)

    @storage_step
    def purge(self, username: str, domain: str) -> int:
        """Delete every message of the owner; returns how many."""
        group, exp_key, off_key = _owner_keys(self._prefix, username, domain)
        msg_base = b"{%s:g%d}:m:" % (self._prefix, group)
        count, mids = self._run("purge", [exp_key, off_key], [msg_base])
        self._unindex(_ints(mids), also_exp=True)
        return int(count)

    @storage_step
    def delete_expired(self, now: int) -> int:
        """Delete messages with ``exp_time <= now``: per round, one pipeline reads a page of
        every bucket's expiry index and one pipeline of per-group scripts deletes them."""
        total = 0
        offsets = dict.fromkeys(range(BUCKETS), 0)
        for _ in range(_MAX_PAGES):
            if not offsets:
                break
            pipe = self.client.pipeline(transaction=False)
            for bucket, offset in offsets.items():
                pipe.zrangebyscore(self._buckets[bucket][0], "-inf", now, start=offset, num=_BATCH)
            pages = {
                bucket: _ints(page)
                for bucket, page in zip(offsets, pipe.execute(), strict=True)
                if page
            }
            mids = [mid for page in pages.values() for mid in page]
            calls: list[Call] = [
                (
                    "expire",
                    [self._msg_key(m) for m in chunk],
                    [_group_base(self._prefix, group), now, *chunk],
                )
                for group, chunk in _by_group(mids)
            ]
            dropped: list[int] = []
            for count, gone in self._run_many(calls):
                total += int(count)
                dropped += _ints(gone)
            self._unindex(dropped, also_exp=True)
            # Entries the script kept (not expired by an exact comparison) stay in the index and
            # are stepped over; a short page was the bucket's last.
            left = Counter(mid % BUCKETS for mid in dropped)
            offsets = {
                bucket: offsets[bucket] + len(page) - left[bucket]
                for bucket, page in pages.items()
                if len(page) >= _BATCH
            }
        return total

    def close(self) -> None:
        """Close the connections; later calls raise StorageUnavailable."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _ints(values: Any) -> list[int]:
    """A redis-py reply (a list of numeric strings) as ints."""
    return [int(v) for v in values]


def _by_group(mids: Sequence[int]) -> list[tuple[int, list[int]]]:
    """``mids`` split by group, each part in at most _BATCH ids, ids kept in order."""
    groups: dict[int, list[int]] = defaultdict(list)
    for mid in mids:
        groups[mid % GROUPS].append(mid)
    return [
        (group, part[i : i + _BATCH])
        for group, part in groups.items()
        for i in range(0, len(part), _BATCH)
    ]


# ---- factory ----------------------------------------------------------------------------------


def _cluster_nodes(url: str) -> tuple[list[ClusterNode], dict[str, Any]]:
    """Parse ``redis+cluster://[user[:password]@]host:port[,host:port...][/]``."""
    rest = url.split("://", 1)[1]
    netloc, _, path = rest.partition("/")
    if path.strip("/") not in ("", "0"):
        raise SettingsError(f"db_url: Redis Cluster has only database 0, not {path!r}")
    kwargs: dict[str, Any] = {}
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if user:
            kwargs["username"] = unquote(user)
        if colon:
            kwargs["password"] = unquote(password)
    nodes = []
    for part in hosts.split(","):
        try:
            parsed = urlsplit("//" + part)
            host, port = parsed.hostname, parsed.port or 6379
        except ValueError as exc:
            raise SettingsError(f"db_url: bad Redis Cluster node {part!r}") from exc
        if not host:
            raise SettingsError(f"db_url: bad Redis Cluster node {part!r}")
        nodes.append(ClusterNode(host, port))  # type: ignore[no-untyped-call]
    return nodes, kwargs


def open_redis(url: str, layout: StoreLayout, options: DriverOptions) -> RedisDriver:
    """Factory for ``redis://``, ``rediss://`` (TLS) and ``redis+cluster://host:port,...``.

    The connection opens on first use; ``options.timeout`` bounds connecting, each reply and
    the wait for one of the ``options.pool_size`` connections (on a cluster: per node, redis-py
    keeping one pool for each).
    """
    wait, timeout = _bounds(options)
    scheme = scheme_of(url, "redis")
    connect: Callable[[], Client]
    if scheme.backend == "redis+cluster":
        nodes, kwargs = _cluster_nodes(url)

        def connect() -> Client:
            # Given a URL, redis-py builds each node's pool with connection_pool_class: the
            # first node as a URL, the others as startup nodes.
            first, *others = nodes
            host = f"[{first.host}]" if ":" in first.host else first.host
            return RedisCluster(
                url=f"redis://{host}:{first.port}",
                startup_nodes=others,
                connection_pool_class=redis.BlockingConnectionPool,
                connection_class=_hiredis_packing(redis.Connection),
                max_connections=options.pool_size,
                timeout=options.timeout,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
                **kwargs,
            )

    else:
        _check_port(url)

        def connect() -> Client:
            return redis.Redis(
                connection_pool=_standalone_pool(redis, Retry, url, options, timeout)
            )

    return RedisDriver(connect, layout, wait=wait, where=mask_url(url))


def _bounds(options: DriverOptions) -> tuple[WaitPolicy, float]:
    """The durability wait of ``options`` and the socket timeout that allows for it."""
    wait = WaitPolicy(options.wait_replicas, options.wait_timeout, options.wait_aof)
    # A reply may take the wait on top of the step: the socket must not give up first.
    return wait, options.timeout + (wait.timeout if wait.enabled else 0.0)


def _check_port(url: str) -> None:
    """Validate the URL's port now, not on first use."""
    try:
        urlsplit(url).port  # noqa: B018
    except ValueError as exc:
        raise SettingsError(f"db_url: {exc}") from exc


def _standalone_pool(
    client: Any, retry: Any, url: str, options: DriverOptions, timeout: float
) -> Any:
    """The connection pool of ``client`` (``redis`` or ``redis.asyncio``) for standalone
    Redis: at most ``pool_size`` connections, a caller waits for a free one at most the
    timeout; one quick retry (``retry``: the module's ``Retry``) for a pooled connection the
    server has closed (scripts are safe to repeat: an insert recognises its own id)."""
    pool = client.BlockingConnectionPool.from_url(
        url,
        max_connections=options.pool_size,
        timeout=options.timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=retry(NoBackoff(), 1, supported_errors=(rexc.ConnectionError,)),
    )
    pool.connection_class = _hiredis_packing(pool.connection_class)
    return pool


@functools.cache
def _hiredis_packing(connection_class: type[Any]) -> type[Any]:
    """``connection_class`` (of ``redis`` or ``redis.asyncio``) packing commands in one hiredis
    call: the asyncio client packs in Python, argument by argument (a third of a batch's time),
    the blocking one looks at every argument in Python before hiredis packs them. Values
    hiredis does not take (a bytearray) are packed the client's own way. Without hiredis the
    class itself."""
    try:
        from hiredis import pack_command
    except ImportError:  # pragma: no cover - hiredis is a dependency
        return connection_class
    python_pack = connection_class.pack_command

    def pack(self: Any, *args: Any) -> list[bytes]:
        first = args[0]
        # As redis-py: a command name with spaces ("SCRIPT LOAD") is several arguments.
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [pack_command(args)]
        except TypeError:
            return python_pack(self, *args)  # type: ignore[no-any-return]

    return type(connection_class.__name__, (connection_class,), {"pack_command": pack})


async def open_redis_async(url: str, layout: StoreLayout, options: DriverOptions) -> BridgedDriver:
    """The Redis driver on ``redis.asyncio`` for ``redis://`` and ``rediss://`` URLs: the same
    steps and scripts, run on the event loop (see :mod:`.aio_bridge`); connected here."""
    import redis.asyncio as aredis
    from redis.asyncio.retry import Retry as AsyncRetry

    from .aio import BridgedDriver
    from .aio_bridge import AsyncFace, BridgeLock, sleep

    wait, timeout = _bounds(options)
    if scheme_of(url, "redis").backend == "redis+cluster":
        raise SettingsError("db_url: Redis Cluster has no native asyncio driver here")
    _check_port(url)

    def connect() -> Client:
        pool = _standalone_pool(aredis, AsyncRetry, url, options, timeout)
        return cast(Client, AsyncFace(aredis.Redis.from_pool(pool)))

    driver = RedisDriver(connect, layout, wait=wait, where=mask_url(url))
    driver._lock = BridgeLock()  # type: ignore[assignment]
    driver._sleep = sleep
    return BridgedDriver(driver)
