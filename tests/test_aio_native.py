"""The asyncio drivers: the conformance suite on the native PostgreSQL (psycopg
``AsyncConnection``), Redis (``redis.asyncio``) and MongoDB (``AsyncMongoClient``) drivers and
on the thread adapter, and ``AsyncSilo`` on the native drivers without one blocking call on the
event loop (the loop's slow-callback detection in debug mode, and no worker thread used).

The native MongoDB driver runs against a real server only when ``MSILO_TEST_MONGO_URL`` is set;
otherwise it runs on :mod:`tests.mongo_async_fake` (mongomock behind an asyncio face), which
checks the bridge's coverage of the driver's calls, not pymongo's asyncio client."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
import sqlalchemy as sa

from libmsilo import AsyncSilo, ReplyOutcome
from libmsilo.drivers import Driver, DriverOptions, StoreLayout, mongo
from libmsilo.drivers.aio import (
    AsyncDriver,
    BridgedDriver,
    ThreadedDriver,
    has_native_driver,
    open_async_driver,
)
from libmsilo.errors import SettingsError, StorageUnavailable
from libmsilo.testing import DriverConformance, make_message, unique_table
from tests.backends import backend_url
from tests.helpers import T0, Clock, message, register, settings
from tests.mongo_async_fake import open_fake_mongo_async

T = TypeVar("T")

#: The loop reports a callback (a task step) running longer than this: a blocking call. A batch
#: of 21 stores is Python work on the loop (about 2 ms idle, 60 ms seen on a machine with a load
#: of 14 in debug mode); a wait on the network or a lock that blocks the loop takes longer.
SLOW = 0.25


class LoopThread:
    """An event loop running in a thread of its own, for tests written as blocking code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class BlockingFace:
    """The :class:`Driver` face of an :class:`AsyncDriver`: each call is a task on the loop
    (calls from several threads are concurrent tasks there)."""

    def __init__(self, driver: AsyncDriver, loop: LoopThread) -> None:
        self._driver = driver
        self._loop = loop

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method: Callable[..., Awaitable[Any]] = getattr(self._driver, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            async def step() -> Any:
                return await method(*args, **kwargs)

            return self._loop.call(step())

        return call


def _conformant(
    url: str, native: bool, options: DriverOptions | None = None, fake: bool = False
) -> Iterator[Driver]:
    loop = LoopThread()
    layout = StoreLayout(table=unique_table("silo_"))
    options = options or DriverOptions(timeout=10)
    opening = open_fake_mongo_async if fake else functools.partial(open_async_driver, native=native)
    driver = loop.call(opening(url, layout, options))
    assert isinstance(driver, BridgedDriver if native else ThreadedDriver)
    face = BlockingFace(driver, loop)
    face.create_schema()
    try:
        yield face  # type: ignore[misc]
    finally:
        face.drop_schema()
        face.close()
        loop.stop()


class TestNativePostgres(DriverConformance):
    @pytest.fixture
    def driver(self) -> Iterator[Driver]:
        yield from _conformant(backend_url("postgresql"), native=True)


class TestNativeRedis(DriverConformance):
    @pytest.fixture
    def driver(self) -> Iterator[Driver]:
        yield from _conformant(backend_url("redis"), native=True)


#: The suite's clock is in 2023: no TTL index (its rows would look long expired to a server's).
_NO_TTL = DriverOptions(timeout=10, ttl_delay=None)


class TestNativeMongo(DriverConformance):
    """On a real server: only when ``MSILO_TEST_MONGO_URL`` is set."""

    @pytest.fixture
    def driver(self) -> Iterator[Driver]:
        yield from _conformant(backend_url("mongo"), native=True, options=_NO_TTL)


class TestNativeMongoFake(DriverConformance):
    """The native MongoDB driver's steps through the bridge, on the fake asyncio client."""

    @pytest.fixture
    def driver(self) -> Iterator[Driver]:
        yield from _conformant("mongodb://fake", native=True, options=_NO_TTL, fake=True)


class TestThreadedSqlite(DriverConformance):
    @pytest.fixture
    def driver(self, tmp_path: Path) -> Iterator[Driver]:
        yield from _conformant(f"sqlite:///{tmp_path / 'a.db'}", native=False)


# ---- AsyncSilo on the native drivers -----------------------------------------------------------


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor, counting the calls sent to worker threads."""

    submitted = 0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


async def _delivery_round(silo: AsyncSilo, clock: Clock) -> None:
    """Stores (concurrent), a dump, replies, reminders and the inbox API, checked."""
    results = await asyncio.gather(*(silo.store(message(body=b"%d" % i)) for i in range(20)))
    assert all(r.stored for r in results)
    await silo.store(message(to="sip:carol@example.com"), send_at=T0 + 5)
    assert await silo.count("sip:alice@example.com") == 20
    out = await silo.dump(register())
    assert sorted(m.mid for m in out) == sorted(r.mid for r in results if r.mid is not None)
    first, second, *rest = out
    assert await silo.on_reply(first.mid, 200, token=first.lease_token) is ReplyOutcome.DELIVERED
    assert await silo.send_failed(second) is ReplyOutcome.RETRY
    replies = [(m.mid, 200, m.lease_token) for m in rest]
    assert set(await silo.on_replies(replies)) == {ReplyOutcome.DELIVERED}
    reminders: list[Any] = []
    for _ in range(3):  # the reminder sweep is due once a second (send_time)
        clock.advance(5)
        reminders += await silo.tick()
    [reminder] = reminders
    assert reminder.mid is not None
    assert await silo.on_reply(reminder.mid, 200) is ReplyOutcome.DELIVERED
    assert [m.mid for m in await silo.list("sip:alice@example.com")] == [second.mid]
    totals = await silo.totals()
    assert totals is not None and totals.stored == 1
    assert await silo.purge("sip:alice@example.com") == 1
    assert await silo.purge_expired() == 0


@pytest.mark.parametrize("kind", ["postgresql", "redis", "mongo", "mongo-fake"])
def test_async_silo_never_blocks_the_loop(
    kind: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mongo`` needs ``MSILO_TEST_MONGO_URL``; ``mongo-fake`` runs the native MongoDB driver
    on the fake asyncio client (opened for a ``mongodb://`` URL as the real one would be). The
    Mongo drivers get no TTL index: the test's clock is in 2023."""
    fake = kind == "mongo-fake"
    url = "mongodb://fake.invalid/msilo" if fake else backend_url(kind)
    opener = open_fake_mongo_async if fake else mongo.open_mongo_async

    def without_ttl(url: str, layout: StoreLayout, options: DriverOptions) -> Any:
        return opener(url, layout, dataclasses.replace(options, ttl_delay=None))

    monkeypatch.setattr(mongo, "open_mongo_async", without_ttl)
    clock = Clock(T0)
    executor = CountingExecutor(max_workers=2)
    warmed: list[int] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(executor)
        loop.slow_callback_duration = SLOW
        silo = await AsyncSilo.from_settings(
            settings(
                db_url=url,
                db_table=unique_table("silo_"),
                reminder="sip:r@example.com",
                send_time=1,
            ),
            clock=clock,
        )
        assert silo.native and silo.settings.group_commit
        try:
            await silo.count("sip:nobody@example.com")  # the first step reads the table's shape
            warmed.append(executor.submitted)
            caplog.clear()  # opening may import modules and connect: not part of the steps
            await _delivery_round(silo, clock)
            assert executor.submitted == warmed[0], "a step ran in a worker thread"
            batches = silo._inserts  # the loop's group commit served the concurrent stores
            assert batches.items == 21 and batches.batches < batches.items
        finally:
            await silo.async_driver.drop_schema()
            await silo.close()

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        asyncio.run(scenario(), debug=True)
    slow = [r.getMessage() for r in caplog.records if r.name == "asyncio" and " took " in r.msg]
    assert not slow, slow


def test_the_slow_callback_check_sees_a_blocking_call(caplog: pytest.LogCaptureFixture) -> None:
    """The check above can fail: a blocking call in a task is reported."""

    async def blocking() -> None:
        asyncio.get_running_loop().slow_callback_duration = SLOW
        time.sleep(SLOW * 3)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        asyncio.run(blocking(), debug=True)
    assert any(r.name == "asyncio" and " took " in r.msg for r in caplog.records)


@pytest.mark.parametrize(
    ("release", "native"), [("4.12.2", False), ("4.13.0", True), ("5.0", True), ("dev", False)]
)
def test_mongodb_is_native_only_with_a_stable_async_pymongo(
    monkeypatch: pytest.MonkeyPatch, release: str, native: bool
) -> None:
    """pymongo before 4.13 (no stable AsyncMongoClient) keeps MongoDB on worker threads."""
    import importlib.metadata

    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata, "version", lambda name: release if name == "pymongo" else real(name)
    )
    assert has_native_driver("mongodb://127.0.0.1/x") is native
    assert has_native_driver("redis://127.0.0.1:6379/0")


