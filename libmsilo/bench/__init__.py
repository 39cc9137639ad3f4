"""``msilo bench``: libmsilo against hand-written baselines on the same backends, in one run.

    report = run_bench(BenchConfig(urls=("sqlite:///bench.db",)))
    report.write_json("bench.json"); write_png(report, "bench.png")

The baselines (:mod:`.raw_sql`, :mod:`.raw_redis`, :mod:`.raw_mongo`) use the bare clients
(sqlite3, psycopg, PyMySQL, redis-py, pymongo/mongomock) on tables with libmsilo's own DDL.
"""

from __future__ import annotations

from ..errors import MsiloError
from .report import BenchReport, machine_info, write_png
from .runner import (
    BackendResult,
    BenchConfig,
    BenchError,
    Measurement,
    Progress,
    failure_label,
    run_backend,
    total_steps,
)

__all__ = [
    "BackendResult",
    "BenchConfig",
    "BenchError",
    "BenchReport",
    "Measurement",
    "Progress",
    "machine_info",
    "run_bench",
    "total_steps",
    "write_png",
]


def run_bench(config: BenchConfig, progress: Progress | None = None) -> BenchReport:
    """Measure every backend of ``config`` in turn; ``progress`` is called once per step.

    A backend that fails (unreachable, no baseline) is listed in ``report.failures`` and the
    others are still measured.
    """
    report = BenchReport(config)
    for number, url in enumerate(config.urls, 1):
        try:
            report.backends.append(run_backend(url, config, progress or (lambda _: None)))
        except MsiloError as exc:
            report.failures.append((failure_label(url, number), f"{type(exc).__name__}: {exc}"))
    return report
