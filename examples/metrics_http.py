"""Expose a Silo's Prometheus metrics over HTTP (needs ``pip install 'libmsilo[metrics]'``).

Run ``python examples/metrics_http.py [DB_URL] [--port N]`` and read
http://127.0.0.1:9464/metrics: the msilo counters, the leased gauge, the store gauges, the stored
gauge of the watched owner, and the latency and batch-size histograms, after a few stores, a dump
and its acknowledgements. ``--port 0`` takes a free port; the first line printed names the
address. SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from libmsilo import MsiloSettings, Silo, SipRequest
from libmsilo.prometheus import instrument

OWNER = "sip:alice@example.com"


def message(n: int) -> SipRequest:
    """A MESSAGE for alice."""
    headers = [
        ("Via", f"SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bKmetrics{n}"),
        ("From", "<sip:bob@example.com>;tag=m1"),
        ("To", f"<{OWNER}>"),
        ("Call-ID", f"metrics{n}@192.0.2.4"),
        ("CSeq", "1 MESSAGE"),
        ("Content-Type", "text/plain"),
    ]
    return SipRequest("MESSAGE", OWNER, headers, b"hello %d" % n)


def serve(db_url: str, port: int) -> tuple[Silo, int, WSGIServer]:
    """A Silo with some traffic behind, its metrics served on 127.0.0.1:``port`` (0: any free
    port); the Silo, the port and the HTTP server (``.shutdown()`` stops it)."""
    silo = Silo.from_settings(MsiloSettings(db_url=db_url, timezone="UTC"))
    registry = CollectorRegistry()
    instrument(silo, registry, watch=[OWNER])
    silo.store_many([message(n) for n in range(5)])
    for msg in silo.dump(owner=OWNER)[:3]:
        if msg.mid is not None:
            silo.on_reply(msg.mid, 200, token=msg.lease_token)
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    return silo, server.server_port, server


def main(argv: Sequence[str]) -> None:
    """Serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("db_url", nargs="?", default="sqlite:///metrics-demo.db")
    parser.add_argument("--port", type=int, default=9464, help="HTTP port (0: a free one)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    silo, port, server = serve(args.db_url, args.port)
    print(f"metrics on http://127.0.0.1:{port}/metrics (SIGTERM or Ctrl-C stops)", flush=True)
    stop.wait()
    server.shutdown()
    silo.close()


if __name__ == "__main__":
    main(sys.argv[1:])
