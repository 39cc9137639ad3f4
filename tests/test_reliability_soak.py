"""Load and soak: 4 processes store and dump many messages concurrently on each network backend.

Each worker stores its share for 50 owners, every 50th with ``Expires: 1`` so that some expire
before anyone dumps them; between stores it dumps random owners and answers most deliveries
200, some 480 (the lease is released and the message comes again) and forgets some (no reply:
the 2 s lease runs out and the message comes again); it also runs the purge timer. At the end
every worker drains what is left. The invariant: every stored message was delivered (answered
200) exactly once or has expired; no message delivered twice, none to the wrong owner.

The default size (5,000 messages per backend) keeps the suite's time budget; set
``MSILO_SOAK_MESSAGES=100000`` for the full run recorded in docs/RELIABILITY.md.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from libmsilo import MsiloSettings, Silo
from libmsilo.testing import unique_table
from tests.backends import backend_url
from tests.faults import record
from tests.helpers import message

pytestmark = pytest.mark.slow

PROCESSES = 4
OWNERS = 50
SHORT_EVERY = 50  # every 50th message lives 1 s
BUDGET = 300.0  # seconds per backend before the test fails
LEASE = 2


def soak_size() -> int:
    """Messages per backend: MSILO_SOAK_MESSAGES, default 5,000."""
    return int(os.environ.get("MSILO_SOAK_MESSAGES", "5000"))


def _settings(url: str, table: str) -> MsiloSettings:
    return MsiloSettings(
        db_url=url,
        db_table=table,
        timezone="UTC",
        check_time=LEASE,
        lease_time=LEASE,
        clean_period=1,
        add_date=False,
    )


def _owner(k: int) -> str:
    return f"sip:soak{k}@example.com"


@dataclass
class WorkerReport:
    """What one worker did (picklable, sent back to the test)."""

    stored: list[tuple[int, bool]] = field(default_factory=list)  # (mid, short-lived)
    acked: list[int] = field(default_factory=list)  # mids delivered and answered 200
    retried: int = 0  # answered 480
    forgotten: int = 0  # never answered
    wrong: list[str] = field(default_factory=list)  # misdelivered or damaged messages
    finished: bool = False
    seconds: float = 0.0


def _deliver(silo: Silo, k: int, limit: int, rng: random.Random | None, rep: WorkerReport) -> int:
    """Dump owner ``k``; answer each message (randomly failing some when ``rng`` is given)."""
    out = silo.dump(owner=_owner(k), max_messages=limit)
    for msg in out:
        assert msg.mid is not None
        owner_tag = msg.body.rpartition(b"|")[2]
        if owner_tag != b"%d" % k or msg.to_uri != _owner(k):
            rep.wrong.append(f"{msg.mid}: {msg.body[:40]!r} dumped for owner {k}")
        roll = rng.random() if rng is not None else 1.0
        if roll < 0.02:
            rep.forgotten += 1  # the UA never answers: the lease must run out
        elif roll < 0.05:
            rep.retried += 1
            silo.on_reply(msg.mid, 480)
        else:
            rep.acked.append(msg.mid)
            silo.on_reply(msg.mid, 200)
    return len(out)


def soak_worker(url: str, table: str, wid: int, count: int, seconds: float) -> WorkerReport:
    """Store ``count`` messages while dumping, then drain; stop at ``seconds``."""
    start = time.monotonic()
    deadline = start + seconds
    rng = random.Random(wid)
    rep = WorkerReport()
    silo = Silo.from_settings(_settings(url, table), create_schema=False)
    for i in range(count):
        if time.monotonic() > deadline:
            break
        k = (wid * 13 + i) % OWNERS
        short = i % SHORT_EVERY == 0
        extra = [("Expires", "1")] if short else None
        body = b"w%d-m%d|%d" % (wid, i, k)
        res = silo.store(message(to=_owner(k), body=body, extra=extra))
        assert res.mid is not None
        rep.stored.append((res.mid, short))
        if i % 20 == 19:
            for owner in rng.sample(range(OWNERS), 2):
                _deliver(silo, owner, 25, rng, rep)
        if i % 100 == 99:
            silo.tick()  # the purge runs (at most every check_time * clean_period s)
    while time.monotonic() < deadline:
        got = sum(_deliver(silo, k, 100, None, rep) for k in range(OWNERS))
        if got == 0:
            if sum(silo.count(_owner(k)) for k in range(OWNERS)) == 0:
                rep.finished = True
                break
            time.sleep(0.2)  # leases of forgotten messages still running
    silo.close()
    rep.seconds = time.monotonic() - start
    return rep


@pytest.fixture(params=["postgresql", "mysql", "redis"])
def soak_store(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, str]]:
    url = backend_url(request.param)
    table = unique_table()
    silo = Silo.from_settings(_settings(url, table))
    try:
        yield request.param, url, table
    finally:
        silo.driver.drop_schema()
        silo.close()


def test_soak_every_message_delivered_once_or_expired(soak_store: tuple[str, str, str]) -> None:
    kind, url, table = soak_store
    total = soak_size()
    shares = [total // PROCESSES + (1 if w < total % PROCESSES else 0) for w in range(PROCESSES)]
    ctx = multiprocessing.get_context("spawn")
    started = time.monotonic()
    with ctx.Pool(PROCESSES) as pool:
        jobs = [(url, table, w, shares[w], BUDGET) for w in range(PROCESSES)]
        reports: list[WorkerReport] = pool.starmap_async(soak_worker, jobs).get(BUDGET + 120)
    elapsed = time.monotonic() - started

    assert all(r.finished for r in reports), "a worker ran out of time before the store drained"
    wrong = [w for r in reports for w in r.wrong]
    assert not wrong, wrong[:5]
    stored = {mid: short for r in reports for mid, short in r.stored}
    assert len(stored) == sum(len(r.stored) for r in reports) == total, "ids not unique"
    acked = Counter(mid for r in reports for mid in r.acked)
    duplicates = sum(n - 1 for n in acked.values())
    assert set(acked) <= set(stored)

    silo = Silo.from_settings(_settings(url, table), create_schema=False)
    now = int(time.time())
    expired = lost = 0
    for mid in set(stored) - set(acked):
        row = silo.get(mid)
        if stored[mid] and (row is None or row.exp_time <= now):
            expired += 1  # short-lived and expired (purged or waiting for the purge)
        else:
            lost += 1
    remaining = sum(silo.count(_owner(k)) for k in range(OWNERS))
    silo.close()
    record(
        "soak",
        backend=kind,
        messages=total,
        processes=PROCESSES,
        seconds=round(elapsed, 1),
        delivered=len(acked),
        expired=expired,
        retried=sum(r.retried for r in reports),
        forgotten=sum(r.forgotten for r in reports),
        lost=lost,
        duplicates=duplicates,
    )
    assert duplicates == 0, f"{duplicates} messages delivered twice"
    assert lost == 0, f"{lost} messages neither delivered nor expired"
    assert remaining == 0
    assert len(acked) + expired == total
