"""Redis driver (``redis://``, ``rediss://``, ``redis+cluster://``) on redis-py.

Key layout, for the key prefix ``P`` (the layout's table name):

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
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ParamSpec, TypeVar
from urllib.parse import unquote, urlsplit

import redis
import redis.exceptions as rexc
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.retry import Retry

from ..errors import SettingsError, StorageError, StorageUnavailable
from . import DriverOptions
from .base import NewMessage, ReleaseResult, StoredMessage, StoreLayout
from .redis_scripts import RECORD_FIELDS, SCRIPT_NAMES, build_scripts

__all__ = ["BUCKETS", "GROUPS", "RedisDriver", "open_redis", "owner_group"]

log = logging.getLogger("libmsilo")

#: Number of owner groups (hash tags). Part of the storage format: ids encode it.
GROUPS = 4096
#: Number of bucket keys per cross-owner index; must divide GROUPS.
BUCKETS = 16
#: Most message keys one script call handles (keeps Lua's unpack() within its stack).
_BATCH = 500
#: Most index pages one sweep reads per bucket (bounds the loop).
_MAX_PAGES = 1000
#: Scripts that run in a bucket's slot (cluster only); the others run in a group's slot.
_BUCKET_SCRIPTS = frozenset({"index", "unindex"})

_UNAVAILABLE = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.ClusterDownError,
    rexc.RedisClusterException,
)

_P = ParamSpec("_P")
_T = TypeVar("_T")

Client = redis.Redis | RedisCluster


def _storage_errors(method: Callable[_P, _T]) -> Callable[_P, _T]:
    """Re-raise redis-py exceptions as StorageError / StorageUnavailable."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(*args, **kwargs)
        except _UNAVAILABLE as exc:
            raise StorageUnavailable(f"redis: {exc}") from exc
        except (rexc.RedisError, OSError) as exc:
            raise StorageError(f"redis: {exc}") from exc

    return wrapper


def _text(value: str) -> bytes:
    # surrogatepass: any Python str round-trips, even one a lenient parser let through.
    return value.encode("utf-8", "surrogatepass")


def _untext(value: bytes) -> str:
    return value.decode("utf-8", "surrogatepass")


def owner_group(username: str, domain: str) -> int:
    """The group (hash tag number) of an owner: stable across processes and versions."""
    user, dom = _text(username), _text(domain)
    digest = hashlib.blake2b(b"%d:" % len(user) + user + dom, digest_size=8).digest()
    return int.from_bytes(digest, "big") % GROUPS


