"""The concurrency benchmark's outputs: a chart (PNG) and the RESULTS.md section, both drawn from
a :class:`~.concurrency.ConcurrencyReport` (a run, or its JSON read back)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from .concurrency import (
    SINGLE_CHUNK,
    SINGLE_OWNERS,
    ConcurrencyReport,
    ConcurrencyResult,
    PathResult,
    goals_for,
)
from .report import require_matplotlib

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "END",
    "START",
    "backend_name",
    "render_section",
    "write_png",
    "write_results_md",
    "write_section",
]

_NONE = "\u2013"  # an en dash: no figure

START, END = "<!-- concurrency:start -->", "<!-- concurrency:end -->"

_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "redis": "Redis", "mongodb": "MongoDB"}
_ENV = {"sqlite": "SQLITE_URL", "postgresql": "POSTGRESQL_URL", "redis": "REDIS_URL"}

_GOAL = "#d62728"  # the goals' dashed lines

# One colour per path in every panel: dark for libmsilo's batched paths, light for references.
_COLOURS = {
    "group": "#1f77b4",
    "unbatched": "#aec7e8",
    "asyncio": "#bcbd22",
    "asyncio-native": "#2ca02c",
    "asyncio-threads": "#98df8a",
    "raw": "#7f7f7f",
    "single": "#ff7f0e",
    "raw-single": "#ffbb78",
}


def backend_name(result: ConcurrencyResult) -> str:
    """How reports name the backend: SQLite, PostgreSQL, MariaDB or MySQL, Redis, ..."""
    if result.backend == "mysql":
        return "MariaDB" if "mariadb" in result.server.lower() else "MySQL"
    return _NAMES.get(result.backend, result.backend)


def _k(rate: float) -> str:
    return f"{rate / 1000:.1f}k" if rate >= 1000 else f"{rate:.0f}"


def _colour(path: str) -> str:
    return _COLOURS.get(path, "#c49c94")


def _note(ax: Axes, x: float, y: float, text: str) -> None:
    """``text`` just above the bar at ``x`` of height ``y``."""
    ax.annotate(text, (x, y), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7)


def _rate_panel(ax: Axes, report: ConcurrencyReport, acks: bool) -> None:
    """Grouped bars, one group per backend, one bar per path, the goal as a dashed line."""
    from matplotlib.ticker import FuncFormatter

    width, gap = 0.8, 1.2
    start, ticks = 0.0, []
    for result in report.results:
        done = [p for p in result.paths if p.error is None]
        for k, p in enumerate(done):
            value = p.ack_rate if acks else p.store_rate
            ax.bar(start + k, value, width, color=_colour(p.path), label=p.path)
            _note(ax, start + k, value, _k(value))
        goal = goals_for(result.backend).rate
        end = start + max(len(done), 1) - 1
        name = backend_name(result)
        if goal is not None:
            ax.hlines(goal, start - 0.5, end + 0.5, colors=_GOAL, linestyles="--", label="goal")
            name += f"\n(goal {goal:,.0f}/s)"
        ticks.append(((start + end) / 2, name))
        start = end + 1 + gap
    ax.set_xticks([t for t, _ in ticks], [name for _, name in ticks])
    ax.set_ylabel("acks/s (200 OK deletes)" if acks else "stores/s")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.margins(y=0.12)
    ax.grid(axis="y", alpha=0.3)


Pair = tuple[str, float, float, float | None]  # backend, two values, its goal


def _pair_panel(
    ax: Axes,
    rows: list[Pair],
    labels: tuple[str, str],
    colours: tuple[str, str],
    *,
    log: bool = False,
) -> None:
    """Two bars per backend (e.g. store and ack) and the backend's goal as a dashed line;
    ``log``: a logarithmic scale."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    for k, (_, first, second, goal) in enumerate(rows):
        for off, value, colour, label in zip(
            (-0.2, 0.2), (first, second), colours, labels, strict=True
        ):
            ax.bar(k + off, value, 0.4, color=colour, label=label if k == 0 else None)
            _note(ax, k + off, value, f"{value:.2f}" if value < 10 else f"{value:.0f}")
        if goal is not None:
            ax.hlines(goal, k - 0.45, k + 0.45, colors=_GOAL, linestyles="--")
    ax.set_xticks(range(len(rows)), [name for name, *_ in rows])
    tops = [v for _, a, b, goal in rows for v in (a, b, goal) if v is not None and v > 0]
    if tops:  # room above the bars and goals for the legend (and below them on a log scale)
        ax.set_ylim(top=max(tops) * (3.0 if log else 1.3))
        if log:
            ax.set_ylim(bottom=min(tops) / 2)
    if rows:
        ax.legend(fontsize="small", loc="upper left", ncols=2)


