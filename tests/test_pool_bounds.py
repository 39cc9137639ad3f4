"""Connection pools are bounded: many threads in one process never open more connections than
``pool_size``; a caller finding every connection in use waits, then fails with
StorageUnavailable."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import sqlalchemy as sa

from libmsilo import MsiloSettings
from libmsilo.drivers import DriverOptions, StoreLayout, open_driver, sql
from libmsilo.drivers.aio import open_async_driver
from libmsilo.drivers.mongo import open_mongo
from libmsilo.drivers.redis import owner_group
from libmsilo.drivers.sql_pool import ConnectionStack
from libmsilo.errors import SettingsError, StorageUnavailable
from libmsilo.testing import make_message, unique_table
from tests.backends import backend_url
from tests.helpers import run_threads
from tests.redis_cluster import redis_cluster_url

__all__ = ["redis_cluster_url"]  # the fixture, imported for pytest

THREADS = 200
STORES_PER_THREAD = 3


def test_postgres_200_threads_never_exceed_the_pool() -> None:
    base = backend_url("postgresql")
    app = f"msilo-pool-{uuid.uuid4().hex[:8]}"
    size = 5
    url = f"{base}{'&' if '?' in base else '?'}application_name={app}"
    options = DriverOptions(timeout=30, pool_size=size)
    driver = open_driver(url, StoreLayout(table=unique_table()), options)
    driver.create_schema()
    # Statements prepared first: the watcher samples the server, which may still list a
    # connection the client closed (the schema check's, which the next test covers).
    driver.ping()
    seen: list[int] = []
    stop = threading.Event()
    dsn = sa.make_url(base).set(drivername="postgresql").render_as_string(hide_password=False)

    def watch() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
                ).fetchone()
                seen.append(int(row[0]) if row else 0)
                stop.wait(0.005)

    mids: list[int | None] = []

    def store(i: int) -> None:
        for n in range(STORES_PER_THREAD):
            mids.append(driver.insert(make_message(f"u{i % 17}", body=b"%d/%d" % (i, n))))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        try:
            run_threads(store, THREADS)
        finally:
            stop.set()
            watcher.join(10)
        assert len(mids) == THREADS * STORES_PER_THREAD
        assert all(isinstance(m, int) for m in mids) and len(set(mids)) == len(mids)
        assert seen and max(seen) >= 1, "the watcher never saw the driver's connections"
        assert max(seen) <= size
    finally:
        driver.drop_schema()
        driver.close()


@pytest.mark.parametrize("native", [False, True])
def test_schema_work_holds_a_place_of_the_pool(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connections of the schema check (at first use, and after create_schema) and of
    create_schema count against ``pool_size``: with a pool of one, the server never sees two
    connections of the driver while that work runs, idle pooled ones included."""
    base = backend_url("postgresql")
    app = f"msilo-ddl-{uuid.uuid4().hex[:8]}"
    url = f"{base}{'&' if '?' in base else '?'}application_name={app}"
    dsn = sa.make_url(base).set(drivername="postgresql").render_as_string(hide_password=False)
    seen: list[int] = []

    def connections() -> int:
        """The driver's connections the server lists, once a connection the driver just
        closed has left (a backend ends shortly after its client said goodbye)."""
        with psycopg.connect(dsn, autocommit=True) as admin:
            query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            for _ in range(200):
                row = admin.execute(query, (app,)).fetchone()
                count = int(row[0]) if row else 0
                if count <= 1:
                    break
                time.sleep(0.01)
        return count

    def sampled(fn: Callable[..., None]) -> Callable[..., None]:
        def step(*args: Any) -> None:
            seen.append(connections())
            fn(*args)

        return step

    for name in ("check_schema", "create_schema"):
        monkeypatch.setattr(sql, name, sampled(getattr(sql, name)))
    layout = StoreLayout(table=unique_table())
    options = DriverOptions(timeout=10, pool_size=1)

    async def steps() -> None:
        driver = await open_async_driver(url, layout, options, native=native)
        try:
            await driver.create_schema()
            await driver.insert(make_message())  # first use: the schema check
            await driver.create_schema()  # the pool now holds an idle connection
            assert await driver.count("alice", "example.com", 0) == 1  # checked again
        finally:
            await driver.drop_schema()
            await driver.close()

    asyncio.run(steps())
    assert len(seen) == 4 and max(seen) == 1, seen


