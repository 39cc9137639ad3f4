"""Several processes sharing one store through ``Silo``: exactly-once delivery, exact quota, and
a ``Silo`` built before ``fork()`` used in the children (Kamailio's workers, gunicorn's
``preload_app``)."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from libmsilo import MsiloSettings, Silo
from libmsilo.testing import unique_table
from tests.backends import backend_url
from tests.helpers import message

OWNERS = [f"sip:user{i}@example.com" for i in range(5)]
pytestmark = pytest.mark.slow


def _settings(url: str, table: str, **kw: object) -> MsiloSettings:
    return MsiloSettings(db_url=url, db_table=table, timezone="UTC", **kw)  # type: ignore[arg-type]


def _deliver(url: str, table: str) -> list[int]:
    """Dump every owner in small batches, answering 200 to everything, until nothing is left."""
    silo = Silo.from_settings(_settings(url, table), create_schema=False)
    delivered: list[int] = []
    idle_rounds = 0
    deadline = time.monotonic() + 60
    while idle_rounds < 3 and time.monotonic() < deadline:
        got = 0
        for aor in OWNERS:
            for msg in silo.dump(owner=aor, max_messages=3):
                assert msg.mid is not None
                delivered.append(msg.mid)
                silo.on_reply(msg.mid, 200)
                got += 1
        idle_rounds = 0 if got else idle_rounds + 1
    silo.close()
    return delivered


def _store_many(url: str, table: str, count: int) -> int:
    silo = Silo.from_settings(_settings(url, table, max_messages=50), create_schema=False)
    stored = sum(silo.store(message(to=OWNERS[0])).stored for _ in range(count))
    silo.close()
    return stored


@pytest.fixture(params=["sqlite", "postgresql", "mysql", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    kind = request.param
    url = f"sqlite:///{tmp_path / 'mp.db'}" if kind == "sqlite" else backend_url(kind)
    table = unique_table()
    silo = Silo.from_settings(_settings(url, table))
    yield url, table
    silo.driver.drop_schema()
    silo.close()


def test_four_processes_deliver_every_message_exactly_once(store_url: tuple[str, str]) -> None:
    url, table = store_url
    silo = Silo.from_settings(_settings(url, table), create_schema=False)
    stored = [silo.store(message(to=OWNERS[i % len(OWNERS)])).mid for i in range(200)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(_deliver, [(url, table)] * 4, chunksize=1)
    delivered = [mid for part in results for mid in part]
    assert sorted(delivered) == sorted(stored)  # every message, none twice
    assert sum(silo.count(aor) for aor in OWNERS) == 0
    silo.close()


def test_eight_processes_respect_the_quota_exactly(store_url: tuple[str, str]) -> None:
    url, table = store_url
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(8) as pool:
        results = pool.starmap(_store_many, [(url, table, 20)] * 8, chunksize=1)
    assert sum(results) == 50
    silo = Silo.from_settings(_settings(url, table), create_schema=False)
    assert silo.count(OWNERS[0]) == 50
    silo.close()


def _use_inherited(silo: Silo, owner: str, results: Any) -> None:
    """In a forked child: store, dump and answer with the parent's ``Silo``, then close it."""
    try:
        stored = {silo.store(message(to=owner)).mid for _ in range(5)}
        delivered = set()
        for msg in silo.dump(owner=owner):
            delivered.add(msg.mid)
            silo.on_reply(msg.mid, 200, token=msg.lease_token)
        results.put((owner, len(stored), stored == delivered, silo.count(owner)))
    except Exception as exc:
        results.put((owner, f"{type(exc).__name__}: {exc}"))
    silo.close()  # closing inherited connections must not end the parent's sessions


def test_a_silo_built_before_fork_works_in_the_children(store_url: tuple[str, str]) -> None:
    url, table = store_url
    silo = Silo.from_settings(_settings(url, table), create_schema=False)
    assert silo.store(message(to=OWNERS[0])).stored  # the parent's connections are open
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    children = [
        ctx.Process(target=_use_inherited, args=(silo, owner, results)) for owner in OWNERS[1:4]
    ]
    for child in children:
        child.start()
    got = sorted(results.get(timeout=120) for _ in children)
    for child in children:
        child.join(timeout=60)
    assert [child.exitcode for child in children] == [0, 0, 0]
    assert got == [(owner, 5, True, 0) for owner in OWNERS[1:4]]
    # the parent's Silo still works on its own connections
    assert silo.count(OWNERS[0]) == 1
    [msg] = silo.dump(owner=OWNERS[0])
    silo.on_reply(msg.mid or 0, 200, token=msg.lease_token)
    assert silo.count(OWNERS[0]) == 0
    silo.close()