def _ratio_panel(ax: Axes, results: list[ConcurrencyResult]) -> None:
    rows = []
    for r in results:
        p = _path(r, "single")
        if p is not None and p.store_ratio is not None and p.ack_ratio is not None:
            rows.append((backend_name(r), p.store_ratio, p.ack_ratio, r.goals.ratio))
    _pair_panel(ax, rows, ("store", "ack"), (_COLOURS["single"], _COLOURS["raw-single"]))
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.set_ylabel("Silo time / raw time")
    ax.set_title("one caller: median of the rounds' ratios (goal dashed)", fontsize=10)


def _latency_panel(ax: Axes, results: list[ConcurrencyResult]) -> None:
    shown = [r for r in results if r.latency_error is None and r.latency_rate > 0]
    rows = [(backend_name(r), r.latency_p50_ms, r.latency_p99_ms, r.goals.p99_ms) for r in shown]
    _pair_panel(ax, rows, ("p50", "p99"), ("#9edae5", "#17becf"), log=True)
    ax.set_ylabel("store latency, ms (log)")
    offered = ", ".join(f"{x:,.0f}" for x in sorted({r.latency_rate for r in shown}))
    ax.set_title(f"latency at {offered} stores/s offered (goal dashed)", fontsize=10)


def _path(result: ConcurrencyResult, name: str) -> PathResult | None:
    return next((p for p in result.paths if p.path == name and p.error is None), None)


def write_png(report: ConcurrencyReport, path: str | os.PathLike[str]) -> None:
    """Stores/s and acks/s per backend and path with each backend's goal; below, the single
    caller's ratio to the raw baseline and the store latency at the offered load."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 12), layout="constrained")
    grid = fig.add_gridspec(3, 2, height_ratios=(1, 1, 0.8))
    stores = fig.add_subplot(grid[0, :])
    acks = fig.add_subplot(grid[1, :])
    _rate_panel(stores, report, acks=False)
    _rate_panel(acks, report, acks=True)
    stores.set_title(
        f"{report.producers} producers in one process ({report.per_producer} stores each; "
        "single / raw-single: 1 caller); goal dashed",
        fontsize=11,
    )
    # One legend for both rate panels, paths in report order, right of them.
    handles = dict(zip(*reversed(stores.get_legend_handles_labels()), strict=True))
    order = [n for n in (*_COLOURS, "goal") if n in handles]
    stores.legend([handles[n] for n in order], order, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    _ratio_panel(fig.add_subplot(grid[2, 0]), report.results)
    _latency_panel(fig.add_subplot(grid[2, 1]), report.results)
    when = report.date.replace("T", " ")[:16]
    load = "-".join(f"{x:.1f}" for x in report.load)
    fig.suptitle(f"msilo bench --concurrency {report.producers}: {when} UTC, load {load}")
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- RESULTS.md


def _command(report: ConcurrencyReport, json: str, png: str, md: str) -> str:
    urls = []
    for r in report.results:
        env = _ENV.get(r.backend) or f"{backend_name(r).upper()}_URL"
        urls.append(f'--db-url "${env}"')
    return "\n".join(
        [
            f"msilo bench --concurrency {report.producers} --per-producer {report.per_producer} "
            f"--owners {report.owners} \\",
            f"  --rate {report.rate:g} --duration {report.duration:g} "
            f"--single-stores {report.single_stores} --single-rounds {report.single_rounds} \\",
            f"  --json {json} --plot {png} --results-md {md} \\",
            "  " + " ".join(urls),
        ]
    )


_METHOD = """\
Each path stores {count:,} MESSAGEs ({producers} producers x {per_producer}, {owners} owners,
no quota), then dumps them (not timed) and answers 200 OK to each with the same producers;
rates are messages per second of wall time:

