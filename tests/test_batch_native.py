"""The native batch steps really run as one batch: a driver's insert_many / delete_many /
release_many never falls back to its single steps when nothing is wrong (the looping default
hides failures)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from libmsilo.drivers import Driver, DriverOptions, ReleaseResult, StoreLayout, open_driver
from libmsilo.drivers.mongo import open_mongomock
from libmsilo.drivers.plumbing import DriverBase
from libmsilo.testing import make_message, unique_table
from tests.backends import backend_url


@pytest.fixture(params=["sqlite", "postgresql", "mysql", "redis", "mongomock"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Driver]:
    kind = request.param
    layout = StoreLayout(table=unique_table())
    if kind == "mongomock":  # no TTL index: the test rows' times are in the past
        d: Driver = open_mongomock(unique_table("db"), layout, ttl_delay=None)
    else:
        url = f"sqlite:///{tmp_path / 'n.db'}" if kind == "sqlite" else backend_url(kind)
        d = open_driver(url, layout, DriverOptions(timeout=10))
    d.create_schema()
    yield d
    d.drop_schema()
    d.close()


def _no_single_steps(driver: Driver, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a single step ran inside a batch")

    for name in ("insert", "delete", "release"):
        if getattr(type(driver), f"{name}_many") is not getattr(DriverBase, f"{name}_many"):
            monkeypatch.setattr(driver, name, refuse)  # only where the batch step is native


@pytest.mark.parametrize("quota", [0, 3])
def test_insert_many_and_delete_many_are_native(
    driver: Driver, monkeypatch: pytest.MonkeyPatch, quota: int
) -> None:
    msgs = [make_message(user=f"n{i % 2}", body=b"%d" % i) for i in range(8)]
    _no_single_steps(driver, monkeypatch)
    got = driver.insert_many(msgs, quota)  # type: ignore[attr-defined]
    stored = [m for m in got if isinstance(m, int)]
    assert len(stored) == (6 if quota else 8)
    assert got.count(None) == len(msgs) - len(stored)
    assert driver.delete_many([*stored, 10**12]) == [True] * len(stored) + [False]  # type: ignore[attr-defined]
    assert driver.count("n0", "example.com", 0) == 0


@pytest.mark.parametrize("max_attempts", [0, 2])
def test_release_many_is_native(
    driver: Driver, monkeypatch: pytest.MonkeyPatch, max_attempts: int
) -> None:
    mids = [driver.insert(make_message(body=b"%d" % i)) for i in range(6)]
    tok = "tok"
    driver.claim("alice", "example.com", 0, 10**6, tok)
    _no_single_steps(driver, monkeypatch)
    items = [(m, tok, i % 2 == 0) for i, m in enumerate(mids)] + [(10**12, None, False)]
    got = driver.release_many(items, max_attempts)  # type: ignore[attr-defined]
    assert got == [ReleaseResult.RELEASED] * len(mids) + [ReleaseResult.NOT_FOUND]


def test_batches_keep_bodies_and_ids_when_split(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver.ping()  # the SQL driver prepares its statements
    ops = getattr(driver, "_ops", None)
    if ops is not None and ops.kind == "mysql":
        assert ops._id_step == 1  # MariaDB's default: consecutive ids, multi-row INSERTs
        # A small packet: the batch is cut into several multi-row INSERTs and the large body
        # is written in parts (its own INSERT, then appends), all in one transaction.
        monkeypatch.setattr(ops, "_body_part", 1500)
    bodies = [bytes([i]) * 600 for i in range(5)] + [bytes(range(256)) * 20, b"", b"x"]
    msgs = [make_message(body=b) for b in bodies]
    got = driver.insert_many(msgs, 0)  # type: ignore[attr-defined]
    assert all(isinstance(m, int) for m in got) and got == sorted(got)
    for mid, body in zip(got, bodies, strict=True):
        stored = driver.get(mid)
        assert stored is not None and stored.body == body


def test_mongo_batch_rows_refused_for_their_id_are_stored_alone() -> None:
    d = open_mongomock(unique_table("db"), StoreLayout(table=unique_table()), ttl_delay=None)
    d.create_schema()
    try:
        first = [d.insert(make_message(body=b"old%d" % i)) for i in range(2)]
        d._counters.update_one({"_id": "mid"}, {"$set": {"seq": 0}})  # behind its rows
        bodies = [b"new%d" % i for i in range(4)]
        got = d.insert_many([make_message(body=b) for b in bodies], 3)
        stored = [m for m in got if isinstance(m, int)]
        assert len(stored) == 1 and got.count(None) == 3  # quota 3: two old rows + one
        assert d.get(stored[0]).body == b"new0"  # type: ignore[union-attr]
        got = d.insert_many([make_message(user="bob", body=b) for b in bodies])
        assert all(isinstance(m, int) for m in got) and len(set(got) | set(first)) == 6
        for mid, body in zip(got, bodies, strict=True):
            assert d.get(mid).body == body  # type: ignore[arg-type,union-attr]
        assert d.count("alice", "example.com", 0) == 3
    finally:
        d.close()
