"""The benchmark report: the machine, the numbers as JSON, and a bar chart as PNG."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import SettingsError
from .runner import BackendResult, BenchConfig, Measurement

__all__ = ["BenchReport", "machine_info", "write_png"]

# The operations whose ratio the goals apply to.
GOAL_OPS = ("store", "dump")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_info() -> dict[str, Any]:
    """nproc, memory, CPU model, OS and Python of this machine."""
    return {
        "nproc": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "cpu": _cpu_model(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def _measurement(m: Measurement, goal: float | None) -> dict[str, Any]:
    return {
        "op": m.op,
        "items": m.items,
        "table_rows": m.table_rows,
        "libmsilo_s": m.lib_s,
        "raw_s": m.raw_s,
        "libmsilo_median_s": m.lib_median,
        "raw_median_s": m.raw_median,
        "libmsilo_per_s": m.rate(m.lib_median),
        "raw_per_s": m.rate(m.raw_median),
        "ratio": m.ratio,
        "best_ratio": m.best_ratio,
        "goal": goal if m.op in GOAL_OPS else None,
    }


@dataclass(slots=True)
class BenchReport:
    """Everything one ``msilo bench`` run measured."""

    config: BenchConfig
    backends: list[BackendResult] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (backend label, error)
    date: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    machine: dict[str, Any] = field(default_factory=machine_info)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        from .. import __version__

        cfg = self.config
        return {
            "libmsilo": __version__,
            "date": self.date,
            "machine": self.machine,
            "config": {
                "messages": cfg.messages,
                "owners": cfg.owners,
                "queued": cfg.queued,
                "reminders": cfg.reminders,
                "scales": list(cfg.scales),
                "expired_share": cfg.expired_share,
                "repeat": cfg.repeat,
            },
            "backends": [
                {
                    "backend": b.backend,
                    "client": b.client,
                    "server": b.server,
                    "note": b.note,
                    "results": [_measurement(m, b.goal) for m in b.measurements],
                }
                for b in self.backends
            ],
            "failures": [{"backend": name, "error": error} for name, error in self.failures],
        }

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


def _label(b: BackendResult) -> str:
    return f"{b.backend}*" if b.note else b.backend


def require_matplotlib() -> None:
    """Raise :class:`SettingsError` naming the extra when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        raise SettingsError("the chart needs matplotlib: pip install 'libmsilo[bench]'")


def write_png(report: BenchReport, path: str | os.PathLike[str]) -> None:
    """A chart: ratio libmsilo / raw per backend and operation (smallest table), and how dump
    and purge time grow with the table."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), layout="constrained")
    ops = ("store", "dump", "sweep", "purge")
    width = 0.8 / max(1, len(report.backends))
    smallest = min(report.config.scales)
    for i, b in enumerate(report.backends):
        ratios = []
        for op in ops:
            found = [m for m in b.measurements if m.op == op and m.table_rows in (0, smallest)]
            ratios.append(found[0].ratio if found else 0.0)
        xs = [k + (i - (len(report.backends) - 1) / 2) * width for k in range(len(ops))]
        left.bar(xs, ratios, width, label=_label(b), color=f"C{i}")
    left.axhline(1.0, color="black", linewidth=0.8)
    left.axhline(1.25, color="grey", linestyle="--", linewidth=0.8, label="goal 1.25")
    left.axhline(1.5, color="grey", linestyle=":", linewidth=0.8, label="goal 1.5 (SQLite)")
    left.set_xticks(range(len(ops)), ops)
    left.set_ylabel("libmsilo time / raw time")
    left.set_title(f"libmsilo vs raw driver ({smallest:,} other rows)")
    left.legend(fontsize="small")

    for i, b in enumerate(report.backends):  # the same colour per backend in both panels
        for op, style in (("dump", "-o"), ("purge", "--s")):
            points = sorted(
                (m.table_rows, m.lib_median / max(1, m.items)) for m in b.measurements if m.op == op
            )
            if points:
                right.plot(
                    [p[0] for p in points],
                    [p[1] * 1e6 for p in points],
                    style,
                    color=f"C{i}",
                    label=f"{_label(b)} {op}",
                )
    right.set_xscale("symlog", linthresh=1000)
    right.set_yscale("log")
    right.set_xlabel("other owners' rows in the table")
    right.set_ylabel("libmsilo µs per message")
    right.set_title("scaling: dump (1 owner) and purge (1 % expired)")
    right.legend(fontsize="small")
    if any(b.note for b in report.backends):
        fig.text(0.01, 0.01, "* " + "; ".join({b.note for b in report.backends if b.note}))
    fig.savefig(path, dpi=110)
    plt.close(fig)
