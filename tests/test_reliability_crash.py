"""Worker processes killed with SIGKILL: after claiming a dump, and in the middle of storing.

- A worker that dumped (``Silo.dump`` returned, the messages are leased to it) and dies before
  it replies loses nothing: once the lease (``lease_time`` = 2 s, real clock) runs out, other
  workers deliver those messages, each exactly once overall, and not a moment before.
- A worker killed while it loops storing leaves every message either whole (every field,
  body byte-exact) or absent, and the messages it had stored form an unbroken prefix.

The process backends (SQLite file, PostgreSQL, MariaDB, Redis) use ``multiprocessing`` spawn;
memory and mongomock live in one process, where the crash is a ``Silo`` abandoned after its
dump (nothing in process memory may be needed to recover).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import pytest

from libmsilo import MsiloSettings, Silo
from libmsilo.drivers.base import Driver, StoredMessage
from libmsilo.drivers.memory import MemoryDriver
from libmsilo.drivers.mongo import open_mongomock
from libmsilo.testing import unique_table
from tests.backends import backend_url
from tests.faults import record, wait_until
from tests.helpers import message

pytestmark = pytest.mark.slow

LEASE = 2  # lease_time: the delivery lease, in seconds
EXPIRE = 259200
OWNERS = [f"sip:crash{i}@example.com" for i in range(3)]
CTYPE = "application/octet-stream"
HANG = 120.0  # how long a claiming worker waits to be killed (bounded)
STORE_LOOP_SECONDS = 120.0  # bound of the storing worker's loop
MAX_INDEX = 1_000_000
ROUNDS = 6  # kills per backend in the mid-store test


def _settings(url: str, table: str) -> MsiloSettings:
    return MsiloSettings(
        db_url=url, db_table=table, timezone="UTC", lease_time=LEASE, add_date=False
    )


def _body(index: int) -> bytes:
    """Message ``index``'s body: its number, then up to 60 KB of deterministic random bytes."""
    size = 1000 + (index * 7919) % 60000
    return b"IDX%010d|" % index + random.Random(index).randbytes(size)


def _index(body: bytes) -> int:
    assert body[:3] == b"IDX" and body[13:14] == b"|", f"not a test body: {body[:20]!r}"
    return int(body[3:13])


def _store(silo: Silo, owner: str, index: int) -> int:
    mid = silo.store(message(to=owner, body=_body(index), ctype=CTYPE)).mid
    assert mid is not None
    return mid


# ---- worker processes (module level: spawn imports them by name) ------------------------------


def claim_and_hang(url: str, table: str, owner: str, limit: int, conn: Connection) -> None:
    """Dump ``owner`` (leasing up to ``limit`` messages), report the ids, then never reply."""
    silo = Silo.from_settings(_settings(url, table), create_schema=False)
    out = silo.dump(owner=owner, max_messages=limit)
    conn.send([m.mid for m in out])  # Silo.dump has returned: the lease is ours
    time.sleep(HANG)  # killed here, before any on_reply


