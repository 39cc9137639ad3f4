"""Redis-specific behaviour of the Redis driver: key layout, hash tags, scripts, stale indexes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from libmsilo.drivers import DriverOptions, StoreLayout, open_driver
from libmsilo.drivers import redis as rdriver
from libmsilo.drivers.base import ReleaseResult
from libmsilo.drivers.redis import BUCKETS, GROUPS, RedisDriver, open_redis, owner_group
from libmsilo.errors import SettingsError, StorageError, StorageUnavailable
from libmsilo.testing import make_message, unique_table
from tests.backends import backend_url
from tests.redis_cluster import redis_cluster_url, redis_tls_url
from tests.schema_versions import check_version_cycle

__all__ = ["redis_cluster_url", "redis_tls_url"]  # fixtures, imported for pytest

NOW = 1_700_000_000
HOSTILE = ["{x}", "*", "a:b", "}", "{", "}{", "{}", "a@b", "", "x\x00y", "ü{ä}"]


def _open(url: str, layout: StoreLayout | None = None) -> RedisDriver:
    d = open_redis(url, layout or StoreLayout(table=unique_table("silo_")), DriverOptions())
    d.create_schema()
    return d


@pytest.fixture(params=["standalone", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster_url"))
    return backend_url("redis")


@pytest.fixture
def driver(url: str) -> Iterator[RedisDriver]:
    d = _open(url)
    yield d
    d.drop_schema()
    d.close()


def _keys(d: RedisDriver, prefix: str) -> set[bytes]:
    """Every key under ``{prefix:`` on every node."""
    client = d.client
    clients: list[redis.Redis] = (
        [client.get_redis_connection(n) for n in client.get_primaries()]  # type: ignore[no-untyped-call]
        if isinstance(client, RedisCluster)
        else [client]
    )
    found: set[bytes] = set()
    for c in clients:
        found.update(c.scan_iter(match=b"{" + prefix.encode() + b":*", count=1000))
    return found


# ---- key layout -------------------------------------------------------------------------------


def test_message_hash_uses_the_layout_column_names(url: str) -> None:
    layout = StoreLayout(
        table=unique_table("silo_"), src_addr="sc_src", body="sc_body", exp_time="sc_exp"
    )
    d = _open(url, layout)
    try:
        mid = d.insert(make_message(body=b"\x00\xffhi"))
        assert mid is not None
        raw = d.client.hgetall(f"{{{layout.table}:g{mid % GROUPS}}}:m:{mid}".encode())
        assert raw[b"sc_src"] == b"sip:bob@example.com"
        assert raw[b"sc_body"] == b"\x00\xffhi"
        assert raw[b"sc_exp"] == str(NOW + 3600).encode()
        assert raw[b"mid"] == str(mid).encode()
        assert b"lease_token" not in raw and b"src_addr" not in raw
        stored = d.get(mid)
        assert stored is not None and stored.body == b"\x00\xffhi"
    finally:
        d.drop_schema()
        d.close()


def test_every_key_of_an_owner_shares_one_slot(driver: RedisDriver) -> None:
    prefix = driver._prefix.decode()
    for user in HOSTILE:
        before = _keys(driver, prefix)
        mid = driver.insert(make_message(user=user))
        assert mid is not None and mid % GROUPS == owner_group(user, "example.com")
        new = _keys(driver, prefix) - before
        owner_keys = {k for k in new if not k.startswith(b"{%s:b" % driver._prefix)}
        owner_keys.discard(b"{%s:seq}" % driver._prefix)
        # the message hash and the owner's two sets, all under the group's tag
        assert len(owner_keys) == 3, (user, owner_keys)
        tag = b"{%s:g%d}" % (driver._prefix, mid % GROUPS)
        assert all(k.startswith(tag) for k in owner_keys), owner_keys
        assert len({key_slot(k) for k in owner_keys}) == 1
        assert key_slot(next(iter(owner_keys))) == key_slot(tag)


def test_owner_keys_never_collide(driver: RedisDriver) -> None:
    owners = [("a@b", "c"), ("a", "b@c"), ("a", "b:c"), ("a:b", "c"), ("", "a@b"), ("a@", "b")]
    owners += [(u, "example.com") for u in HOSTILE]
    for user, domain in owners:
        assert driver.insert(make_message(user=user, domain=domain, body=user.encode())) is not None
    for user, domain in owners:
        assert driver.count(user, domain, NOW) == 1, (user, domain)
        listed = driver.list(user, domain, NOW)
        assert [(r.username, r.domain) for r in listed] == [(user, domain)]
    assert driver.purge("a@b", "c") == 1
    assert driver.count("a", "b@c", NOW) == 1


def test_bucket_indexes_hold_reminders_and_expiry(driver: RedisDriver) -> None:
    plain = driver.insert(make_message())
    reminder = driver.insert(make_message(snd_time=NOW + 60))
    assert plain is not None and reminder is not None
    exp_p, rem_p = driver._bucket_keys(plain % BUCKETS)
    exp_r, rem_r = driver._bucket_keys(reminder % BUCKETS)
    client = driver.client
    assert client.zscore(exp_p, str(plain)) == NOW + 3600
    assert client.zscore(rem_p, str(plain)) is None
    assert client.zscore(exp_r, str(reminder)) == NOW + 3600
    assert client.zscore(rem_r, str(reminder)) == NOW + 60
    assert driver.delete(reminder)
    assert client.zscore(exp_r, str(reminder)) is None
    assert client.zscore(rem_r, str(reminder)) is None


def test_drop_schema_removes_only_its_own_prefix(url: str) -> None:
    table = unique_table("silo_")
    mine, other = _open(url, StoreLayout(table=table)), _open(url, StoreLayout(table=table + "x"))
    try:
        for user in HOSTILE:
            mine.insert(make_message(user=user, snd_time=NOW + 1))
        kept = other.insert(make_message())
        assert _keys(mine, table)
        mine.drop_schema()
        assert _keys(mine, table) == set()
        assert kept is not None and other.get(kept) is not None
    finally:
        mine.drop_schema()
        other.drop_schema()
        mine.close()
        other.close()


def test_bucket_keys_spread_over_the_cluster(redis_cluster_url: str) -> None:
    d = _open(redis_cluster_url)
    try:
        client = d.client
        assert isinstance(client, RedisCluster)
        nodes = {
            client.get_node_from_key(key).name  # type: ignore[no-untyped-call]
            for b in range(BUCKETS)
            for key in d._bucket_keys(b)
        }
        assert len(nodes) > 1
        slots = {key_slot(d._msg_key(mid)) for mid in range(GROUPS, 2 * GROUPS)}
        assert len(slots) > GROUPS // 2
    finally:
        d.drop_schema()
        d.close()


# ---- scripts ----------------------------------------------------------------------------------


def test_scripts_reload_after_script_flush(driver: RedisDriver) -> None:
    mid = driver.insert(make_message())
    driver.client.script_flush()
    second = driver.insert(make_message(snd_time=NOW - 1))
    assert mid is not None and second is not None
    driver.client.script_flush()
    assert [r.mid for r in driver.claim("alice", "example.com", NOW, NOW + 30, "t")] == [mid]
    driver.client.script_flush()
    assert [r.mid for r in driver.claim_due_reminders(NOW, NOW + 30, "t")] == [second]
    driver.client.script_flush()
    assert driver.delete(mid)
    assert driver.count("alice", "example.com", NOW) == 1


def test_insert_script_is_idempotent_for_one_id(driver: RedisDriver) -> None:
    """A retried insert call (same ids) neither stores twice nor reports a refusal."""
    msgs = [make_message(), make_message(user="bob")]
    _, calls, _ = driver._insert_calls(msgs, 7, 1)
    assert len(calls) == (1 if driver._bucket_base else 2)  # one per slot on a cluster
    for _ in range(2):  # at quota 1 the second time, but they are the same messages
        assert [driver._run(*call) for call in calls] in ([[1, 1]], [[1], [1]])
    for msg in msgs:
        assert driver.count(msg.username, msg.domain, NOW) == 1


def test_batches_take_one_script_call_per_slot(
    driver: RedisDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """insert_many and delete_many: one script call for the batch on standalone Redis, one per
    group (slot) on a cluster; answers in order, a repeated id deleted once."""
    sent: list[tuple[str, int]] = []  # (script, messages) of each call
    run, run_many = driver._run, driver._run_many

    def one(name: str, keys: Sequence[bytes], args: Sequence[bytes | int | str]) -> object:
        sent.append((name, len(keys)))
        return run(name, keys, args)

    def many(calls: list[rdriver.Call]) -> list[object]:
        sent.extend((name, len(keys)) for name, keys, _ in calls)
        return run_many(calls)

    monkeypatch.setattr(driver, "_run", one)
    monkeypatch.setattr(driver, "_run_many", many)
    users = [f"s{i % 5}" for i in range(12)]
    got = driver.insert_many([make_message(user=u, body=b"%d" % i) for i, u in enumerate(users)])
    mids = [m for m in got if isinstance(m, int)]
    assert len(mids) == 12 and mids == sorted(mids)
    groups = len({owner_group(u, "example.com") for u in users})
    clustered = not driver._bucket_base
    inserts = [n for name, n in sent if name == "insert"]
    assert sum(inserts) == 12 and len(inserts) == (groups if clustered else 1)
    sent.clear()
    answers = driver.delete_many([mids[0], mids[5], 10**12, mids[0], *mids[6:]])
    assert answers == [True, True, False, False] + [True] * 6
    deletes = [n for name, n in sent if name == "delete"]
    assert sum(deletes) == 9  # distinct ids; 10**12 % GROUPS == 0: a group of its own
    assert len(deletes) == (groups + 1 if clustered else 1)
    assert sum(driver.count(u, "example.com", NOW) for u in set(users)) == 4


def test_batches_beyond_one_call_keep_order_and_quota(
    driver: RedisDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rdriver, "_BATCH", 4)  # messages per script call
    msgs = [make_message(user=f"b{i % 3}", body=b"%d" % i) for i in range(30)]
    got = driver.insert_many(msgs, 7)
    assert got[21:] == [None] * 9  # each owner's first 7 are stored, in batch order
    mids = [m for m in got[:21] if isinstance(m, int)]
    assert len(mids) == 21 and mids == sorted(mids)
    for mid, msg in zip(mids, msgs, strict=False):
        stored = driver.get(mid)
        assert stored is not None and stored.body == msg.body
    assert driver.delete_many([*mids, *mids[:3]]) == [True] * 21 + [False] * 3
    assert sum(driver.count(f"b{i}", "example.com", NOW) for i in range(3)) == 0


def test_times_beyond_32_bits_and_binary_bodies(driver: RedisDriver) -> None:
    body = bytes(range(256)) * 3 + b"\r\n\x00"
    msg = make_message(body=body, inc_time=2**40, exp_time=2**52, snd_time=2**41)
    mid = driver.insert(msg)
    assert mid is not None
    stored = driver.get(mid)
    assert stored is not None
    assert (stored.body, stored.inc_time, stored.exp_time, stored.snd_time) == (
        body,
        2**40,
        2**52,
        2**41,
    )
    assert driver.count("alice", "example.com", 2**52 - 1) == 1
    assert driver.count("alice", "example.com", 2**52) == 0


# ---- stale index entries ----------------------------------------------------------------------


def test_dangling_reminder_entries_are_skipped_and_dropped(driver: RedisDriver) -> None:
    live = driver.insert(make_message(user="live", snd_time=NOW - 1))
    gone = driver.insert(make_message(user="gone", snd_time=NOW - 1))
    assert live is not None and gone is not None
    # a crash between the owner step and the bucket cleanup: the message is gone, its entry not
    driver.client.delete(driver._msg_key(gone))
    ghost = 99 * GROUPS + 5  # an entry for an id that never existed
    driver.client.zadd(driver._bucket_keys(ghost % BUCKETS)[1], {str(ghost): NOW - 1})
    got = driver.claim_due_reminders(NOW, NOW + 30, "t")
    assert [r.mid for r in got] == [live]
    for mid in (gone, ghost):
        assert driver.client.zscore(driver._bucket_keys(mid % BUCKETS)[1], str(mid)) is None
    assert driver.client.zscore(driver._bucket_keys(live % BUCKETS)[1], str(live)) is not None


def test_reminder_turned_offline_leaves_the_reminder_index(driver: RedisDriver) -> None:
    mid = driver.insert(make_message(snd_time=NOW - 1))
    assert mid is not None
    rem_key = driver._bucket_keys(mid % BUCKETS)[1]
    assert [r.mid for r in driver.claim_due_reminders(NOW, NOW + 30, "t")] == [mid]
    assert driver.release(mid, "t", to_offline=True).value == "released"
    assert driver.client.zscore(rem_key, str(mid)) is None
    # an entry left behind by a crash is recognised as stale: the row is no longer a reminder
    driver.client.zadd(rem_key, {str(mid): NOW - 1})
    assert driver.claim_due_reminders(NOW + 100, NOW + 130, "u") == []
    assert driver.client.zscore(rem_key, str(mid)) is None
    assert [r.mid for r in driver.claim("alice", "example.com", NOW, NOW + 5, "v")] == [mid]


def test_release_many_keeps_the_bucket_indexes(
    driver: RedisDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One pipeline for the batch; a dropped message leaves both indexes, a reminder turned
    offline the reminder index, and the others keep their entries."""
    inserted = [driver.insert(make_message(user=f"r{i}", snd_time=NOW - 1)) for i in range(4)]
    mids = [m for m in inserted if m is not None]
    assert len(mids) == 4
    claimed = driver.claim_due_reminders(NOW, NOW + 30, "t")
    assert sorted(r.mid for r in claimed) == mids

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a single step ran inside a batch")

    monkeypatch.setattr(driver, "release", refuse)
    pipelines: list[list[str]] = []  # the scripts of each pipeline
    pipeline = driver._pipeline

    def record(calls: list[rdriver.Call], todo: list[int], replies: list[object]) -> None:
        pipelines.append([calls[i][0] for i in todo])
        pipeline(calls, todo, replies)

    monkeypatch.setattr(driver, "_pipeline", record)
    a, b, c, d = mids
    got = driver.release_many([(a, "t", True), (b, "t", False), (c, "x", True), (a, "t", True)])
    released, missing = ReleaseResult.RELEASED, ReleaseResult.NOT_FOUND
    assert got == [released, released, missing, missing]  # a's lease: cleared by the first
    assert driver.release_many([(d, "t", False)], max_attempts=1) == [ReleaseResult.DROPPED]
    assert pipelines[0] == ["release"] * 4
    rem = [driver._bucket_keys(m % BUCKETS)[1] for m in mids]
    exp = [driver._bucket_keys(m % BUCKETS)[0] for m in mids]
    client = driver.client
    assert client.zscore(rem[0], str(a)) is None  # offline now
    assert client.zscore(exp[0], str(a)) is not None
    assert client.zscore(rem[1], str(b)) is not None  # still a reminder
    assert client.zscore(rem[2], str(c)) is not None  # not released: still leased
    assert client.zscore(exp[3], str(d)) is None and client.zscore(rem[3], str(d)) is None
    assert driver.get(d) is None
    assert [r.mid for r in driver.claim("r0", "example.com", NOW, NOW + 5, "v")] == [a]


def test_dangling_expiry_entries_count_nothing(driver: RedisDriver) -> None:
    expired = driver.insert(make_message(exp_time=NOW))
    gone = driver.insert(make_message(user="gone", exp_time=NOW))
    assert expired is not None and gone is not None
    driver.client.delete(driver._msg_key(gone))
    assert driver.delete_expired(NOW) == 1
    for mid in (expired, gone):
        assert driver.client.zscore(driver._bucket_keys(mid % BUCKETS)[0], str(mid)) is None
    assert driver.count("alice", "example.com", NOW - 1) == 0


def test_sweeps_page_through_large_indexes(
    driver: RedisDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rdriver, "_BATCH", 3)
    reminders = [driver.insert(make_message(user=f"u{i}", snd_time=NOW - i)) for i in range(20)]
    expiring = [driver.insert(make_message(user=f"e{i}", exp_time=NOW - i)) for i in range(20)]
    kept = driver.insert(make_message(user="k", exp_time=NOW + 1))
    first = driver.claim_due_reminders(NOW, NOW + 30, "t", limit=7)
    assert [r.mid for r in first] == reminders[:7]
    rest = driver.claim_due_reminders(NOW, NOW + 30, "t")
    assert [r.mid for r in rest] == reminders[7:]
    assert driver.delete_expired(NOW) == 20
    assert all(driver.get(m) is None for m in expiring if m is not None)
    assert kept is not None and driver.get(kept) is not None


# ---- errors and URLs --------------------------------------------------------------------------


def test_unreachable_server_is_storage_unavailable() -> None:
    d = open_redis("redis://127.0.0.1:1/0", StoreLayout(), DriverOptions(timeout=1.0))
    with pytest.raises(StorageUnavailable) as info:
        d.count("alice", "example.com", NOW)
    assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
    d.close()


def test_server_error_is_storage_error(driver: RedisDriver) -> None:
    _, exp_key, _ = driver._owner_keys("alice", "example.com")
    driver.client.set(exp_key, b"not a sorted set")
    with pytest.raises(StorageError) as info:
        driver.insert(make_message(), 5)
    assert not isinstance(info.value, StorageUnavailable)
    assert isinstance(info.value.__cause__, redis.exceptions.ResponseError)


def test_closed_driver_is_unusable(url: str) -> None:
    d = _open(url)
    d.drop_schema()
    d.close()
    with pytest.raises(StorageUnavailable):
        d.get(1)


def test_registry_opens_redis_urls(url: str) -> None:
    d = open_driver(url, StoreLayout(table=unique_table("silo_")))
    assert isinstance(d, RedisDriver)
    d.close()


@pytest.mark.parametrize(
    "bad",
    ["redis+cluster://127.0.0.1:7000/3", "redis+cluster://:7000", "redis://127.0.0.1:notaport/0"],
)
def test_bad_urls_are_settings_errors(bad: str) -> None:
    with pytest.raises(SettingsError):
        open_redis(bad, StoreLayout(), DriverOptions())


def test_cluster_url_takes_several_nodes_and_credentials() -> None:
    nodes, kwargs = rdriver._cluster_nodes("redis+cluster://u%40x:p%3Aw@h1:7000,h2,[::1]:7002/")
    assert [(n.host, n.port) for n in nodes] == [("h1", 7000), ("h2", 6379), ("::1", 7002)]
    assert kwargs == {"username": "u@x", "password": "p:w"}


def test_rediss_url_speaks_tls(redis_tls_url: str) -> None:
    d = _open(redis_tls_url)
    try:
        mid = d.insert(make_message(body=bytes(range(256))))
        assert mid is not None
        assert [r.body for r in d.claim("alice", "example.com", NOW, NOW + 5, "t")] == [
            bytes(range(256))
        ]
        conn_kwargs = d.client.connection_pool.connection_kwargs  # type: ignore[union-attr]
        assert d.client.connection_pool.connection_class.__name__ == "SSLConnection"  # type: ignore[union-attr]
        assert conn_kwargs["ssl_ca_certs"]
    finally:
        d.drop_schema()
        d.close()


def test_schema_versions_are_recorded_and_migrated(driver: RedisDriver) -> None:
    key = b"{%s:version}" % driver._prefix

    def record(version: int | None) -> None:
        if version is None:
            driver.client.delete(key)
        else:
            driver.client.set(key, version)

    check_version_cycle(driver, record)


# ---- command packing -----------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ("EVALSHA", "ab" * 20, 2, b"k1", b"k2", b"", 3, 2**53, b"\x00\r\n\xff", "t\u00e9xt"),
        ("SCRIPT LOAD", "return 1"),  # a name with a space: two arguments
        (b"CLIENT SETNAME", b"x"),
        ("SET", b"k", bytearray(b"v"), "PX", 1.5),  # hiredis refuses a bytearray
        ("SET", b"k", memoryview(b"v" * 10_000)),
    ],
)
@pytest.mark.parametrize("connection_class", [redis.Connection, aredis.Connection])
def test_connections_pack_commands_as_redis_py_does(
    command: tuple[object, ...], connection_class: Any
) -> None:
    plain = connection_class()
    fast = rdriver._hiredis_packing(connection_class)()
    assert type(fast).pack_command is not connection_class.pack_command
    assert b"".join(fast.pack_command(*command)) == b"".join(plain.pack_command(*command))


