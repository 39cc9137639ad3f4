"""Redis Cluster failover while stores and dumps run (issue 9, "find the next ones").

A private cluster of 3 masters with a replica each; a worker stores messages for owners spread
over every master and dumps them, answering 200 to half of each dump and leaving the other half
leased; meanwhile every replica is promoted in turn with CLUSTER FAILOVER (the master hands over
without losing a write). The same driver must carry on by itself (no reconnect by the test), lose
nothing and send nothing twice while its lease lives. Bounded by ``MAX_STORES`` and ``DEADLINE``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from libmsilo import MsiloSettings, Silo
from libmsilo.drivers import StoreLayout, open_driver
from libmsilo.testing import unique_table
from tests.faults import record
from tests.helpers import T0, Clock, message
from tests.redis_cluster import redis_cluster_with_replicas

OWNERS = [f"sip:user{i}@example.com" for i in range(12)]  # their keys hash to every master
MAX_STORES = 5000  # the worker stops at this count, when the failovers are done, or at DEADLINE
DEADLINE = 120.0  # seconds for the whole load; the test fails, never hangs, past it


def test_failover_loses_nothing_and_sends_nothing_twice_while_leased() -> None:
    with redis_cluster_with_replicas() as cluster:
        driver = open_driver(cluster.url, StoreLayout(table=unique_table()))
        driver.create_schema()
        clock = Clock(T0)
        silo = Silo(driver, MsiloSettings(db_url="memory://", timezone="UTC"), clock=clock)
        stored: set[int] = set()
        sends: Counter[int] = Counter()
        delivered: Counter[int] = Counter()
        errors: list[BaseException] = []
        progress = threading.Event()
        finished = threading.Event()
        during: list[int] = []  # stores completed while a failover ran
        failing_over = threading.Event()
        stop_at = time.monotonic() + DEADLINE

        def dump_and_answer_half(owner: str) -> None:
            for n, out in enumerate(silo.dump(owner=owner)):
                assert out.mid is not None
                sends[out.mid] += 1
                if n % 2 == 0:
                    silo.on_reply(out.mid, 200, token=out.lease_token)
                    delivered[out.mid] += 1

        def work() -> None:
            try:
                for i in range(MAX_STORES):
                    if finished.is_set() or time.monotonic() > stop_at:
                        break
                    owner = OWNERS[i % len(OWNERS)]
                    result = silo.store(message(to=owner, body=f"m{i}".encode()))
                    assert result.mid is not None
                    stored.add(result.mid)
                    if failing_over.is_set():
                        during.append(result.mid)
                    if i % 5 == 4:
                        dump_and_answer_half(OWNERS[(i // 5) % len(OWNERS)])
                    if i == 30:
                        progress.set()
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
                progress.set()

        worker = threading.Thread(target=work, name="store-and-dump")
        worker.start()
        try:
            assert progress.wait(DEADLINE)
            promoted = []
            for replica in cluster.replica_ports():
                failing_over.set()
                cluster.failover(replica)
                failing_over.clear()
                promoted.append(replica)
                time.sleep(0.5)  # some load on the new topology before the next failover
        finally:
            finished.set()
            worker.join(DEADLINE)
        assert not worker.is_alive(), "the worker did not finish"
        assert errors == [], f"an operation failed across the failover: {errors[0]!r}"
        assert len(promoted) == 3 and set(cluster.replica_ports()).isdisjoint(promoted)
        assert during, "no store ran while a failover was under way"

        # While the clock stands still every lease lives: nothing was sent twice.
        assert all(count == 1 for count in sends.values()), "re-sent while its lease lived"
        # Drain: past the leases, everything not yet delivered goes out once more.
        clock.advance(silo.settings.lease_seconds + 1)
        for owner in OWNERS:
            for out in silo.dump(owner=owner):
                assert out.mid is not None
                sends[out.mid] += 1
                silo.on_reply(out.mid, 200, token=out.lease_token)
                delivered[out.mid] += 1
        assert set(delivered) == stored, "lost across the failover"
        assert all(count == 1 for count in delivered.values()), "delivered twice"
        assert all(silo.count(owner) == 0 for owner in OWNERS)
        record(
            "redis_cluster.failover",
            failovers=len(promoted),
            stores=len(stored),
            stores_during_failover=len(during),
            lost=len(stored - set(delivered)),
            duplicates=sum(c - 1 for c in delivered.values()),
        )
        driver.drop_schema()
        driver.close()
