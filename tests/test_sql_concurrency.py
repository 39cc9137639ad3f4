"""Several processes on one SQL table: the quota is exact and every message is claimed once.

Each worker process opens its own driver (spawn start method, so nothing is shared but the
database); a barrier starts them together to make the steps overlap as much as possible.
"""

from __future__ import annotations

import multiprocessing
import queue
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from libmsilo.drivers import DriverOptions, StoreLayout
from libmsilo.drivers.sql import SqlDriver, open_sql
from libmsilo.testing import make_message
from tests.backends import backend_url

pytestmark = pytest.mark.slow

NOW = 1_700_000_000
OWNERS = ("u0", "u1", "u2")
OPTIONS = DriverOptions(timeout=30)
DEADLINE = 120.0  # seconds for all workers of one test


def _open(url: str, table: str) -> SqlDriver:
    return open_sql(url, StoreLayout(table=table), OPTIONS)


def _entry(
    work: Callable[..., Any], barrier: Any, results: Any, index: int, args: tuple[Any, ...]
) -> None:
    """Run ``work(barrier, *args)`` once every worker is ready; report its result or its
    traceback."""
    try:
        barrier.wait(timeout=DEADLINE)
        results.put((index, "ok", work(barrier, *args)))
    except BaseException:
        results.put((index, "error", traceback.format_exc()))


def _run_workers(work: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``work`` in one spawned process per argument tuple; their results in order."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(args))
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_entry, args=(work, barrier, results, i, a), daemon=True)
        for i, a in enumerate(args)
    ]
    for p in procs:
        p.start()
    collected: dict[int, Any] = {}
    errors: list[str] = []
    deadline = time.monotonic() + DEADLINE
    try:
        while len(collected) + len(errors) < len(procs):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("workers did not finish in time")
            try:
                index, status, value = results.get(timeout=min(left, 5))
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and results.empty():
                    raise AssertionError("a worker died without reporting") from None
                continue
            if status == "ok":
                collected[index] = value
            else:
                errors.append(value)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    assert not errors, errors[0]
    return [collected[i] for i in range(len(procs))]


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, SqlDriver]]:
    """A URL and a driver on a fresh table there (dropped afterwards)."""
    kind: str = request.param
    url = f"sqlite:///{tmp_path / 'msilo.db'}" if kind == "sqlite" else backend_url(kind)
    driver = _open(url, f"silo_{uuid.uuid4().hex[:10]}")
    driver.create_schema()
    yield url, driver
    driver.drop_schema()
    driver.close()


# ---- quota ------------------------------------------------------------------------------------


def _insert_many(
    barrier: Any, url: str, table: str, worker: int, count: int, quota: int
) -> list[int | None]:
    driver = _open(url, table)
    try:
        return [
            driver.insert(make_message(user="quota", body=f"{worker}:{i}".encode()), quota)
            for i in range(count)
        ]
    finally:
        driver.close()


def test_quota_is_exact_across_processes(store: tuple[str, SqlDriver]) -> None:
    url, driver = store
    table = driver.layout.table
    # another owner's rows and an expired row of this owner must not count
    driver.insert(make_message(user="other"))
    driver.insert(make_message(user="quota", inc_time=NOW - 7200, exp_time=NOW))
    results = _run_workers(_insert_many, [(url, table, w, 20, 50) for w in range(8)])
    stored = [mid for per_worker in results for mid in per_worker if mid is not None]
    assert len(stored) == 50
    assert len(set(stored)) == 50
    assert driver.count("quota", "example.com", NOW) == 50
    assert len(driver.list("quota", "example.com", NOW)) == 50
    assert driver.count("other", "example.com", NOW) == 1


def _race_rounds(barrier: Any, url: str, table: str, rounds: int) -> list[int | None]:
    """Per round, insert one message for that round's owner (quota 1) together with the
    other workers."""
    driver = _open(url, table)
    try:
        got = []
        for r in range(rounds):
            barrier.wait(timeout=DEADLINE)
            got.append(driver.insert(make_message(user=f"round{r}"), 1))
        return got
    finally:
        driver.close()


def test_quota_holds_when_inserts_collide(store: tuple[str, SqlDriver]) -> None:
    """Many rounds of simultaneous inserts into a quota of one: without the per-owner lock,
    two inserts overlapping in a round would both see a count of zero."""
    url, driver = store
    rounds = 40
    results = _run_workers(_race_rounds, [(url, driver.layout.table, rounds)] * 6)
    for r in range(rounds):
        winners = [per_worker[r] for per_worker in results if per_worker[r] is not None]
        assert len(winners) == 1, f"round {r}: {len(winners)} inserts under a quota of 1"
        assert driver.count(f"round{r}", "example.com", NOW) == 1


# ---- claims -----------------------------------------------------------------------------------


def _claim_until_empty(barrier: Any, url: str, table: str) -> list[int]:
    """Claim (own token) and delete messages of every owner and due reminders until a whole
    round finds nothing; the ids this worker got."""
    driver = _open(url, table)
    token = uuid.uuid4().hex
    seen: list[int] = []
    deadline = time.monotonic() + DEADLINE / 2
    try:
        for _ in range(2000):
            if time.monotonic() > deadline:
                raise AssertionError("claiming did not finish in time")
            got = []
            for owner in OWNERS:
                got += driver.claim(owner, "example.com", NOW, NOW + 600, token, limit=3)
            got += driver.claim_due_reminders(NOW, NOW + 600, token, limit=2)
            if not got:
                return seen
            for row in got:
                assert row.lease_token == token
                seen.append(row.mid)
                assert driver.delete(row.mid), f"{row.mid} vanished under its lease"
        raise AssertionError("too many rounds")
    finally:
        driver.close()


def test_every_message_is_claimed_exactly_once(store: tuple[str, SqlDriver]) -> None:
    url, driver = store
    expected = []
    for i in range(150):
        owner = OWNERS[i % len(OWNERS)]
        snd_time = NOW - 10 if i % 5 == 0 else 0  # every fifth is a due reminder
        mid = driver.insert(make_message(user=owner, body=str(i).encode(), snd_time=snd_time))
        assert mid is not None
        expected.append(mid)
    future = driver.insert(make_message(user="u0", snd_time=NOW + 3600))  # not due: left alone
    results = _run_workers(_claim_until_empty, [(url, driver.layout.table)] * 4)
    seen = [mid for per_worker in results for mid in per_worker]
    duplicates = [mid for mid, n in Counter(seen).items() if n > 1]
    assert duplicates == []
    assert sorted(seen) == sorted(expected)
    assert [r.mid for r in driver.list("u0", "example.com", NOW)] == [future]
