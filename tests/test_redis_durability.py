"""Stored means stored on Redis: the persistence warning and the write waits, on private
redis-server processes this module starts (loopback, free ports, stopped by PID)."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from libmsilo import MsiloSettings, Silo
from libmsilo.bench import BenchConfig, run_bench, total_steps
from libmsilo.drivers.redis_durability import WaitPolicy, has_waitaof, prepare
from libmsilo.errors import SettingsError, StorageError
from tests.helpers import message
from tests.redis_cluster import StandaloneServer, redis_cluster_url, standalone_redis

__all__ = ["redis_cluster_url"]  # fixture, imported for pytest

RISK = "loses every stored message"


def _silo(url: str, **values: object) -> Silo:
    settings = MsiloSettings(db_url=url, timezone="UTC", db_timeout=2, **values)  # type: ignore[arg-type]
    return Silo.from_settings(settings)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ---- persistence at start-up -----------------------------------------------------------------


def test_warns_when_persistence_is_off(caplog: pytest.LogCaptureFixture) -> None:
    with standalone_redis("--requirepass", "S3cret-durable") as server:
        url = server.url.replace("redis://", "redis://:S3cret-durable@")
        with caplog.at_level(logging.INFO, "libmsilo"), _silo(url) as silo:
            assert silo.store(message()).stored  # still works: a warning, not a refusal
    (warning,) = [w for w in _warnings(caplog) if RISK in w]
    assert "appendonly" in warning and f":{server.ports[0]}/0" in warning
    assert "S3cret-durable" not in warning and ":***@" in warning


@pytest.mark.parametrize(
    "args", [("--appendonly", "yes"), ("--save", "3600 1")], ids=["aof", "rdb"]
)
def test_no_warning_when_the_server_persists(
    args: tuple[str, ...], caplog: pytest.LogCaptureFixture
) -> None:
    with (
        standalone_redis(*args) as server,
        caplog.at_level(logging.INFO, "libmsilo"),
        _silo(server.url) as silo,
    ):
        assert silo.store(message()).stored
    assert not [w for w in _warnings(caplog) if RISK in w]


def test_config_not_allowed_is_said_quietly(caplog: pytest.LogCaptureFixture) -> None:
    with (
        standalone_redis("--rename-command", "CONFIG", "") as server,
        caplog.at_level(logging.INFO, "libmsilo"),
        _silo(server.url) as silo,
    ):
        assert silo.store(message()).stored
    assert not _warnings(caplog)
    assert any("cannot read its persistence settings" in r.getMessage() for r in caplog.records)


# ---- waiting for replicas ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicated() -> Iterator[tuple[StandaloneServer, StandaloneServer]]:
    """A primary and one replica of it."""
    with standalone_redis() as primary:
        port = str(primary.ports[0])
        with standalone_redis("--replicaof", "127.0.0.1", port) as replica:
            client = redis.Redis(port=replica.ports[0])
            for _ in range(300):  # bounded: until the replica has synced (at most 30 s)
                if client.info("replication").get("master_link_status") == "up":
                    break
                time.sleep(0.1)
            else:
                pytest.fail("the replica never synced with its primary")
            client.close()
            yield primary, replica


@contextmanager
def _stopped(server: StandaloneServer) -> Iterator[None]:
    """The server process stopped (SIGSTOP, by PID) for the block: it acknowledges nothing."""
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


def test_each_write_waits_for_the_replica(
    replicated: tuple[StandaloneServer, StandaloneServer],
) -> None:
    primary, replica = replicated
    with _silo(primary.url, redis_wait_replicas=1, redis_wait_timeout=0.5) as silo:
        silo.driver.drop_schema()
        silo.driver.create_schema()
        stored = silo.store(message(body=b"kept twice"))
        assert stored.stored
        # Acknowledged by the replica before store() returned: it holds the message now.
        replica_client = redis.Redis(port=replica.ports[0])
        keys = replica_client.keys(b"*:m:%d" % (stored.mid or 0))
        assert len(keys) == 1 and replica_client.hget(keys[0], "body") == b"kept twice"
        replica_client.close()
        short = r"not confirmed by 1 replicas \(0 did\)"
        with _stopped(replica), pytest.raises(StorageError, match=short):
            silo.store(message(body=b"only on the primary"))
        dumped = silo.dump(owner="sip:alice@example.com")  # claims wait too, and succeed
        assert dumped and dumped[0].body.endswith(b"kept twice")
        for m in dumped:
            assert silo.on_reply(m.mid or 0, 200, token=m.lease_token) is not None


def test_without_waits_a_stopped_replica_changes_nothing(
    replicated: tuple[StandaloneServer, StandaloneServer],
) -> None:
    primary, replica = replicated
    with _silo(primary.url) as silo, _stopped(replica):
        assert silo.store(message()).stored


# ---- WAITAOF ----------------------------------------------------------------------------------


def test_wait_aof_needs_a_server_that_has_it() -> None:
    with standalone_redis("--appendonly", "yes") as server:
        client = redis.Redis(port=server.ports[0])
        supported = has_waitaof(client)
        client.close()
        if supported:  # Redis 7.2+: each write waits for the fsync of the append-only file
            with _silo(server.url, redis_wait_aof=True) as silo:
                assert silo.store(message()).stored
        else:  # this machine's Redis 7.0: refused at start-up, naming what is missing
            with pytest.raises(SettingsError, match="WAITAOF"):
                _silo(server.url, redis_wait_aof=True)


def test_wait_aof_refuses_a_server_without_aof() -> None:
    with standalone_redis() as server, pytest.raises(SettingsError, match="redis_wait_aof"):
        _silo(server.url, redis_wait_aof=True)


def test_wait_policy_commands_and_replies() -> None:
    assert WaitPolicy(2, 0.25).command() == ("WAIT", 2, 250)
    assert WaitPolicy(1, 1.0, aof=True).command() == ("WAITAOF", 1, 1, 1000)
    WaitPolicy(2).check(2)
    WaitPolicy(0, aof=True).check([1, 0])
    with pytest.raises(StorageError, match="append-only file"):
        WaitPolicy(0, aof=True).check([0, 0])
    with pytest.raises(StorageError, match=r"2 replicas \(1 did\)"):
        WaitPolicy(2).check(1)


def test_waits_are_refused_on_a_cluster() -> None:
    with pytest.raises(SettingsError, match="redis\\+cluster"):
        prepare(None, WaitPolicy(1), "redis+cluster://h:1", clustered=True)


# ---- the cost, measured by msilo bench --------------------------------------------------------


def test_bench_measures_stores_that_wait_for_a_replica(
    replicated: tuple[StandaloneServer, StandaloneServer],
) -> None:
    primary, _ = replicated
    config = BenchConfig(
        urls=(primary.url,),
        messages=20,
        owners=2,
        queued=2,
        reminders=1,
        scales=(0,),
        repeat=1,
        redis_wait=1,
    )
    steps: list[str] = []
    report = run_bench(config, steps.append)
    assert report.failures == []
    assert len(steps) == total_steps(config)
    ops = {m.op: m for m in report.backends[0].measurements}
    waited = ops["store+wait1"]
    assert waited.items == 20 and waited.lib_median > 0 and waited.raw_median > 0
    assert [r["op"] for r in report.to_dict()["backends"][0]["results"]][:2] == [
        "store",
        "store+wait1",
    ]


def test_cluster_warns_for_each_primary_without_persistence(
    redis_cluster_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "libmsilo"), _silo(redis_cluster_url) as silo:
        silo.count("sip:alice@example.com")
    warned = [w for w in _warnings(caplog) if RISK in w]
    assert len(warned) == 3  # the test cluster's three primaries keep nothing on disk
    assert len({w.split(" has ")[0] for w in warned}) == 3  # each names its node
