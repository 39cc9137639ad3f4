"""The database goes away during store and dump, then comes back.

A :class:`tests.faults.TcpProxy` sits between the ``Silo`` and PostgreSQL / MariaDB / Redis; the
shared servers keep running. Calls during an outage must raise ``StorageUnavailable`` within a
bound set by ``db_timeout`` (4x, generous on purpose: a correctness bound, not a benchmark),
leave no half-written row, and the same ``Silo`` must work again once the proxy is restored.
A second ``Silo`` connected directly (not through the proxy) checks what the store holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from libmsilo import MsiloSettings, ReplyOutcome, Silo, StorageError, StorageUnavailable
from libmsilo.drivers import DriverOptions, StoreLayout
from libmsilo.drivers.base import StoredMessage
from libmsilo.drivers.mongo import MongoDriver, open_mongomock
from libmsilo.testing import unique_table
from tests.backends import backend_url
from tests.faults import (
    CutDirection,
    FaultyDatabase,
    PrivateRedis,
    TcpProxy,
    proxy_to,
    record,
)
from tests.helpers import message

TIMEOUT = 2.0  # db_timeout of every Silo here
BOUND = 4 * TIMEOUT  # a call during an outage must fail within this (seconds)
OWNER = "sip:alice@example.com"
NETWORK = ["postgresql", "mysql", "redis"]
pytestmark = pytest.mark.slow  # seconds of timeouts and lease waits per test


def _settings(url: str, table: str, **kw: Any) -> MsiloSettings:
    values: dict[str, Any] = {
        "db_url": url,
        "db_table": table,
        "timezone": "UTC",
        "db_timeout": TIMEOUT,
        "lease_time": 1,
        "add_date": False,
    }
    values.update(kw)
    return MsiloSettings(**values)


def body_for(tag: str) -> bytes:
    """A binary body (invalid UTF-8, NULs, CRLFs) that names its message."""
    digest = hashlib.sha256(tag.encode()).digest()
    return tag.encode() + b"\x00\xff\r\n\r\n" + digest * 8


def store_msg(silo: Silo, tag: str, owner: str = OWNER) -> int:
    """Store a message tagged ``tag`` (binary body, octet-stream) and return its id."""
    req = message(to=owner, body=body_for(tag), ctype="application/octet-stream")
    mid = silo.store(req).mid
    assert mid is not None
    return mid


def timed(call: Callable[[], object]) -> tuple[BaseException | None, float]:
    """Run ``call`` in a thread and wait at most ``BOUND + 2`` s; (what it raised, seconds).

    A call still running then is reported as a ``TimeoutError`` (the thread is left to finish
    once the fault is lifted).
    """
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # reported to the test, which checks its type
            outcome.append(exc)

    start = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BOUND + 2)
    elapsed = time.monotonic() - start
    if not outcome:
        return TimeoutError(f"still running after {elapsed:.1f} s"), elapsed
    return outcome[0], elapsed


def assert_unavailable(call: Callable[[], object], what: str) -> float:
    """``call`` raises StorageUnavailable within BOUND seconds; the time it took."""
    exc, elapsed = timed(call)
    assert isinstance(exc, StorageUnavailable), f"{what}: {exc!r} after {elapsed:.2f} s"
    assert elapsed < BOUND, f"{what}: StorageUnavailable only after {elapsed:.2f} s"
    return elapsed


def rows_of(silo: Silo, owner: str = OWNER) -> list[StoredMessage]:
    """Every unexpired row of ``owner`` (nothing leased)."""
    return silo.list(owner, limit=10_000)


def assert_whole(row: StoredMessage, tag_of: dict[bytes, str]) -> str:
    """A row is complete: every field as stored, body byte-exact. Returns its tag."""
    tag = tag_of.get(row.body)
    assert tag is not None, f"row {row.mid} has a body no store sent ({row.body[:40]!r}...)"
    assert row.username == "alice" and row.domain == "example.com"
    assert row.src_addr == "sip:bob@example.org" and row.dst_addr == OWNER
    assert row.ctype == "application/octet-stream"
    assert row.inc_time > 0 and row.exp_time == row.inc_time + 259200
    assert row.snd_time == 0
    return tag


@dataclass
class Rig:
    """A Silo through the proxy, a direct Silo on the same table, and the proxy."""

    kind: str
    proxy: TcpProxy
    silo: Silo
    direct: Silo


@pytest.fixture(params=NETWORK)
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    url = backend_url(request.param)
    table = unique_table()
    direct = Silo.from_settings(_settings(url, table))
    with proxy_to(url) as proxy:
        silo = Silo.from_settings(_settings(proxy.url(url), table), create_schema=False)
        try:
            yield Rig(request.param, proxy, silo, direct)
        finally:
            silo.close()
            direct.driver.drop_schema()
            direct.close()


def test_cut_refuses_promptly_and_the_same_silo_recovers(rig: Rig) -> None:
    silo, direct, proxy = rig.silo, rig.direct, rig.proxy
    before = [store_msg(silo, f"before-{i}") for i in range(3)]

    proxy.cut()
    calls: dict[str, Callable[[], object]] = {
        "store": lambda: store_msg(silo, "during"),
        "dump": lambda: silo.dump(owner=OWNER),
        "count": lambda: silo.count(OWNER),
        "list": lambda: silo.list(OWNER),
        "get": lambda: silo.get(before[0]),
        "on_reply": lambda: silo.on_reply(before[0], 200),
        "purge_expired": lambda: silo.purge_expired(),
    }
    elapsed = {name: round(assert_unavailable(call, name), 3) for name, call in calls.items()}
    record("outage.cut", backend=rig.kind, calls=len(calls), max_seconds=max(elapsed.values()))

    # Nothing was written or leased during the outage.
    rows = rows_of(direct)
    assert sorted(r.mid for r in rows) == sorted(before)
    assert all(r.lease_token is None for r in rows)

    proxy.restore()
    accepted = proxy.accepted
    after = store_msg(silo, "after")
    assert proxy.accepted > accepted  # the same Silo reconnected through the proxy
    out = silo.dump(owner=OWNER)
    tags = {m.mid or 0: m.body for m in out}
    assert sorted(tags) == sorted([*before, after])
    for i, mid in enumerate(before):
        assert tags[mid] == body_for(f"before-{i}")
    assert tags[after] == body_for("after")
    for m in out:
        assert m.mid is not None
        silo.on_reply(m.mid, 200)
    assert direct.count(OWNER) == 0


@pytest.mark.parametrize("direction", list(CutDirection), ids=lambda d: d.value)
def test_cut_at_every_point_of_a_store(rig: Rig, direction: CutDirection) -> None:
    """Cut the connection at the 1st, 2nd, ... chunk of a store's round trips: each store either
    succeeds or raises StorageUnavailable, and every row left is whole and appears once."""
    silo, direct, proxy = rig.silo, rig.direct, rig.proxy
    store_msg(silo, "warm-up")  # connect first: the cuts below hit the store's own traffic
    tag_of = {body_for("warm-up"): "warm-up"}
    reported: set[str] = {"warm-up"}
    failed: set[str] = set()
    for after in range(60):
        tag = f"{direction.value}-{after}"
        tag_of[body_for(tag)] = tag
        proxy.arm(direction, after)
        exc, elapsed = timed(lambda tag=tag: store_msg(silo, tag))  # type: ignore[misc]
        fired = not proxy.armed
        proxy.restore()
        if exc is None:
            reported.add(tag)
        else:
            assert isinstance(exc, StorageUnavailable), f"cut after {after} chunks: {exc!r}"
            assert elapsed < BOUND
            failed.add(tag)
        seen = [assert_whole(r, tag_of) for r in rows_of(direct)]
        assert len(seen) == len(set(seen)), f"a message stored twice: {sorted(seen)}"
        assert reported <= set(seen), "a store reported as done is missing"
        if not fired:
            break  # the store needed fewer chunks than `after`: every point has been cut
    else:
        pytest.fail("a store took more than 60 chunks")
    assert failed, "no cut hit a store"
    left = {assert_whole(r, tag_of) for r in rows_of(direct)}
    record(
        "outage.store_every_point",
        backend=rig.kind,
        direction=direction.value,
        cuts=len(failed),
        failed_but_stored=len(failed & left),
        failed_not_stored=len(failed - left),
        rows=len(left),
    )
    if direction is CutDirection.REQUEST:
        # The server never saw the request of a failed store: nothing of it may be there.
        assert not failed & {assert_whole(r, tag_of) for r in rows_of(direct)}


@pytest.mark.parametrize("direction", list(CutDirection), ids=lambda d: d.value)
def test_cut_at_every_point_of_a_dump(rig: Rig, direction: CutDirection) -> None:
    """Cut a dump at each chunk of its round trips. A claim the server made but whose answer was
    lost stays leased for lease_time (1 s) and is then delivered: nothing is lost or doubled."""
    silo, direct, proxy = rig.silo, rig.direct, rig.proxy
    stored = {store_msg(silo, f"m{i}"): body_for(f"m{i}") for i in range(4)}
    delivered: list[int] = []

    def deliver(out: list[Any]) -> None:
        for msg in out:
            assert msg.body == stored[msg.mid]
            delivered.append(msg.mid)
            silo.on_reply(msg.mid, 200)

    cuts = 0
    for after in range(60):
        proxy.arm(direction, after)
        got: list[Any] = []
        exc, elapsed = timed(lambda got=got: got.extend(silo.dump(owner=OWNER, max_messages=1)))  # type: ignore[misc]
        fired = not proxy.armed
        proxy.restore()
        if exc is not None:
            assert isinstance(exc, StorageUnavailable), f"cut after {after} chunks: {exc!r}"
            assert elapsed < BOUND
            cuts += 1
        deliver(got)
        if not fired:
            break  # the dump needed fewer chunks than `after`: every point has been cut
    else:
        pytest.fail("a dump took more than 60 chunks")
    assert cuts > 0, "no cut hit a dump"
    deadline = time.monotonic() + 60
    while direct.count(OWNER) > 0 and time.monotonic() < deadline:
        got = silo.dump(owner=OWNER)
        deliver(got)
        if not got:
            time.sleep(0.2)  # what is left is leased by a claim whose answer was cut
    assert sorted(delivered) == sorted(stored), "a message lost or delivered twice"
    assert direct.count(OWNER) == 0
    record(
        "outage.dump_every_point",
        backend=rig.kind,
        direction=direction.value,
        cuts=cuts,
        messages=len(stored),
        lost=len(set(stored) - set(delivered)),
        duplicates=len(delivered) - len(set(delivered)),
    )


@pytest.mark.parametrize("kind", NETWORK)
def test_partition_fails_promptly_and_heals(kind: str) -> None:
    """A stall (bytes silently dropped both ways, as in a partition or a hung server) must turn
    into StorageUnavailable within the bound, and the same Silo works when it heals."""
    url = backend_url(kind)
    table = unique_table()
    direct = Silo.from_settings(_settings(url, table))
    try:
        with proxy_to(url) as proxy:
            silo = Silo.from_settings(_settings(proxy.url(url), table), create_schema=False)
            try:
                first = store_msg(silo, "first")
                proxy.stall()
                try:
                    exc, elapsed = timed(lambda: store_msg(silo, "during"))
                    record(
                        "outage.stall",
                        backend=kind,
                        call="store",
                        error=repr(exc)[:80],
                        seconds=round(elapsed, 2),
                    )
                    assert isinstance(exc, StorageUnavailable), f"store: {exc!r}"
                    assert elapsed < BOUND, f"store: StorageUnavailable after {elapsed:.2f} s"
                    assert_unavailable(lambda: silo.dump(owner=OWNER), "dump")
                finally:
                    proxy.restore()  # also frees a call that is still hanging
                wait_idle(proxy)
                rows = rows_of(direct)
                assert [r.mid for r in rows] == [first] and rows[0].lease_token is None
                second = store_msg(silo, "second")
                assert sorted(m.mid or 0 for m in silo.dump(owner=OWNER)) == [first, second]
            finally:
                silo.close()
    finally:
        direct.driver.drop_schema()
        direct.close()


def wait_idle(proxy: TcpProxy, timeout: float = 15.0) -> None:
    """Wait until a call left hanging by a stall has given up (its connection was reset)."""
    deadline = time.monotonic() + timeout
    while proxy.connections > 0 and time.monotonic() < deadline:
        time.sleep(0.05)


def test_private_redis_killed_and_restarted(tmp_path: Path) -> None:
    """SIGKILL the Redis server itself, then start it again on the same port: calls meanwhile
    fail promptly, and the same Silo works on the restarted (empty) server, its scripts
    reloaded on demand."""
    with PrivateRedis(tmp_path) as server:
        table = unique_table()
        silo = Silo.from_settings(_settings(server.url, table))
        try:
            store_msg(silo, "before")
            server.kill()
            seconds = [
                assert_unavailable(lambda: store_msg(silo, "during"), "store"),
                assert_unavailable(lambda: silo.dump(owner=OWNER), "dump"),
            ]
            record("outage.redis_kill", kills=server.kills, max_seconds=round(max(seconds), 3))
            server.start()
            # Without persistence the restarted server is empty: the old message is gone,
            # the store works again without rebuilding the Silo.
            mid = store_msg(silo, "after")
            out = silo.dump(owner=OWNER)
            assert [(m.mid, m.body) for m in out] == [(mid, body_for("after"))]
            assert silo.on_reply(out[0].mid or 0, 200) is ReplyOutcome.DELIVERED
            assert silo.count(OWNER) == 0
        finally:
            silo.close()


# ---- MongoDB on mongomock: the outage is injected at the client API ----------------------------


@contextlib.contextmanager
def faulty_mongo() -> Iterator[tuple[Silo, FaultyDatabase, MongoDriver]]:
    """A Silo on mongomock through a FaultyDatabase, and a driver reading the same data."""
    layout = StoreLayout(table=unique_table())
    base = open_mongomock(unique_table("db"), layout, ttl_delay=None)
    base.create_schema()
    faulty = FaultyDatabase(base.database)
    driver = MongoDriver(faulty, layout, ttl_delay=None, timeout=TIMEOUT)  # type: ignore[arg-type]
    silo = Silo(driver, _settings("mongomock://", layout.table))
    try:
        yield silo, faulty, base
    finally:
        base.drop_schema()
        base.close()


def test_mongo_outage_refuses_and_the_same_silo_recovers() -> None:
    with faulty_mongo() as (silo, faulty, _):
        first = store_msg(silo, "first")
        faulty.down = True
        for name, call in {
            "store": lambda: store_msg(silo, "during"),
            "dump": lambda: silo.dump(owner=OWNER),
            "count": lambda: silo.count(OWNER),
        }.items():
            assert_unavailable(call, name)
        faulty.down = False
        second = store_msg(silo, "second")
        out = silo.dump(owner=OWNER)
        assert [m.mid for m in out] == [first, second]
        assert [m.body for m in out] == [body_for("first"), body_for("second")]


class _FailNth:
    """Lets ``n`` operations through, then raises like an unreachable server (once)."""

    def __init__(self, faulty: FaultyDatabase, n: int) -> None:
        self.left = n
        self.fired = False
        self._check = faulty.check
        faulty.check = self  # type: ignore[method-assign]

    def __call__(self) -> None:
        if self.left == 0 and not self.fired:
            self.fired = True
            from pymongo.errors import AutoReconnect

            raise AutoReconnect("injected failure")
        self.left -= 1
        self._check()


def test_mongo_failure_at_every_step_of_a_store() -> None:
    """Fail the 1st, 2nd, ... MongoDB operation of a store: it raises StorageUnavailable or
    succeeds, and every document left is whole and stored once."""
    with faulty_mongo() as (silo, faulty, base):
        tag_of: dict[bytes, str] = {}
        reported: set[str] = set()
        failures = 0
        for n in range(30):
            tag = f"op-{n}"
            tag_of[body_for(tag)] = tag
            fault = _FailNth(faulty, n)
            try:
                store_msg(silo, tag)
                reported.add(tag)
            except StorageUnavailable:
                failures += 1
            del faulty.check  # back to the class method
            rows = base.list("alice", "example.com", int(time.time()), 0)
            seen = [assert_whole(r, tag_of) for r in rows]
            assert len(seen) == len(set(seen)) and reported <= set(seen)
            if not fault.fired:
                break
        else:
            pytest.fail("a store took more than 30 operations")
        assert failures > 0
        record("outage.mongo_every_step", operations=n + 1, failures=failures)


# ---- SQLite: another process holds the write lock ----------------------------------------------


def test_sqlite_locked_database_fails_in_time_and_recovers(tmp_path: Path) -> None:
    """A writer lock held elsewhere (the embedded default's "outage") makes store fail with a
    StorageError within the bound, writes nothing, and the same Silo works once it is freed."""
    path = tmp_path / "locked.db"
    table = unique_table()
    silo = Silo.from_settings(_settings(f"sqlite:///{path}", table, db_timeout=1.0))
    try:
        first = store_msg(silo, "first")
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            exc, elapsed = timed(lambda: store_msg(silo, "during"))
            assert isinstance(exc, StorageError), repr(exc)
            assert elapsed < BOUND
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        second = store_msg(silo, "second")
        assert [m.mid for m in silo.dump(owner=OWNER)] == [first, second]
    finally:
        silo.driver.drop_schema()
        silo.close()


def test_driver_options_carry_the_timeout() -> None:
    """The bound above relies on db_timeout reaching the driver (guards the fixtures)."""
    settings = _settings("memory://", "silo")
    assert settings.db_timeout == TIMEOUT
    assert DriverOptions(timeout=settings.db_timeout).timeout == TIMEOUT