- `group`: `Silo` in {producers} threads with group commit (the default);
- `unbatched`: the same with `group_commit=False`, one commit or round trip per call, with a
  pool of at most 10 connections;
- `asyncio-native`: `AsyncSilo` with {producers} tasks on the native asyncio driver
  (PostgreSQL: psycopg's `AsyncConnection`, Redis: `redis.asyncio`); `asyncio-threads`: the
  same on the synchronous driver in worker threads (`native=False`), so native and threads
  compare in one run; `asyncio`: SQLite and MariaDB, which have only the worker threads;
- `raw`: the hand-written baseline of `msilo bench` (bare client, no SIP parsing, no quota, no
  lease columns to fill) in {producers} threads, one connection each;
- `single` / `raw-single`: one caller through `Silo` and through the baseline: {rounds} rounds
  of {single:,} stores (to {single_owners} owners) and then their acks, the two sides taking
  turns every {chunk} stores (acks) with alternating first turns, so both meet the same
  disturbances of the shared machine (this narrowed the spread of the rounds' ratios severalfold
  against whole-round turns), after a short unmeasured round; rates from each side's median
  round. **Silo / raw** (store / ack) = the median over rounds of the round's Silo time / raw
  time, as in the ratio tables above. The ack here is the 200 OK's delete alone (the dump's claim is
  not timed; the ratio tables above time the whole dump).

Goals (issue 16, this 2-core machine, 64 producers): the stores/s below on `group` and the
asyncio paths, with acks at least as fast; one caller within 1.25x of the raw baseline
(SQLite 1.5x) for store and ack; p99 store latency at most 10 ms at 2,000 stores/s offered on
PostgreSQL. `unbatched` and `raw` are references without a goal; a goal stated for other
settings than the run's is not judged (empty **met**).