def recover(url: str, table: str, owners: list[str], seconds: float) -> list[tuple[int, int, int]]:
    """Dump every owner and answer 200 until nothing is left; (mid, body index, second after
    the claim)."""
    silo = Silo.from_settings(_settings(url, table), create_schema=False)
    delivered: list[tuple[int, int, int]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = 0
        for owner in owners:
            out = silo.dump(owner=owner, max_messages=2)
            after = int(time.time())  # the dump's own clock read at or before this second
            for msg in out:
                assert msg.mid is not None
                delivered.append((msg.mid, _index(msg.body), after))
                silo.on_reply(msg.mid, 200)
                got += 1
        if not got:
            if sum(silo.count(o) for o in owners) == 0:
                break
            time.sleep(0.1)  # the rest is leased to the dead worker
    silo.close()
    return delivered


def store_forever(url: str, table: str, owner: str, progress: Synchronized[int]) -> None:
    """Store messages 0, 1, 2, ... for ``owner``; ``progress`` is how many have returned."""
    silo = Silo.from_settings(_settings(url, table), create_schema=False)
    deadline = time.monotonic() + STORE_LOOP_SECONDS
    for index in range(MAX_INDEX):
        if time.monotonic() > deadline:
            break
        _store(silo, owner, index)
        progress.value = index + 1


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql", "mysql", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """(kind, url, table) of a fresh table on a backend reachable from other processes."""
    kind: str = request.param
    url = f"sqlite:///{tmp_path / 'crash.db'}" if kind == "sqlite" else backend_url(kind)
    table = unique_table()
    silo = Silo.from_settings(_settings(url, table))
    try:
        yield kind, url, table
    finally:
        silo.driver.drop_schema()
        silo.close()


def _kill(proc: multiprocessing.process.BaseProcess) -> None:
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL


# ---- killed after claiming a dump -------------------------------------------------------------


def test_killed_after_dump_is_redelivered_after_the_lease(
    store_url: tuple[str, str, str],
) -> None:
    kind, url, table = store_url
    silo = Silo.from_settings(_settings(url, table), create_schema=False)
    stored = {_store(silo, OWNERS[i % len(OWNERS)], i): i for i in range(12)}

    ctx = multiprocessing.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    victim = ctx.Process(target=claim_and_hang, args=(url, table, OWNERS[0], 3, child_end))
    victim.start()
    try:
        assert parent_end.poll(60), "the claiming worker did not report"
        claimed: list[int] = parent_end.recv()
    finally:
        _kill(victim)
    assert len(claimed) == 3 and set(claimed) <= set(stored)

    # The lease lives in the store: a fresh Silo whose clock stands just before the lease ends
    # gets none of the claimed messages.
    leases = [silo.get(mid) for mid in claimed]
    assert all(r is not None and r.lease_token and r.lease_until for r in leases)
    lease_until = max(r.lease_until or 0 for r in leases if r is not None)
    frozen = Silo(silo.driver, silo.settings, clock=lambda: lease_until - 1)
    early = frozen.dump(owner=OWNERS[0])
    assert early and not set(claimed) & {m.mid for m in early}
    for msg in early:  # the ones the dead worker did not hold: give them back
        frozen.on_reply(msg.mid or 0, 503)

    with ctx.Pool(2) as pool:
        parts = pool.starmap_async(recover, [(url, table, OWNERS, 60.0)] * 2).get(timeout=120)
    delivered = [d for part in parts for d in part]
    mids = [mid for mid, _, _ in delivered]
    assert sorted(mids) == sorted(stored), "lost or duplicated"
    for mid, index, claimed_by in delivered:
        assert stored[mid] == index  # the right body came with the right id
        if mid in claimed:
            assert claimed_by >= lease_until, "redelivered while the dead worker's lease lived"
    assert sum(silo.count(o) for o in OWNERS) == 0
    record(
        "crash.after_dump",
        backend=kind,
        messages=len(stored),
        killed=1,
        leased_by_victim=len(claimed),
        recovery_workers=2,
        lost=len(set(stored) - set(mids)),
        duplicates=len(mids) - len(set(mids)),
    )
    silo.close()


@pytest.fixture(params=["memory", "mongomock"])
def shared_driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    driver: Driver
    if request.param == "memory":
        driver = MemoryDriver()
    else:
        driver = open_mongomock(unique_table("db"), ttl_delay=None)
    driver.create_schema()
    yield driver
    driver.drop_schema()
    driver.close()


def test_abandoned_dump_is_redelivered_after_the_lease(shared_driver: Driver) -> None:
    """One process: a Silo that dumped is dropped without replying (its in-memory state gone);
    another Silo on the same store delivers those messages once the lease has run out."""
    settings = _settings("memory://", "silo")
    first = Silo(shared_driver, settings)
    stored = {_store(first, OWNERS[0], i): i for i in range(5)}
    claimed = [m.mid or 0 for m in first.dump(owner=OWNERS[0], max_messages=3)]
    lease_until = max(getattr(shared_driver.get(mid), "lease_until", 0) or 0 for mid in claimed)
    assert len(claimed) == 3 and lease_until > 0
    del first  # the "crash": its in-flight table is gone with it

    second = Silo(shared_driver, settings)
    early = [m.mid or 0 for m in second.dump(owner=OWNERS[0])]
    assert not set(early) & set(claimed)
    delivered = list(early)
    for mid in early:
        second.on_reply(mid, 200)

    def drained() -> bool:
        out = second.dump(owner=OWNERS[0])
        after = int(time.time())
        for msg in out:
            assert msg.mid is not None and _index(msg.body) == stored[msg.mid]
            assert after >= lease_until, "redelivered while the abandoned lease lived"
            delivered.append(msg.mid)
            second.on_reply(msg.mid, 200)
        return second.count(OWNERS[0]) == 0

    assert wait_until(drained, 30, interval=0.1)
    assert sorted(delivered) == sorted(stored)


# ---- killed while storing ---------------------------------------------------------------------


def _check_rows(rows: list[StoredMessage], owner: str) -> list[int]:
    """Every row is whole; returns the body indices, sorted."""
    user, domain = owner.removeprefix("sip:").split("@")
    found = []
    for row in rows:
        index = _index(row.body)
        assert row.body == _body(index), f"message {index}: body not byte-exact"
        assert (row.username, row.domain) == (user, domain)
        assert row.src_addr == "sip:bob@example.org" and row.dst_addr == owner
        assert row.ctype == CTYPE and row.snd_time == 0
        assert row.inc_time > 0 and row.exp_time == row.inc_time + EXPIRE
        assert row.lease_token is None and row.lease_until is None and row.attempts == 0
        found.append(index)
    return sorted(found)


def _reached(progress: Synchronized[int], count: int) -> Callable[[], bool]:
    return lambda: progress.value >= count


def _settled_rows(silo: Silo, user: str, domain: str) -> list[StoredMessage]:
    rows = silo.driver.list(user, domain, int(time.time()), 0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.3)
        again = silo.driver.list(user, domain, int(time.time()), 0)
        if [r.mid for r in again] == [r.mid for r in rows]:
            return again
        rows = again
    return rows


def test_killed_mid_store_leaves_whole_rows(store_url: tuple[str, str, str]) -> None:
    kind, url, table = store_url
    ctx = multiprocessing.get_context("spawn")
    silo = Silo.from_settings(_settings(url, table), create_schema=False)
    rng = random.Random(6)
    landed_in_flight = 0
    for round_ in range(ROUNDS):
        owner = f"sip:storer{round_}@example.com"
        progress: Synchronized[int] = ctx.Value("q", 0)
        worker = ctx.Process(target=store_forever, args=(url, table, owner, progress))
        worker.start()
        try:
            target = rng.randint(3, 30)
            assert wait_until(_reached(progress, target), 60, interval=0.001)
            # Kill right after a store returned, somewhere inside the next one(s).
            wait_until(_reached(progress, progress.value + 1), 5, interval=0.0005)
            time.sleep(rng.uniform(0, 0.01))
        finally:
            _kill(worker)
        returned = progress.value
        user, domain = owner.removeprefix("sip:").split("@")
        # The server may still finish the statement the dead client had sent: wait until what
        # the owner holds stops changing before looking at it.
        rows = _settled_rows(silo, user, domain)
        indices = _check_rows(rows, owner)
        # The stores ran one after another: what is there is 0..m-1, where m counts the stores
        # that returned, plus the one in flight if it committed before the kill.
        assert indices == list(range(len(indices))), f"gap or duplicate: {indices}"
        assert len(indices) in (returned, returned + 1)
        landed_in_flight += len(indices) - returned
        # The killed worker left no lock behind: everything it stored is delivered, once.
        out = silo.dump(owner=owner)
        assert [_index(m.body) for m in out] == indices
        assert all(m.body == _body(_index(m.body)) for m in out)
        for m in out:
            silo.on_reply(m.mid or 0, 200)
        assert silo.count(owner) == 0
        _store(silo, owner, 0)  # and the owner can receive again
    record("crash.mid_store", backend=kind, kills=ROUNDS, in_flight_landed=landed_in_flight)
    silo.close()
