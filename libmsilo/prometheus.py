"""Prometheus metrics of a ``Silo`` (needs ``prometheus_client``: ``pip install
'libmsilo[metrics]'``).

:func:`instrument` registers, on the given registry:

- ``msilo_<counter>_total`` for each :class:`~libmsilo.Stats` counter (stored, dumped, failed,
  dropped messages and reminders), read from the ``Silo`` at each scrape;
- ``msilo_leased_messages``: deliveries sent by this ``Silo`` and not yet answered;
- ``msilo_stored_messages``: the unexpired messages of the owners in ``watch`` (optional: each
  scrape then reads the store once per owner);
- histograms ``msilo_store_seconds``, ``msilo_dump_seconds``, ``msilo_ack_seconds`` and
  ``msilo_batch_size{kind}`` (rows per driver batch of group commit and the batch APIs).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .metrics import Metrics
from .silo import Stats

if TYPE_CHECKING:
    from .silo import Silo

__all__ = ["PrometheusMetrics", "SiloCollector", "instrument"]

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
    """The counters and gauges of one ``Silo``, read at each scrape."""

    def __init__(self, silo: Silo, watch: Sequence[str] = ()) -> None:
        self._silo = silo
        self._watch = tuple(watch)

    def collect(self) -> Iterator[Metric]:
        """The current values."""
        stats = self._silo.stats
        for f in fields(Stats):
            counter = CounterMetricFamily(
                f"msilo_{f.name}", f"msilo {f.name.replace('_', ' ')}", value=getattr(stats, f.name)
            )
            yield counter
        yield GaugeMetricFamily(
            "msilo_leased_messages",
            "Deliveries sent by this Silo and not yet answered",
            value=self._silo.leased,
        )
        if self._watch:
            stored = GaugeMetricFamily(
                "msilo_stored_messages", "Unexpired stored messages", labels=["owner"]
            )
            for aor in self._watch:
                stored.add_metric([aor], self._silo.count(aor))
            yield stored


def instrument(
    silo: Silo, registry: CollectorRegistry = REGISTRY, *, watch: Iterable[str] = ()
) -> PrometheusMetrics:
    """Report ``silo``'s counters, gauges and histograms on ``registry``."""
    metrics = PrometheusMetrics(registry)
    registry.register(SiloCollector(silo, list(watch)))
    silo.metrics = metrics
    return metrics
