"""Raw Redis baseline: redis-py with hand-written Lua, Cluster-safe like libmsilo's driver.

Layout (prefix ``P``): ``{P:gN}:m:<mid>`` message hashes and ``{P:gN}:q:<user>@<domain>`` the
owner's queue (score = mid), ``N`` a hash of the owner, encoded in the id (``mid = seq * G + N``) so
a reply needs only the id; ``{P}:exp`` and ``{P}:rem`` cross-owner indexes (one key each). A
hand-written store needs the id first (INCR), then one pipelined round trip writes the message
and its index entries; a reply deletes the message and its index entries in one pipeline.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from datetime import tzinfo
from itertools import islice
from typing import Any

import redis

from ..errors import StorageError
from .workload import EXPIRE_TIME, RawMessage, Row, render_dump, render_reminder

__all__ = ["RawRedis", "load_lib_redis"]

GROUPS = 4096
_FIELDS = (
    b"src_addr",
    b"dst_addr",
    b"username",
    b"domain",
    b"body",
    b"ctype",
    b"inc_time",
    b"exp_time",
    b"snd_time",
)

# KEYS: message hash, owner queue. ARGV: mid, field, value, ...
_STORE = """
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[1])
"""

# KEYS: owner queue. ARGV: message key base, now, lease_until, token.
_CLAIM = """
local now, out = tonumber(ARGV[2]), {}
for _, mid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = ARGV[1] .. mid
  local m = redis.call('HMGET', key, 'snd_time', 'exp_time', 'lease_token', 'lease_until',
                       'src_addr', 'dst_addr', 'ctype', 'body', 'inc_time')
  if m[1] == '0' and tonumber(m[2]) > now and ((not m[3]) or tonumber(m[4]) <= now) then
    redis.call('HSET', key, 'lease_token', ARGV[4], 'lease_until', ARGV[3])
    out[#out + 1] = {mid, m[5], m[6], m[7], m[8], m[9]}
  end
end
return out
"""

# KEYS: message hashes of one group. ARGV: now, lease_until, token.
_CLAIM_DUE = """
local now, out = tonumber(ARGV[1]), {}
for _, key in ipairs(KEYS) do
  local m = redis.call('HMGET', key, 'snd_time', 'exp_time', 'lease_token', 'lease_until',
                       'username', 'domain', 'ctype', 'body')
  local snd = tonumber(m[1] or '0')
  if snd > 0 and snd <= now and tonumber(m[2]) > now and ((not m[3]) or tonumber(m[4]) <= now)
  then
    redis.call('HSET', key, 'lease_token', ARGV[3], 'lease_until', ARGV[2])
    out[#out + 1] = {string.match(key, '(%d+)$'), m[5], m[6], m[7], m[8], m[1]}
  end
end
return out
"""

# KEYS: message hashes of one group. ARGV: group base, expire-before (or -1 for any).
_DELETE = """
local before, n = tonumber(ARGV[2]), 0
for _, key in ipairs(KEYS) do
  local m = redis.call('HMGET', key, 'username', 'domain', 'exp_time')
  if m[1] and (before < 0 or tonumber(m[3]) <= before) then
    redis.call('DEL', key)
    redis.call('ZREM', ARGV[1] .. 'q:' .. m[1] .. '@' .. m[2], string.match(key, '(%d+)$'))
    n = n + 1
  end
end
return n
"""


def _group(username: str, domain: str) -> int:
    digest = hashlib.blake2b(f"{username}@{domain}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % GROUPS


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _ints(reply: Any) -> list[int]:
    return [int(v) for v in reply]


def _by_group(mids: Sequence[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for mid in mids:
        groups[mid % GROUPS].append(mid)
    return groups


class RawRedis:
    """msilo on Redis by hand."""

    client = "redis-py"

    def __init__(
        self, url: str, table: str, zone: tzinfo, wait_replicas: int | None = None
    ) -> None:
        self.zone = zone
        # With wait_replicas, each store waits for that many replicas (WAIT, 1 s at most).
        self.wait = None if wait_replicas is None else ("WAIT", wait_replicas, 1000)
        self.r = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
        p = table.encode()
        self.prefix = p
        self.seq, self.exp, self.rem = b"{%s}:seq" % p, b"{%s}:exp" % p, b"{%s}:rem" % p
        self._store = self.r.register_script(_STORE)
        self._claim = self.r.register_script(_CLAIM)
        self._claim_due = self.r.register_script(_CLAIM_DUE)
        self._delete = self.r.register_script(_DELETE)

    def _base(self, group: int) -> bytes:
        return b"{%s:g%d}:" % (self.prefix, group)

    def _msg(self, mid: int) -> bytes:
        return self._base(mid % GROUPS) + b"m:%d" % mid

    def _queue(self, username: str, domain: str) -> bytes:
        return self._base(_group(username, domain)) + f"q:{username}@{domain}".encode()

    def create(self) -> None:
        """Load the scripts; Redis needs nothing else."""
        for script in (self._store, self._claim, self._claim_due, self._delete):
            self.r.script_load(script.script)

    def drop(self) -> None:
        """Delete every key under the prefix."""
        keys = list(self.r.scan_iter(match=b"{" + self.prefix + b"*", count=1000))
        for chunk in _chunks(keys, 1000):
            self.r.unlink(*chunk)

    def _write(self, pipe: Any, row: Row, mid: int) -> None:
        user, domain, exp, snd = row[2], row[3], row[7], row[8]
        values: list[Any] = [mid]
        for name, value in zip(_FIELDS, row, strict=True):
            values += [name, value]
        # EVALSHA straight on the pipeline: a Script object would add a SCRIPT EXISTS round trip
        # to every execute(); create() loaded the scripts.
        pipe.evalsha(self._store.sha, 2, self._msg(mid), self._queue(user, domain), *values)
        pipe.zadd(self.exp, {mid: exp})
        if snd:
            pipe.zadd(self.rem, {mid: snd})

    def bulk_load(self, rows: Iterable[Row]) -> None:
        """Take a block of ids, then one pipeline per chunk."""
        for chunk in _chunks(rows, 2000):
            top = int(self.r.incrby(self.seq, len(chunk)))
            pipe = self.r.pipeline(transaction=False)
            for i, row in enumerate(chunk):
                seq = top - len(chunk) + 1 + i
                self._write(pipe, row, seq * GROUPS + _group(row[2], row[3]))
            pipe.execute()

    def analyze(self) -> None:
        """Nothing to do."""

    def server_version(self) -> str:
        """Redis's version."""
        return f"Redis {self.r.info('server').get('redis_version', '?')}"

    def store(self, row: tuple[str, str, str, str, bytes, str], now: int) -> int:
        """INCR for the id, then one pipelined round trip: the message, its queue and index."""
        mid = int(self.r.incr(self.seq)) * GROUPS + _group(row[2], row[3])
        pipe: Any = self.r.pipeline(transaction=False)
        self._write(pipe, (*row, now, now + EXPIRE_TIME, 0), mid)
        if self.wait is not None:
            pipe.execute_command(*self.wait)
            if int(pipe.execute()[-1]) < self.wait[1]:
                raise StorageError(f"bench: raw store not confirmed by {self.wait[1]} replicas")
            return mid
        pipe.execute()
        return mid

    def dump(
        self, username: str, domain: str, now: int, lease: int, token: str
    ) -> list[RawMessage]:
        """One script leases the owner's deliverable messages."""
        group = _group(username, domain)
        rows = self._claim(
            keys=[self._queue(username, domain)],
            args=[self._base(group) + b"m:", now, lease, token],
        )
        return [
            render_dump(
                int(r[0]), r[1].decode(), r[2].decode(), r[3].decode(), r[4], int(r[5]), self.zone
            )
            for r in rows
        ]

    def reply_ok(self, mid: int) -> None:
        """One pipeline: delete the message and its queue entry, drop its index entries."""
        pipe = self.r.pipeline(transaction=False)
        pipe.evalsha(self._delete.sha, 1, self._msg(mid), self._base(mid % GROUPS), -1)
        pipe.zrem(self.exp, mid)
        pipe.zrem(self.rem, mid)
        pipe.execute()

    def sweep(self, now: int, lease: int, token: str) -> list[RawMessage]:
        """Read the due ids, then one pipeline of per-group claims."""
        mids = _ints(self.r.zrangebyscore(self.rem, "-inf", now))
        pipe = self.r.pipeline(transaction=False)
        for group_mids in _by_group(mids).values():
            keys = [self._msg(m) for m in group_mids]
            pipe.evalsha(self._claim_due.sha, len(keys), *keys, now, lease, token)
        out = [
            render_reminder(
                int(r[0]), r[1].decode(), r[2].decode(), r[3].decode(), r[4], int(r[5]), self.zone
            )
            for rows in pipe.execute()
            for r in rows
        ]
        out.sort(key=lambda m: m.mid)
        return out

    def purge(self, now: int) -> int:
        """Read the expired ids, then per chunk one pipeline: per-group deletes, index removal."""
        total = 0
        mids = _ints(self.r.zrangebyscore(self.exp, "-inf", now))
        for chunk in _chunks(mids, 5000):
            pipe = self.r.pipeline(transaction=False)
            for group, group_mids in _by_group(chunk).items():
                keys = [self._msg(m) for m in group_mids]
                pipe.evalsha(self._delete.sha, len(keys), *keys, self._base(group), now)
            pipe.zrem(self.exp, *chunk)
            pipe.zrem(self.rem, *chunk)
            total += sum(int(n) for n in pipe.execute()[:-2])
        return total

    def close(self) -> None:
        """Close the connections."""
        self.r.close()


def load_lib_redis(driver: Any, rows: Iterable[Row]) -> None:
    """Seed libmsilo's Redis layout directly (see :mod:`libmsilo.drivers.redis`): message hash,
    the owner's ``exp`` and ``off`` sets and the bucket indexes, one pipeline per chunk."""
    from ..drivers.redis import BUCKETS
    from ..drivers.redis import GROUPS as LIB_GROUPS

    client = driver.client
    fields = driver._fields
    for chunk in _chunks(rows, 2000):
        top = int(client.incrby(b"{%s:seq}" % driver._prefix, len(chunk)))
        pipe = client.pipeline(transaction=False)
        for i, row in enumerate(chunk):
            src, dst, user, domain, body, ctype, inc, exp, snd = row
            group, exp_key, off_key = driver._owner_keys(user, domain)
            mid = (top - len(chunk) + 1 + i) * LIB_GROUPS + group
            mapping = {
                fields["mid"]: mid,
                fields["src_addr"]: src,
                fields["dst_addr"]: dst,
                fields["username"]: user,
                fields["domain"]: domain,
                fields["body"]: body,
                fields["ctype"]: ctype,
                fields["inc_time"]: inc,
                fields["exp_time"]: exp,
                fields["snd_time"]: snd,
                fields["attempts"]: 0,
            }
            pipe.hset(driver._msg_key(mid), mapping=mapping)
            pipe.zadd(exp_key, {mid: exp})
            if not snd:
                pipe.zadd(off_key, {mid: mid})
            bucket_exp, bucket_rem = driver._bucket_keys(mid % BUCKETS)
            pipe.zadd(bucket_exp, {mid: exp})
            if snd:
                pipe.zadd(bucket_rem, {mid: snd})
        pipe.execute()
