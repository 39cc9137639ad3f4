"""Observations a ``Silo`` reports while it works: call latencies and batch sizes.

``Silo.metrics`` is None by default (nothing is measured). A :class:`Metrics` subclass receives
each observation; :mod:`libmsilo.prometheus` is one for Prometheus (the ``metrics`` extra).
"""

from __future__ import annotations

__all__ = ["Metrics"]


class Metrics:
    """Receives a ``Silo``'s observations; the default ignores them."""

    def latency(self, operation: str, seconds: float) -> None:
        """One ``store``, ``dump`` or ``ack`` (``on_reply``) call took ``seconds``."""

    def batch(self, kind: str, size: int) -> None:
        """One driver batch of ``size`` items was flushed (``store``, ``ack``, ``release``)."""
