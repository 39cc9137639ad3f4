"""Processes sharing one Redis store (standalone and cluster): exact quota, exactly-once claims."""

from __future__ import annotations

import multiprocessing
import queue
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from libmsilo.drivers import DriverOptions, StoreLayout
from libmsilo.drivers.redis import open_redis
from libmsilo.testing import make_message, unique_table
from tests.backends import backend_url
from tests.redis_cluster import redis_cluster_url

__all__ = ["redis_cluster_url"]  # the fixture, imported for pytest

pytestmark = pytest.mark.slow

NOW = 1_700_000_000
OWNERS = [f"user{i}" for i in range(5)]
WAIT = 120.0  # seconds: the most any test waits for its workers


def _insert_worker(url: str, table: str, start: Any, results: Any) -> None:
    """Insert 20 messages for one owner under a quota of 50; report how many were stored."""
    d = open_redis(url, StoreLayout(table=table), DriverOptions())
    start.wait(timeout=WAIT)
    stored = sum(d.insert(make_message(user="quota"), 50) is not None for _ in range(20))
    d.close()
    results.put(stored)


def _claim_worker(url: str, table: str, start: Any, results: Any) -> None:
    """Claim every owner's messages in small batches with a token of its own, deleting each."""
    d = open_redis(url, StoreLayout(table=table), DriverOptions())
    token = uuid.uuid4().hex
    seen: list[int] = []
    start.wait(timeout=WAIT)
    deadline = time.monotonic() + WAIT / 2
    idle = 0
    while idle < 3 and time.monotonic() < deadline:
        got = 0
        for user in OWNERS:
            for row in d.claim(user, "example.com", NOW, NOW + 600, token, limit=3):
                seen.append(row.mid)
                if not d.delete(row.mid):
                    seen.append(-row.mid)  # a row claimed here and deleted by someone else
                got += 1
        reminders = d.claim_due_reminders(NOW, NOW + 600, token, limit=4)
        for row in reminders:
            seen.append(row.mid)
            d.delete(row.mid)
        got += len(reminders)
        idle = 0 if got else idle + 1
    d.close()
    results.put(seen)


def _run(target: Any, url: str, table: str, n: int) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(n)
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(url, table, start, results)) for _ in range(n)]
    for p in procs:
        p.start()
    out: list[Any] = []
    try:
        for _ in range(n):
            out.append(results.get(timeout=WAIT))
    except queue.Empty:
        pytest.fail(f"only {len(out)} of {n} workers reported")
    finally:
        for p in procs:
            p.join(timeout=WAIT)
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
    assert all(p.exitcode == 0 for p in procs)
    return out


@pytest.fixture(params=["standalone", "cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    if request.param == "cluster":
        url = str(request.getfixturevalue("redis_cluster_url"))
    else:
        url = backend_url("redis")
    table = unique_table("silo_")
    d = open_redis(url, StoreLayout(table=table), DriverOptions())
    d.create_schema()
    yield url, table
    d.drop_schema()
    d.close()


def test_quota_is_exact_across_processes(store: tuple[str, str]) -> None:
    url, table = store
    stored = _run(_insert_worker, url, table, 8)
    assert sum(stored) == 50
    d = open_redis(url, StoreLayout(table=table), DriverOptions())
    assert d.count("quota", "example.com", NOW) == 50
    assert len(d.list("quota", "example.com", NOW)) == 50
    d.close()


def test_claims_are_exactly_once_across_processes(store: tuple[str, str]) -> None:
    url, table = store
    d = open_redis(url, StoreLayout(table=table), DriverOptions())
    mids = set()
    for i in range(120):
        snd = NOW - 1 if i % 4 == 0 else 0  # a quarter are due reminders
        mid = d.insert(make_message(user=OWNERS[i % len(OWNERS)], snd_time=snd))
        assert mid is not None
        mids.add(mid)
    seen = [m for part in _run(_claim_worker, url, table, 4) for m in part]
    assert sorted(seen) == sorted(mids)  # each once, none deleted by another process
    assert all(d.count(u, "example.com", NOW) == 0 for u in OWNERS)
    d.close()
