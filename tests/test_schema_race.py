"""Many workers starting on one store at once: schema creation, versions and ``msilo migrate``.

Six worker processes (spawned once per backend) meet at a barrier before every step, so each step
is a real race, several rounds each: starting ``Silo.from_settings`` on a fresh table; starting on
a table of an older schema (a C module's table, or libmsilo's schema version 1), which every
worker must refuse with ``SchemaOutdated``; migrating it from every worker at once (through the
``msilo migrate`` command in some rounds, ``libmsilo.migrate`` in the others); starting again.
MongoDB runs on in-process mongomock (or a server named by ``MSILO_TEST_MONGO_URL``); its workers
are threads, each with a driver of its own.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import typer.main
from pymongo import MongoClient

import libmsilo
from libmsilo import MsiloSettings, SchemaOutdated, Silo
from libmsilo.cli import app
from libmsilo.drivers import StoreLayout
from libmsilo.drivers.mongo import MongoDriver, open_mongomock
from libmsilo.drivers.redis import RedisDriver
from libmsilo.drivers.schema_version import SCHEMA_VERSION, Versioned
from libmsilo.testing import unique_table
from tests.backends import backend_url
from tests.helpers import message
from tests.test_sql_driver import KAMAILIO_DDL, OPENSIPS_DDL

pytestmark = pytest.mark.slow

WORKERS = 6
#: Rounds per backend (each: a fresh table, then an old one refused, migrated, used).
ROUNDS = max(1, int(os.environ.get("MSILO_TEST_RACE_ROUNDS", "3")))
OWNER = "sip:alice@example.com"
OLD_FLAVOURS = ("libmsilo-v1", "opensips", "kamailio")
BARRIER_WAIT = 120.0

# One step of the plan every worker runs: (action, table, profile).
Step = tuple[str, str, str]


def _settings(url: str, table: str, profile: str) -> MsiloSettings:
    return MsiloSettings(db_url=url, db_table=table, profile=profile, timezone="UTC")


def _start(url: str, table: str, profile: str) -> str:
    try:
        silo = Silo.from_settings(_settings(url, table, profile))
    except SchemaOutdated as exc:
        return "outdated" if "msilo migrate" in str(exc) else f"unclear: {exc}"
    with silo:
        return "started" if silo.store(message(to=OWNER)).stored else "not stored"


def _migrate_api(url: str, table: str, profile: str) -> str:
    done = libmsilo.migrate(_settings(url, table, profile))
    return "migrated" if done.after == SCHEMA_VERSION else f"left at {done.after}"


def _migrate_cli(url: str, table: str, profile: str) -> str:
    args = ["migrate", "--db-url", url, "--table", table, "--profile", profile]
    code = typer.main.get_command(app).main(args, standalone_mode=False)
    return "migrated" if code in (None, 0) else f"exit status {code}"


_ACTIONS: dict[str, Callable[[str, str, str], str]] = {
    "start": _start,
    "migrate-api": _migrate_api,
    "migrate-cli": _migrate_cli,
}


def _worker(url: str, plan: list[Step], barrier: Any, results: Any) -> None:
    """Run every step of ``plan`` together with the other workers; report each outcome."""
    for index, (action, table, profile) in enumerate(plan):
        try:
            barrier.wait(timeout=BARRIER_WAIT)
        except threading.BrokenBarrierError:
            results.put((index, "barrier broken"))
            return
        try:
            outcome = _ACTIONS[action](url, table, profile)
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        results.put((index, outcome))


def _race(url: str, plan: list[Step]) -> list[list[str]]:
    """Every worker's outcome of each step of ``plan``."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(url, plan, barrier, results)) for _ in range(WORKERS)
    ]
    for proc in procs:
        proc.start()
    outcomes: list[list[str]] = [[] for _ in plan]
    try:
        for _ in range(WORKERS * len(plan)):
            index, outcome = results.get(timeout=BARRIER_WAIT + 60)
            outcomes[index].append(outcome)
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
                proc.join()
    assert [proc.exitcode for proc in procs] == [0] * WORKERS
    return outcomes


# ---- old stores ---------------------------------------------------------------------------------


def _old_sql_table(url: str, kind: str, flavour: str) -> tuple[str, str]:
    """A table of an older schema holding one message; (table, settings profile)."""
    table = unique_table("old")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            if flavour == "libmsilo-v1":
                Silo.from_settings(_settings(url, table, "libmsilo")).close()
                for column in ("extra_hdrs", "callid"):  # one per statement: SQLite
                    conn.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN {column}"))
                conn.execute(
                    sa.text("DELETE FROM msilo_version WHERE table_name = :t"), {"t": table}
                )
            else:
                for statement in (OPENSIPS_DDL if flavour == "opensips" else KAMAILIO_DDL)[kind]:
                    conn.execute(sa.text(statement.format(t=table)))
            conn.execute(
                sa.text(
                    f"INSERT INTO {table} (src_addr, dst_addr, username, domain, inc_time,"
                    " exp_time, snd_time, ctype, body) VALUES ('sip:bob@example.org', :to,"
                    " 'alice', 'example.com', 1700000000, 2100000000, 0, 'text/plain', :body)"
                ),
                {"to": OWNER, "body": b"old"},
            )
    finally:
        engine.dispose()
    return table, "libmsilo" if flavour == "libmsilo-v1" else flavour


