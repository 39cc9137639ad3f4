"""Prometheus metrics: counters, gauges and histograms follow what the Silo did; the example
serves them over HTTP on loopback."""

from __future__ import annotations

import importlib.util
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from libmsilo.prometheus import instrument
from tests.helpers import make_silo, message

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
    assert get("msilo_stored_messages", {"owner": "sip:alice@example.com"}) == 4
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
    assert 'msilo_stored_messages{owner="sip:alice@example.com"} 2.0' in text
    assert "msilo_store_seconds_bucket" in text
