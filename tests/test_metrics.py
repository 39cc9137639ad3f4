"""Prometheus metrics: counters, gauges and histograms follow what the Silo did; the example
serves them over HTTP on loopback."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from libmsilo import Silo
from libmsilo.drivers.memory import MemoryDriver
from libmsilo.errors import StorageUnavailable
from libmsilo.metrics import Metrics
from libmsilo.prometheus import SiloCollector, instrument
from tests.helpers import make_silo, message, settings

pytestmark = pytest.mark.usefixtures("backend")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "metrics_http.py"


def test_counters_gauges_and_histograms() -> None:
    silo = make_silo()
    registry = CollectorRegistry()
    instrument(silo, registry, watch=["sip:alice@example.com"])
    get = registry.get_sample_value
    assert get("msilo_stored_messages_total") == 0
    for n in range(3):
        silo.store(message(body=b"%d" % n))
    silo.store_many([message(body=b"x"), message(body=b"y")])
    msgs = silo.dump(owner="sip:alice@example.com")
    assert get("msilo_leased_messages") == 5
    silo.on_reply(msgs[0].mid, 200, token=msgs[0].lease_token)
    silo.send_failed(msgs[1])
    assert get("msilo_stored_messages_total") == 5
    assert get("msilo_dumped_messages_total") == 1
    assert get("msilo_failed_messages_total") == 1
    assert get("msilo_owner_messages", {"owner": "sip:alice@example.com"}) == 4
    assert get("msilo_store_seconds_count") == 3
    assert get("msilo_dump_seconds_count") == 1
    assert get("msilo_ack_seconds_count") == 1
    assert get("msilo_batch_size_count", {"kind": "store"}) == 4  # three alone, one of two
    assert get("msilo_batch_size_sum", {"kind": "store"}) == 5


def test_example_serves_metrics_over_http(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("metrics_http", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    silo, port, server = module.serve(f"sqlite:///{tmp_path / 'm.db'}", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
    finally:
        server.shutdown()
        silo.close()
    assert "msilo_stored_messages_total 5.0" in text
    assert "msilo_dumped_messages_total 3.0" in text
    assert 'msilo_owner_messages{owner="sip:alice@example.com"} 2.0' in text
    assert "msilo_store_seconds_bucket" in text


class Ticker:
    """A monotonic clock for the store gauges' cache, moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


INTERVAL = 15.0


def test_store_gauges_count_the_whole_store_once_per_interval(backend: str) -> None:
    silo, registry, ticker = make_silo(), CollectorRegistry(auto_describe=True), Ticker()
    registry.register(SiloCollector(silo, totals_interval=INTERVAL, clock=ticker))
    get = registry.get_sample_value
    assert get("msilo_store_messages") == 0
    for n in range(3):
        silo.store(message(body=b"%d" % n))
    silo.store(message(to="sip:carol@example.com"))
    msgs = silo.dump(owner="sip:alice@example.com")
    assert len(msgs) == 3
    assert get("msilo_store_messages") == 0  # cached until INTERVAL has passed
    ticker.now += INTERVAL
    assert get("msilo_store_messages") == 4
    no_lease_count = backend == "redis"  # leases are not indexed there
    assert get("msilo_store_leased") == (None if no_lease_count else 3)
    for msg in msgs[:2]:
        silo.on_reply(msg.mid, 200, token=msg.lease_token)
    silo.on_reply(msgs[2].mid, 480, token=msgs[2].lease_token)
    ticker.now += INTERVAL
    assert get("msilo_store_messages") == 2  # carol's, and the failed one stored again
    assert get("msilo_store_leased") == (None if no_lease_count else 0)
    assert get("msilo_dumped_messages_total") == 2
    assert get("msilo_failed_messages_total") == 1


def test_a_store_out_of_reach_leaves_the_store_gauges_out(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    silo = Silo(MemoryDriver(), settings())
    registry = CollectorRegistry()
    registry.register(SiloCollector(silo, totals_interval=0.0))
    silo.store(message())
    assert registry.get_sample_value("msilo_store_messages") == 1

    def refuse() -> None:
        raise StorageUnavailable("down")

    monkeypatch.setattr(silo, "totals", refuse)
    assert registry.get_sample_value("msilo_store_messages") is None
    assert registry.get_sample_value("msilo_stored_messages_total") == 1
    assert "store totals could not be read" in caplog.text


def test_no_store_gauges_without_an_interval() -> None:
    silo = Silo(MemoryDriver(), settings())
    registry = CollectorRegistry()
    instrument(silo, registry, totals_interval=None)
    silo.store(message())
    assert registry.get_sample_value("msilo_store_messages") is None
    assert registry.get_sample_value("msilo_stored_messages_total") == 1


def test_the_openmetrics_exposition_parses_without_clashing_names() -> None:
    silo = Silo(MemoryDriver(), settings())
    registry = CollectorRegistry(auto_describe=True)
    instrument(silo, registry, watch=["sip:alice@example.com"])
    silo.store(message())
    text = openmetrics_latest(registry).decode()
    names = {family.name for family in openmetrics_families(text)}
    assert {"msilo_stored_messages", "msilo_owner_messages", "msilo_store_messages"} <= names


def test_the_example_serves_the_metrics_as_a_process(tmp_path: Path) -> None:
    command = [sys.executable, str(EXAMPLE), f"sqlite:///{tmp_path / 'm.db'}", "--port", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the example prints it once serving (pytest-timeout)
        found = re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", line)
        assert found, line
        with urllib.request.urlopen(found.group(1), timeout=10) as reply:
            text = reply.read().decode()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("msilo_stored_messages_total", ())] == 5
    assert samples[("msilo_dumped_messages_total", ())] == 3
    assert samples[("msilo_store_messages", ())] == 2
    assert samples[("msilo_store_leased", ())] == 2  # dumped, not answered
    assert samples[("msilo_batch_size_count", (("kind", "store"),))] == 1


class Recorder(Metrics):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def latency(self, operation: str, seconds: float) -> None:
        assert seconds >= 0
        self.seen.append(operation)

    def batch(self, kind: str, size: int) -> None:
        self.seen.append(f"{kind}:{size}")


def test_without_metrics_nothing_is_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    silo = Silo(MemoryDriver(), settings())
    timed: list[float] = []
    real = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: timed.append(0) or real())
    silo.store(message())
    [msg] = silo.dump(owner="sip:alice@example.com")
    silo.on_reply(msg.mid, 200, token=msg.lease_token)
    assert timed == []
    monkeypatch.undo()
    silo.metrics = recorder = Recorder()
    silo.store(message())
    [msg] = silo.dump(owner="sip:alice@example.com")
    silo.on_reply(msg.mid, 200, token=msg.lease_token)
    assert recorder.seen == ["store:1", "store", "dump", "ack:1", "ack"]