def _old_redis_store(url: str) -> tuple[str, str]:
    """A Redis store that recorded schema version 1 and holds one message."""
    table = unique_table("old")
    with Silo.from_settings(_settings(url, table, "libmsilo")) as silo:
        assert silo.store(message(to=OWNER)).stored
        assert isinstance(silo.driver, RedisDriver)
        silo.driver.client.set(f"{{{table}:version}}", 1)
    return table, "libmsilo"


def _plan(url: str, kind: str) -> tuple[list[Step], list[str], list[tuple[str, str, int]]]:
    """The race plan of ``ROUNDS`` rounds, every worker's expected outcome of each step, and
    (table, profile, messages stored) to check afterwards."""
    plan: list[Step] = []
    outcomes: list[str] = []
    expected: list[tuple[str, str, int]] = []
    for r in range(ROUNDS):
        fresh = unique_table("fresh")
        if kind == "redis":
            old, profile = _old_redis_store(url)
        else:
            old, profile = _old_sql_table(url, kind, OLD_FLAVOURS[r % len(OLD_FLAVOURS)])
        migrate = "migrate-cli" if r % 2 == 0 else "migrate-api"
        plan += [
            ("start", fresh, "libmsilo"),
            ("start", old, profile),
            (migrate, old, profile),
            ("start", old, profile),
        ]
        outcomes += ["started", "outdated", "migrated", "started"]
        expected += [(fresh, "libmsilo", WORKERS), (old, profile, WORKERS + 1)]
    return plan, outcomes, expected


@pytest.fixture(params=["sqlite", "postgresql", "mysql", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    kind: str = request.param
    url = f"sqlite:///{tmp_path / 'race.db'}" if kind == "sqlite" else backend_url(kind)
    yield url, kind


def test_workers_racing_at_start_up(store: tuple[str, str]) -> None:
    url, kind = store
    plan, want, expected = _plan(url, kind)
    outcomes = _race(url, plan)
    for step, wanted, got in zip(plan, want, outcomes, strict=True):
        assert got == [wanted] * WORKERS, step
    for table, profile, count in expected:
        with Silo.from_settings(_settings(url, table, profile), create_schema=False) as silo:
            assert isinstance(silo.driver, Versioned)
            assert silo.driver.schema_version() == SCHEMA_VERSION
            assert silo.count(OWNER) == count
            silo.driver.drop_schema()


# ---- MongoDB (mongomock: threads on one in-process database) ------------------------------------


def _threads(drivers: list[MongoDriver], step: Callable[[MongoDriver], None]) -> list[str]:
    """Run ``step`` on every driver at once, one thread each; the outcomes."""
    barrier = threading.Barrier(len(drivers))
    outcomes: list[str] = [""] * len(drivers)

    def run(i: int) -> None:
        barrier.wait(timeout=BARRIER_WAIT)
        try:
            step(drivers[i])
            outcomes[i] = "ok"
        except SchemaOutdated:
            outcomes[i] = "outdated"
        except Exception as exc:
            outcomes[i] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(drivers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=BARRIER_WAIT + 60)
    return outcomes


@contextlib.contextmanager
def _mongo_databases(kind: str) -> Iterator[Callable[[], Any]]:
    """Openers of one database for each worker: a shared in-process mongomock one, or, with
    ``MSILO_TEST_MONGO_URL``, a client of its own per worker on that server."""
    if kind == "mongomock":
        first = open_mongomock(unique_table("db"))
        try:
            yield lambda: first.database
        finally:
            first.close()
        return
    url = backend_url("mongo")  # skips unless MSILO_TEST_MONGO_URL names a server
    clients: list[MongoClient[dict[str, Any]]] = []

    def database() -> Any:
        clients.append(MongoClient(url, serverSelectionTimeoutMS=5000))
        return clients[-1].get_default_database("msilo_test")

    try:
        yield database
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("kind", ["mongomock", "server"])
def test_mongo_workers_racing_at_start_up(kind: str) -> None:
    with _mongo_databases(kind) as database:
        for _ in range(ROUNDS):
            layout = StoreLayout(table=unique_table("race"))
            drivers = [MongoDriver(database(), layout) for _ in range(WORKERS)]
            assert _threads(drivers, MongoDriver.create_schema) == ["ok"] * WORKERS
            assert drivers[0].schema_version() == SCHEMA_VERSION
            drivers[0].database[f"{layout.table}_counters"].update_one(
                {"_id": "schema"}, {"$set": {"version": 1}}
            )
            assert _threads(drivers, MongoDriver.create_schema) == ["outdated"] * WORKERS
            assert _threads(drivers, MongoDriver.migrate) == ["ok"] * WORKERS
            assert _threads(drivers, MongoDriver.create_schema) == ["ok"] * WORKERS
            assert drivers[0].schema_version() == SCHEMA_VERSION
            drivers[0].drop_schema()