The latency table offers {rate:,.0f} stores/s for {duration:g} s spread over {producers}
producer threads (open loop: each store is due at a fixed time and its latency runs from then,
so queueing counts), group commit on."""


def _wrap(text: str) -> str:
    return textwrap.fill(text, 100, break_long_words=False, break_on_hyphens=False)


def _met(met: bool | None) -> str:
    return "" if met is None else ("yes" if met else "**no**")


def _rates(p: PathResult) -> tuple[str, str]:
    if p.error is not None:
        return "failed", p.error.replace("|", "/")
    return f"{p.store_rate:,.0f}", f"{p.ack_rate:,.0f}"


def _ratio(p: PathResult) -> str:
    if p.store_ratio is None or p.ack_ratio is None:
        return ""
    return f"{p.store_ratio:.2f} / {p.ack_ratio:.2f}"


def _summary_row(r: ConcurrencyResult) -> str:
    goals = r.goals
    cells = [backend_name(r), f"{goals.rate:,.0f}" if goals.rate else _NONE]
    cells.append(f"~{goals.c_module:,.0f}" if goals.c_module else _NONE)
    for name in ("group", "unbatched", "asyncio-threads", "asyncio"):
        p = _path(r, name) or (_path(r, "asyncio-native") if name == "asyncio" else None)
        cells.append(f"{p.store_rate:,.0f}" if p else _NONE)
    single = _path(r, "single")
    cells.append(f"{_ratio(single)} (≤ {goals.ratio:g})" if single and goals.ratio else _NONE)
    verdicts = [(p.path, p.met) for p in r.paths] + [("latency", r.latency_met)]
    met = [path for path, ok in verdicts if ok]
    missed = [path for path, ok in verdicts if ok is False]
    verdict = ", ".join(met) if met else "none"
    cells.append(verdict + (f"; missed: {', '.join(missed)}" if missed else ""))
    return "| " + " | ".join(cells) + " |"


def render_section(
    report: ConcurrencyReport,
    *,
    chart: str | None = None,
    json_name: str = "concurrency.json",
    md_name: str = "RESULTS.md",
) -> str:
    """The RESULTS.md section of ``report``, between the markers: the command, the machine,
    the method, the chart (``chart``: its path relative to the file) and the tables."""
    when = report.date.replace("T", " ")[:16]
    load = report.load + [report.load[0]] * (2 - len(report.load)) if report.load else [-1, -1]
    m = report.machine
    clients = ", ".join(f"{k} {v}" for k, v in report.clients.items())
    servers = "; ".join(r.server for r in report.results)
    count = report.producers * report.per_producer
    lines = [
        START,
        f"## Concurrency: {report.producers} producers in one process (issue 16)",
        "",
        "```sh",
        _command(report, json_name, chart or "concurrency.png", md_name),
        "```",
        "",
        _wrap(
            f"{when} UTC, one run of {report.elapsed_s:.0f} s; load average {load[0]:.1f} at "
            f"the start, {load[-1]:.1f} at the end ({m.get('nproc')} cores, `{m.get('cpu')}`, "
            f"shared with other engineers' test runs). Python {m.get('python')}; {clients}. "
            f"{servers}. The database settings are those of the storage benchmark above."
        ),
        "",
        _METHOD.format(
            count=count,
            producers=report.producers,
            per_producer=report.per_producer,
            owners=report.owners,
            rounds=report.single_rounds,
            single=report.single_stores,
            single_owners=min(report.owners, SINGLE_OWNERS),
            chunk=SINGLE_CHUNK,
            rate=report.rate,
            duration=report.duration,
        ),
        "",
    ]
    if chart:
        lines += [f"![stores/s and acks/s per backend and path]({chart})", ""]
    lines += [
        "| backend | path | producers | stores/s | acks/s | Silo / raw | goal | met |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in report.results:
        for p in r.paths:
            cells = [backend_name(r), p.path, str(p.producers), *_rates(p), _ratio(p), p.goal]
            lines.append("| " + " | ".join([*cells, _met(p.met)]) + " |")
    lines += [
        "",
        "| backend | offered stores/s | p50 ms | p99 ms | goal | met |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for r in report.results:
        if r.latency_error is not None:
            lines.append(f"| {backend_name(r)} | failed | | | {r.latency_goal} | |")
            continue
        lines.append(
            f"| {backend_name(r)} | {r.latency_rate:,.0f} | {r.latency_p50_ms:.1f} "
            f"| {r.latency_p99_ms:.1f} | {r.latency_goal} | {_met(r.latency_met)} |"
        )
    lines += [
        "",
        "Against the goals (stores/s with "
        f"{report.producers} producers; the C figures are the issue's):",
        "",
        "| backend | goal stores/s | Kamailio msilo (C) | `group` threads | unbatched "
        "| `asyncio-threads` | `asyncio` (native where there is one) | one caller: Silo / raw "
        "(store / ack) | met |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *(_summary_row(r) for r in report.results),
        "",
        END,
    ]
    return "\n".join(lines)


def write_section(
    path: str | os.PathLike[str], text: str, markers: tuple[str, str] = (START, END)
) -> None:
    """Replace the section between ``markers`` in ``path`` (append it if there is none)."""
    start, end = markers
    target = Path(path)
    old = target.read_text(encoding="utf-8") if target.exists() else ""
    if start in old and end in old:
        head, rest = old.split(start, 1)
        new = head + text + rest.split(end, 1)[1]
    else:
        new = (old.rstrip("\n") + "\n\n" if old else "") + text + "\n"
    target.write_text(new, encoding="utf-8")


def write_results_md(
    report: ConcurrencyReport,
    results_md: str | os.PathLike[str],
    *,
    json_path: str | os.PathLike[str] | None = None,
    chart: str | os.PathLike[str] | None = None,
) -> None:
    """Rewrite the concurrency section of ``results_md`` from ``report``, naming the JSON file
    and the chart (if any) by their paths relative to it."""
    here = Path(results_md).parent

    def rel(path: str | os.PathLike[str]) -> str:
        return Path(os.path.relpath(path, here)).as_posix()

    text = render_section(
        report,
        chart=rel(chart) if chart is not None else None,
        json_name=rel(json_path) if json_path is not None else "concurrency.json",
        md_name=Path(results_md).name,
    )
    write_section(results_md, text)