def test_native_is_chosen_by_url_and_can_be_declined(tmp_path: Path) -> None:
    pg = backend_url("postgresql")
    assert has_native_driver(pg) and has_native_driver("redis://127.0.0.1:6379/0")
    assert has_native_driver("mongodb://127.0.0.1/x") and has_native_driver("mongodb+srv://h/x")
    assert not has_native_driver("mongomock://x")
    assert not has_native_driver(f"sqlite:///{tmp_path / 'a.db'}")
    assert not has_native_driver("redis+cluster://127.0.0.1:7000")
    assert not has_native_driver("postgresql+psycopg2://127.0.0.1/x")

    async def scenario() -> None:
        declined = await AsyncSilo.from_settings(
            settings(db_url=pg, db_table=unique_table("silo_")), native=False
        )
        assert not declined.native
        assert (await declined.store(message())).stored
        await declined.async_driver.drop_schema()
        await declined.close()
        lite = await AsyncSilo.from_settings(settings(db_url=f"sqlite:///{tmp_path / 'a.db'}"))
        assert not lite.native
        await lite.close()
        with pytest.raises(SettingsError):
            await open_async_driver(f"sqlite:///{tmp_path / 'b.db'}", native=True)

    asyncio.run(scenario())


@pytest.mark.parametrize("group", [False, True])
@pytest.mark.parametrize("kind", ["postgresql", "redis"])
def test_a_cancelled_call_gives_its_connection_back(kind: str, group: bool) -> None:
    """Tasks cancelled in the middle of their steps leave the pool whole: with one
    connection, later calls still get it (a cancelled store may or may not be stored; with
    group commit its batch goes on without it)."""
    url = backend_url(kind)

    async def scenario() -> None:
        silo = await AsyncSilo.from_settings(
            settings(
                db_url=url,
                db_table=unique_table("silo_"),
                db_pool_size=1,
                db_timeout=5,
                group_commit=group,
            )
        )
        try:
            for delay in (0, 0.0005, 0.001, 0.002, 0.005):
                tasks = [asyncio.create_task(silo.store(message())) for _ in range(5)]
                await asyncio.sleep(delay)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            kept = await silo.count("sip:alice@example.com")
            results = await asyncio.gather(*(silo.store(message()) for _ in range(5)))
            assert all(r.stored for r in results)
            now = await silo.count("sip:alice@example.com")
            assert now >= kept + 5 if group else now == kept + 5
        finally:
            await silo.async_driver.drop_schema()
            await silo.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://root@127.0.0.1:1/none",
        "redis://127.0.0.1:1/0",
        "mongodb://127.0.0.1:1/none",  # pymongo's AsyncMongoClient, no server needed
    ],
)
def test_an_unreachable_server_is_storage_unavailable(url: str) -> None:
    async def scenario() -> None:
        with pytest.raises(StorageUnavailable):
            await AsyncSilo.from_settings(settings(db_url=url, db_timeout=1))

    asyncio.run(scenario())