class RedisDriver:
    """Stores messages in Redis hashes and sorted sets; every per-owner step is one Lua script."""

    def __init__(self, connect: Callable[[], Client], layout: StoreLayout) -> None:
        self._connect = connect
        self._client: Client | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._prefix = layout.table.encode()
        columns = {attr: getattr(layout, attr) for attr in RECORD_FIELDS}
        self._fields = {attr: name.encode() for attr, name in columns.items()}
        self._sources = build_scripts(columns, BUCKETS)
        self._bucket_base = b""
        self._scripts: dict[str, Script] = {}

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
                    self._bucket_base = b"" if clustered else b"{%s:" % self._prefix
                    self._scripts = {
                        name: client.register_script(self._sources[name]) for name in SCRIPT_NAMES
                    }
                    self._client = client
        return self._client

    def _run(self, name: str, keys: Sequence[bytes], args: Sequence[bytes | int | str]) -> Any:
        client = self.client
        if name not in _BUCKET_SCRIPTS:
            args = [self._bucket_base, *args]
        # redis-py's Script reloads the source and retries once on NOSCRIPT.
        return self._scripts[name](keys=list(keys), args=list(args), client=client)

    def _group_base(self, group: int) -> bytes:
        return b"{%s:g%d}:" % (self._prefix, group)

    def _msg_base(self, group: int) -> bytes:
        return self._group_base(group) + b"m:"

    def _msg_key(self, mid: int) -> bytes:
        return self._msg_base(mid % GROUPS) + str(mid).encode()

    def _owner_keys(self, username: str, domain: str) -> tuple[int, bytes, bytes]:
        group = owner_group(username, domain)
        user = _text(username)
        stem = self._group_base(group) + b"o:%d:" % len(user) + user + b"@" + _text(domain) + b":"
        return group, stem + b"exp", stem + b"off"

    def _bucket_keys(self, bucket: int) -> tuple[bytes, bytes]:
        base = b"{%s:b%d}:" % (self._prefix, bucket)
        return base + b"exp", base + b"rem"

    def _record(self, values: Sequence[Any]) -> StoredMessage:
        v = dict(zip(RECORD_FIELDS, values, strict=True))

        def num(attr: str) -> int:
            raw = v[attr]
            return int(raw) if raw is not None else 0

        token, until = v["lease_token"], v["lease_until"]
        return StoredMessage(
            src_addr=_untext(v["src_addr"] or b""),
            dst_addr=_untext(v["dst_addr"] or b""),
            username=_untext(v["username"] or b""),
            domain=_untext(v["domain"] or b""),
            body=bytes(v["body"] or b""),
            ctype=_untext(v["ctype"] or b""),
            inc_time=num("inc_time"),
            exp_time=num("exp_time"),
            snd_time=num("snd_time"),
            mid=num("mid"),
            lease_token=_untext(token) if token is not None else None,
            lease_until=int(until) if until is not None else None,
            attempts=num("attempts"),
        )

    def _unindex(self, mids: Iterable[int], *, also_exp: bool) -> None:
        """Drop ``mids`` from the bucket indexes (reminders only unless ``also_exp``); on a
        cluster only, the scripts did it already on standalone Redis."""
        if self._bucket_base:
            return
        by_bucket: dict[int, list[int]] = defaultdict(list)
        for mid in mids:
            by_bucket[mid % BUCKETS].append(mid)
        for bucket, group in by_bucket.items():
            for i in range(0, len(group), _BATCH):
                chunk = group[i : i + _BATCH]
                self._run("unindex", self._bucket_keys(bucket), [int(also_exp), *chunk])

    # ---- schema -------------------------------------------------------------------------------

    @_storage_errors
    def create_schema(self) -> None:
        """Load the scripts (on every primary in cluster mode); Redis needs nothing else."""
        client = self.client
        for script in self._scripts.values():
            client.script_load(script.script)

    @_storage_errors
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

    def migrate(self) -> None:
        """Nothing to migrate: Redis stores have no OpenSIPS/Kamailio ancestor."""

    # ---- storing and claiming ---------------------------------------------------------------

    @_storage_errors
    def insert(self, msg: NewMessage, max_messages: int = 0) -> int | None:
        """Store ``msg`` unless its owner is at quota (checked inside the insert script)."""
        group, exp_key, off_key = self._owner_keys(msg.username, msg.domain)
        mid = int(self.client.incr(b"{%s:seq}" % self._prefix)) * GROUPS + group
        f = self._fields
        values: list[bytes | int] = [
            *(f["mid"], mid),
            *(f["src_addr"], _text(msg.src_addr)),
            *(f["dst_addr"], _text(msg.dst_addr)),
            *(f["username"], _text(msg.username)),
            *(f["domain"], _text(msg.domain)),
            *(f["body"], bytes(msg.body)),
            *(f["ctype"], _text(msg.ctype)),
            *(f["inc_time"], msg.inc_time),
            *(f["exp_time"], msg.exp_time),
            *(f["snd_time"], msg.snd_time),
            *(f["attempts"], 0),
        ]
        args = [max_messages, msg.inc_time, msg.exp_time, msg.snd_time, mid, *values]
        msg_key = self._msg_key(mid)
        if not self._run("insert", [exp_key, off_key, msg_key], args):
            return None
        if self._bucket_base:
            return mid
        try:
            self._run("index", self._bucket_keys(mid % BUCKETS), [mid, msg.exp_time, msg.snd_time])
        except rexc.RedisError:
            # Leave the store as it was: without its index entries the message would never
            # expire nor be reminded.
            try:
                self._run("delete", [msg_key], [self._group_base(group), mid])
            except rexc.RedisError:
                log.warning("redis: message %d stored without its index entries", mid)
            raise
        return mid

    @_storage_errors
    def claim(
        self, username: str, domain: str, now: int, lease_until: int, token: str, limit: int = 0
    ) -> list[StoredMessage]:
        """Lease the owner's deliverable messages in id order (one script)."""
        group, _, off_key = self._owner_keys(username, domain)
        rows = self._run(
            "claim", [off_key], [self._msg_base(group), now, lease_until, _text(token), limit]
        )
        return [self._record(r) for r in rows]

    @_storage_errors
    def claim_due_reminders(
        self, now: int, lease_until: int, token: str, limit: int = 0
    ) -> list[StoredMessage]:
        """Lease due reminders across owners in id order, walking every bucket."""
        candidates: list[int] = []
        for bucket in range(BUCKETS):
            candidates += self._due(self._bucket_keys(bucket)[1], now)
        candidates.sort()
        claimed: list[StoredMessage] = []
        stale: list[int] = []
        start = 0
        # Claim in windows of at most the remaining limit, in id order, so exactly the first
        # ``limit`` eligible reminders are leased and none beyond.
        while start < len(candidates) and (limit <= 0 or len(claimed) < limit):
            size = len(candidates) if limit <= 0 else limit - len(claimed)
            window = candidates[start : start + size]
            start += len(window)
            for _group, mids in _by_group(window):
                keys = [self._msg_key(m) for m in mids]
                rows, gone = self._run(
                    "claim_reminders", keys, [now, lease_until, _text(token), *mids]
                )
                claimed += [self._record(r) for r in rows]
                stale += [int(m) for m in gone]
        if stale:
            self._unindex(stale, also_exp=False)
        claimed.sort(key=lambda r: r.mid)
        return claimed

    def _due(self, index_key: bytes, now: int) -> list[int]:
        mids: list[int] = []
        for page in range(_MAX_PAGES):
            got = self.client.zrangebyscore(index_key, "-inf", now, start=page * _BATCH, num=_BATCH)
            mids += _ints(got)
            if len(got) < _BATCH:
                break
        return mids

    # ---- delivery outcomes --------------------------------------------------------------------

    @_storage_errors
    def delete(self, mid: int) -> bool:
        """Delete one message, then its bucket entries."""
        deleted = bool(
            self._run("delete", [self._msg_key(mid)], [self._group_base(mid % GROUPS), mid])
        )
        if deleted:
            self._unindex([mid], also_exp=True)
        return deleted

    @_storage_errors
    def release(
        self, mid: int, token: str | None, *, to_offline: bool = False, max_attempts: int = 0
    ) -> ReleaseResult:
        """Clear a failed delivery's lease (or drop the message at ``max_attempts``)."""
        args: list[bytes | int] = [
            self._group_base(mid % GROUPS),
            mid,
            int(token is not None),
            _text(token or ""),
            int(to_offline),
            max_attempts,
        ]
        code, snd_before = self._run("release", [self._msg_key(mid)], args)
        if code == 2:
            self._unindex([mid], also_exp=True)
            return ReleaseResult.DROPPED
        if code == 1:
            if to_offline and int(snd_before) > 0:
                self._unindex([mid], also_exp=False)
            return ReleaseResult.RELEASED
        return ReleaseResult.NOT_FOUND

    # ---- inbox and housekeeping ---------------------------------------------------------------

    @_storage_errors
    def count(self, username: str, domain: str, now: int) -> int:
        """Number of the owner's unexpired messages."""
        _, exp_key, _ = self._owner_keys(username, domain)
        return int(self.client.zcount(exp_key, f"({now}", "+inf"))

    @_storage_errors
    def list(self, username: str, domain: str, now: int, limit: int = 0) -> list[StoredMessage]:
        """The owner's unexpired messages in id order (one script, nothing leased)."""
        group, exp_key, _ = self._owner_keys(username, domain)
        rows = self._run("list", [exp_key], [self._msg_base(group), now, limit])
        return [self._record(r) for r in rows]

    @_storage_errors
    def get(self, mid: int) -> StoredMessage | None:
        """One message by id, expired or not."""
        names = [self._fields[a] for a in RECORD_FIELDS]
        values = self.client.hmget(self._msg_key(mid), names)
        if values[0] is None:
            return None
        return self._record(values)

    @_storage_errors
    def purge(self, username: str, domain: str) -> int:
        """Delete every message of the owner; returns how many."""
        group, exp_key, off_key = self._owner_keys(username, domain)
        count, mids = self._run("purge", [exp_key, off_key], [self._msg_base(group)])
        self._unindex((int(m) for m in mids), also_exp=True)
        return int(count)

    @_storage_errors
    def delete_expired(self, now: int) -> int:
        """Delete messages with ``exp_time <= now``, walking every bucket's expiry index."""
        total = 0
        for bucket in range(BUCKETS):
            total += self._expire_bucket(bucket, now)
        return total

    def _expire_bucket(self, bucket: int, now: int) -> int:
        exp_index, _ = self._bucket_keys(bucket)
        total, offset = 0, 0
        for _ in range(_MAX_PAGES):
            page = self.client.zrangebyscore(exp_index, "-inf", now, start=offset, num=_BATCH)
            if not page:
                break
            mids = _ints(page)
            dropped: list[int] = []
            for group, chunk in _by_group(mids):
                keys = [self._msg_key(m) for m in chunk]
                count, gone = self._run("expire", keys, [self._group_base(group), now, *chunk])
                total += int(count)
                dropped += [int(m) for m in gone]
            self._unindex(dropped, also_exp=True)
            # Entries the script kept (not expired by an exact comparison) stay in the index.
            offset += len(mids) - len(dropped)
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

    The connection opens on first use; ``options.timeout`` bounds connecting and each reply.
    """
    timeout = options.timeout
    scheme = url.split("://", 1)[0].lower()
    connect: Callable[[], Client]
    if scheme == "redis+cluster":
        nodes, kwargs = _cluster_nodes(url)

        def connect() -> Client:
            return RedisCluster(
                startup_nodes=nodes,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
                **kwargs,
            )

    elif scheme in ("redis", "rediss"):
        try:
            urlsplit(url).port  # noqa: B018 - validates the port now, not on first use
        except ValueError as exc:
            raise SettingsError(f"db_url: {exc}") from exc

        def connect() -> Client:
            return redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                # One quick retry for a pooled connection the server has closed; scripts are
                # safe to repeat (an insert recognises its own id).
                retry=Retry(NoBackoff(), 1, supported_errors=(rexc.ConnectionError,)),
            )

    else:
        raise SettingsError(f"db_url: {url!r} is not a Redis URL")
    return RedisDriver(connect, layout)