def test_a_caller_beyond_the_pool_waits_then_gets_storage_unavailable(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'p.db'}", poolclass=sa.pool.NullPool)
    stack = ConnectionStack(engine, size=2, wait=0.05)
    first, second = stack.checkout(), stack.checkout()
    with pytest.raises(StorageUnavailable, match="all 2 connections"):
        stack.checkout()
    stack.checkin(first)
    third = stack.checkout()  # the one given back
    assert third is first
    stack.discard(second, lost=False)
    fourth = stack.checkout()  # a discarded connection frees its slot too
    stack.checkin(third)
    stack.checkin(fourth)
    stack.close()
    engine.dispose()


def test_sqlite_driver_threads_share_a_bounded_pool(tmp_path: Path) -> None:
    options = DriverOptions(timeout=30, pool_size=2)
    driver = open_driver(f"sqlite:///{tmp_path / 'm.db'}", StoreLayout(), options)
    driver.create_schema()
    made: list[int] = []
    stack = driver._pool  # type: ignore[attr-defined]
    connect = stack._connect

    def counting() -> object:
        made.append(1)
        return connect()

    stack._connect = counting
    try:
        run_threads(lambda i: [driver.insert(make_message(f"u{i}")) for _ in range(5)], 40)
        assert 1 <= len(made) <= 2
        assert sum(driver.count(f"u{i}", "example.com", 0) for i in range(40)) == 200
    finally:
        driver.close()


def test_redis_pool_is_bounded() -> None:
    options = DriverOptions(timeout=30, pool_size=3)
    driver = open_driver(backend_url("redis"), StoreLayout(table=unique_table()), options)
    driver.create_schema()
    try:
        run_threads(lambda i: [driver.insert(make_message(f"u{i}")) for _ in range(5)], 50)
        pool = driver.client.connection_pool  # type: ignore[attr-defined]
        assert pool.max_connections == 3
        assert 1 <= len(pool._connections) <= 3
        assert sum(driver.count(f"u{i}", "example.com", 0) for i in range(50)) == 250
    finally:
        driver.drop_schema()
        driver.close()


def test_redis_cluster_pools_are_bounded_per_node(redis_cluster_url: str) -> None:
    options = DriverOptions(timeout=30, pool_size=2)
    driver = open_driver(redis_cluster_url, StoreLayout(table=unique_table()), options)
    driver.create_schema()
    try:
        run_threads(lambda i: [driver.insert(make_message(f"u{i}")) for _ in range(5)], 30)
        assert sum(driver.count(f"u{i}", "example.com", 0) for i in range(30)) == 150
        nodes = driver.client.get_nodes()  # type: ignore[attr-defined]
        assert len(nodes) >= 3
        for node in nodes:
            pool = node.redis_connection.connection_pool
            assert isinstance(pool, redis.BlockingConnectionPool)
            assert pool.max_connections == 2 and pool.timeout == 30
            assert len(pool._connections) <= 2
    finally:
        driver.drop_schema()
        driver.close()


def test_a_redis_cluster_step_beyond_the_pool_is_storage_unavailable(
    redis_cluster_url: str,
) -> None:
    options = DriverOptions(timeout=0.2, pool_size=2)
    driver = open_driver(redis_cluster_url, StoreLayout(table=unique_table()), options)
    driver.create_schema()
    try:
        client = driver.client  # type: ignore[attr-defined]
        msg = make_message()
        node = client.get_node_from_key(driver._msg_key(owner_group(msg.username, msg.domain)))  # type: ignore[attr-defined]
        pool = node.redis_connection.connection_pool
        taken = [pool.get_connection(), pool.get_connection()]
        with pytest.raises(StorageUnavailable):
            driver.insert(msg)
        for conn in taken:
            pool.release(conn)
        assert driver.insert(msg) is not None
    finally:
        driver.drop_schema()
        driver.close()


def test_mongo_client_gets_the_pool_size() -> None:
    driver = open_mongo(
        "mongodb://127.0.0.1:1/msilo", StoreLayout(), DriverOptions(timeout=2, pool_size=7)
    )
    try:
        client = driver._client  # type: ignore[attr-defined]
        assert client.options.pool_options.max_pool_size == 7
        assert client.options.pool_options.wait_queue_timeout == 2
    finally:
        driver.close()


def test_settings_carry_the_pool_size_and_refuse_bad_bounds() -> None:
    assert MsiloSettings().driver_options().pool_size == 10
    assert MsiloSettings(db_pool_size=3).driver_options().pool_size == 3
    for bad in ({"db_pool_size": 0}, {"group_commit_size": 0}, {"group_commit_wait": -1}):
        with pytest.raises(SettingsError):
            MsiloSettings(**bad)
