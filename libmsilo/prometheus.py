"""Prometheus metrics of a ``Silo`` (needs ``prometheus_client``: ``pip install
'libmsilo[metrics]'``).

:func:`instrument` registers, on the given registry:

- ``msilo_<counter>_total`` for each :class:`~libmsilo.Stats` counter (stored, dumped, failed,
  dropped messages and reminders), read from the ``Silo`` at each scrape;
- ``msilo_leased_messages``: deliveries sent by this ``Silo`` and not yet answered;
- ``msilo_store_messages`` and ``msilo_store_leased``: the whole store's unexpired messages and
  those under a live lease (every process's), from :meth:`Silo.totals
  <libmsilo.silo.Silo.totals>`, read at most once per ``totals_interval`` seconds (scrapes in
  between get the cached values); absent when the driver cannot count them (Redis has no
  ``msilo_store_leased``) or the store cannot be reached;
- ``msilo_owner_messages{owner}``: the unexpired messages of the owners in ``watch`` (optional:
  each scrape then reads the store once per owner);
- histograms ``msilo_store_seconds``, ``msilo_dump_seconds``, ``msilo_ack_seconds`` and
  ``msilo_batch_size{kind}`` (rows per driver batch of group commit and the batch APIs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "libmsilo.prometheus needs prometheus_client: pip install 'libmsilo[metrics]'"
    ) from exc

from .errors import MsiloError
from .metrics import Metrics
from .records import StoreTotals
from .silo import Stats

if TYPE_CHECKING:
    from .silo import Silo

__all__ = ["PrometheusMetrics", "SiloCollector", "instrument"]

log = logging.getLogger("libmsilo")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class PrometheusMetrics(Metrics):
    """Latency and batch-size histograms on ``registry``."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self._latency = {
            op: Histogram(
                f"msilo_{op}_seconds",
                f"Duration of one msilo {op} call",
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            )
            for op in ("store", "dump", "ack")
        }
        self._batch = Histogram(
            "msilo_batch_size",
            "Rows per driver batch (group commit and the batch APIs)",
            ["kind"],
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )

    def latency(self, operation: str, seconds: float) -> None:
        """Observe one call's duration."""
        histogram = self._latency.get(operation)
        if histogram is not None:
            histogram.observe(seconds)

    def batch(self, kind: str, size: int) -> None:
        """Observe one batch's size."""
        self._batch.labels(kind).observe(size)


class SiloCollector(Collector):
    """The counters and gauges of one ``Silo``, read at each scrape; the store gauges at most
    once per ``totals_interval`` seconds (None: none)."""

    def __init__(
        self,
        silo: Silo,
        watch: Sequence[str] = (),
        *,
        totals_interval: float | None = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._silo = silo
        self._watch = tuple(watch)
        self._interval = totals_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._totals: StoreTotals | None = None
        self._totals_at: float | None = None

    def _store_totals(self) -> StoreTotals | None:
        """The store's totals, read again once the cached ones are ``totals_interval`` old; a
        storage error is logged and leaves the gauges out until the next reading."""
        if self._interval is None:
            return None
        with self._lock:  # one reading at a time, whatever the number of scrapers
            now = self._clock()
            if self._totals_at is None or now - self._totals_at >= self._interval:
                self._totals_at = now
                try:
                    self._totals = self._silo.totals()
                except MsiloError as exc:
                    log.warning("metrics: the store totals could not be read: %s", exc)
                    self._totals = None
            return self._totals

    def _store_gauges(self) -> Iterator[Metric]:
        current = self._store_totals()
        if current is None:
            return
        yield GaugeMetricFamily(
            "msilo_store_messages",
            "Unexpired messages in the whole store (every owner, reminders included)",
            value=current.stored,
        )
        if current.leased is not None:
            yield GaugeMetricFamily(
                "msilo_store_leased",
                "Stored messages under a live delivery lease (every process's)",
                value=current.leased,
            )

    def describe(self) -> Iterator[Metric]:
        """The metric families without reading the store (the registry asks when registering
        the collector)."""
        yield from _counters(Stats())
        names = ["msilo_leased_messages", "msilo_store_messages", "msilo_store_leased"]
        names += ["msilo_owner_messages"] if self._watch else []
        for name in names:
            yield GaugeMetricFamily(name, name)

    def collect(self) -> Iterator[Metric]:
        """The current values."""
        yield from _counters(self._silo.stats)
        yield GaugeMetricFamily(
            "msilo_leased_messages",
            "Deliveries sent by this Silo and not yet answered",
            value=self._silo.leased,
        )
        yield from self._store_gauges()
        if self._watch:
            stored = GaugeMetricFamily(
                "msilo_owner_messages", "Unexpired stored messages per owner", labels=["owner"]
            )
            for aor in self._watch:
                stored.add_metric([aor], self._silo.count(aor))
            yield stored


def _counters(stats: Stats) -> Iterator[Metric]:
    for f in fields(Stats):
        value = getattr(stats, f.name)
        yield CounterMetricFamily(f"msilo_{f.name}", f"msilo {f.name.replace('_', ' ')}", value)


def instrument(
    silo: Silo,
    registry: CollectorRegistry = REGISTRY,
    *,
    watch: Iterable[str] = (),
    totals_interval: float | None = 15.0,
) -> PrometheusMetrics:
    """Report ``silo``'s counters, gauges and histograms on ``registry``; the store gauges
    are read at most once per ``totals_interval`` seconds (None: not at all)."""
    metrics = PrometheusMetrics(registry)
    registry.register(SiloCollector(silo, list(watch), totals_interval=totals_interval))
    silo.metrics = metrics
    return metrics