def test_idle_connections_the_server_closed_are_replaced() -> None:
    """Connections of the native PostgreSQL pool that the server closed while they were idle
    (``pg_terminate_backend``) are dropped at checkout: the next calls succeed on new ones."""
    base = backend_url("postgresql")
    app = f"msilo-idle-{uuid.uuid4().hex[:8]}"
    url = f"{base}{'&' if '?' in base else '?'}application_name={app}"
    dsn = sa.make_url(base).set(drivername="postgresql").render_as_string(hide_password=False)

    def sessions(admin: psycopg.Connection[Any]) -> list[int]:
        query = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
        return [int(r[0]) for r in admin.execute(query, (app,)).fetchall()]

    async def scenario() -> None:
        layout = StoreLayout(table=unique_table("silo_"))
        driver = await open_async_driver(url, layout, DriverOptions(timeout=10, pool_size=3))
        await driver.create_schema()
        try:
            first = await asyncio.gather(*(driver.insert(make_message()) for _ in range(6)))
            with psycopg.connect(dsn, autocommit=True) as admin:
                killed = sessions(admin)
                assert killed, "the driver holds no idle connection"
                for pid in killed:
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                while set(killed) & set(sessions(admin)):
                    await asyncio.sleep(0.01)
            # One call alone, then as many at once as the pool holds: none sees the loss.
            assert await driver.count("alice", "example.com", 0) == len(first)
            calls = [driver.get(mid or 0) for mid in first]
            assert all(row is not None for row in await asyncio.gather(*calls))
        finally:
            await driver.drop_schema()
            await driver.close()

    asyncio.run(scenario())