def test_the_drivers_pack_with_hiredis(driver: RedisDriver) -> None:
    client = driver.client
    if isinstance(client, RedisCluster):
        pools = [n.redis_connection.connection_pool for n in client.get_nodes()]  # type: ignore[no-untyped-call]
    else:
        pools = [client.connection_pool]
    for pool in pools:
        assert pool.connection_class is rdriver._hiredis_packing(redis.Connection)
    got = driver.insert_many([make_message(body=b"%d" % i) for i in range(3)])
    assert all(isinstance(m, int) for m in got)
    assert driver.count("alice", "example.com", NOW) == 3


def test_the_asyncio_driver_packs_with_hiredis() -> None:
    async def main() -> None:
        d = await rdriver.open_redis_async(
            backend_url("redis"), StoreLayout(table=unique_table("silo_")), DriverOptions()
        )
        try:
            await d.create_schema()
            pool = d.sync.client.target.connection_pool  # type: ignore[attr-defined]
            assert pool.connection_class is rdriver._hiredis_packing(aredis.Connection)
            got = await d.insert_many([make_message(body=b"%d" % i) for i in range(3)])
            assert all(isinstance(m, int) for m in got)
            assert await d.count("alice", "example.com", NOW) == 3
        finally:
            await d.drop_schema()
            await d.close()

    asyncio.run(main())