def test_a_connection_lost_mid_step_is_storage_unavailable() -> None:
    """The native driver tells a lost connection from an ordinary error as the synchronous one
    does: the step fails with StorageUnavailable and the next call gets a new connection."""
    base = backend_url("postgresql")
    dsn = sa.make_url(base).set(drivername="postgresql").render_as_string(hide_password=False)

    def killed_first(conn: Any) -> None:
        conn.cursor.execute("SELECT pg_backend_pid()")
        pid = conn.cursor.fetchone()[0]
        with psycopg.connect(dsn, autocommit=True) as admin:  # blocks the loop: a test only
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        conn.cursor.execute("SELECT 1")

    async def scenario() -> None:
        layout = StoreLayout(table=unique_table("silo_"))
        driver = await open_async_driver(base, layout, DriverOptions(timeout=10))
        await driver.create_schema()
        try:
            await driver.insert(make_message())
            sync: Any = driver.sync
            with pytest.raises(StorageUnavailable):
                await driver.run(sync._run, killed_first)
            assert await driver.count("alice", "example.com", 0) == 1
        finally:
            await driver.drop_schema()
            await driver.close()

    asyncio.run(scenario())


def test_a_connection_idle_for_long_is_pinged_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection idle longer than ``ping_after`` is pinged at checkout; one whose ping
    fails is replaced by a new connection, unseen by the caller."""

    def pid(conn: Any) -> int:
        conn.cursor.execute("SELECT pg_backend_pid()")
        return int(conn.cursor.fetchone()[0])

    async def scenario() -> None:
        layout = StoreLayout(table=unique_table("silo_"))
        driver = await open_async_driver(backend_url("postgresql"), layout, DriverOptions())
        await driver.create_schema()
        sync: Any = driver.sync
        try:
            first = await driver.run(sync._run, pid)
            pings: list[object] = []

            def dead(dbapi: object) -> None:
                pings.append(dbapi)
                raise psycopg.OperationalError("no answer")

            monkeypatch.setattr(sync._pool, "_ping_after", -1.0)  # every checkout pings
            monkeypatch.setattr(sync._dialect, "do_ping", dead)
            second = await driver.run(sync._run, pid)
            assert len(pings) == 1 and second != first
        finally:
            monkeypatch.undo()
            await driver.drop_schema()
            await driver.close()

    asyncio.run(scenario())


def test_the_native_mongo_client_gets_the_pool_bound_and_timeouts() -> None:
    """``AsyncMongoClient`` gets the synchronous driver's settings: at most ``pool_size``
    connections, ``timeout`` for server selection, connect, socket and pool waits; the URL's
    own values win."""

    async def scenario() -> None:
        options = DriverOptions(timeout=2, pool_size=3)
        url = "mongodb://127.0.0.1:1/box?connectTimeoutMS=700"
        driver = await open_async_driver(url, StoreLayout(), options)
        assert isinstance(driver, BridgedDriver)
        sync: Any = driver.sync
        client = sync._client.target
        try:
            assert sync.database.target.name == "box"
            pool = client.options.pool_options
            assert (pool.max_pool_size, pool.wait_queue_timeout) == (3, 2)
            assert (pool.connect_timeout, pool.socket_timeout) == (0.7, 2)
            assert client.options.server_selection_timeout == 2
        finally:
            await driver.close()
        with pytest.raises(SettingsError):
            await open_async_driver("mongodb://127.0.0.1:1/a%20b", native=True)

    asyncio.run(scenario())
