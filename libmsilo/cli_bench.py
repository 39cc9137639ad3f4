"""``msilo bench``: the storage benchmark with a progress bar, result tables, JSON and a chart.

Only the command's options are defined here: the benchmark itself (:mod:`libmsilo.bench`, its
raw baselines and matplotlib, the ``bench`` extra) is imported when the command runs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from .bench import BenchReport, Measurement
    from .bench.concurrency import ConcurrencyResult

__all__ = ["bench", "concurrency_table", "results_tables"]


def __getattr__(name: str) -> Any:
    if name == "redact":  # deprecated, kept for callers of the former re-export
        from .bench.runner import redact

        return redact
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _fmt_rate(value: float) -> str:
    return f"{value:,.0f}" if value < 1e12 else "-"


def _per_message(m: Measurement) -> str:
    return f"{m.lib_median / m.items * 1e6:.1f} ({min(m.lib_s) / m.items * 1e6:.1f})"


def results_tables(report: BenchReport) -> list[Table]:
    """The backends, the ratio table (every measurement) and the scaling table."""
    backends = Table(title="backends (raw = the same work on the bare client)")
    for name in ("backend", "raw client", "server"):
        backends.add_column(name)
    ratios = Table(
        title="libmsilo vs raw: ratio = median over rounds of libmsilo time / raw time; "
        "best = fastest round / fastest round"
    )
    for name in ("backend", "op", "rows", "msgs", "libmsilo/s", "raw/s", "ratio", "best", "goal"):
        ratios.add_column(name, justify="left" if name in ("backend", "op") else "right")
    scaling = Table(
        title="scaling: libmsilo µs per message, median (fastest) round, by other owners' rows"
    )
    scaling.add_column("backend")
    scaling.add_column("op")
    sizes = sorted(set(report.config.scales))
    for size in sizes:
        scaling.add_column(f"{size:,}", justify="right")
    for b in report.backends:
        label = f"{b.backend}*" if b.note else b.backend
        backends.add_row(label, b.client, b.server)
        for m in b.measurements:
            goal = b.goal if m.op in ("store", "dump") else None
            verdict = "" if goal is None else f"{goal} " + ("ok" if m.ratio <= goal else "MISS")
            ratios.add_row(
                label,
                m.op,
                f"{m.table_rows:,}" if not m.op.startswith("store") else "-",
                f"{m.items:,}",
                _fmt_rate(m.rate(m.lib_median)),
                _fmt_rate(m.rate(m.raw_median)),
                f"{m.ratio:.2f}",
                f"{m.best_ratio:.2f}",
                verdict,
            )
        for op in ("dump", "sweep", "purge"):
            per = {m.table_rows: _per_message(m) for m in b.measurements if m.op == op and m.items}
            if per:
                scaling.add_row(label, op, *(per.get(s, "-") for s in sizes))
    return [backends, ratios, scaling]


def bench(
    db_url: Annotated[
        list[str] | None,
        typer.Option(
            "--db-url",
            help=(
                "Backend to measure (repeatable; default: a temporary SQLite file). "
                "mongomock:// is an in-process fake and slow: give it small sizes."
            ),
            show_default=False,
        ),
    ] = None,
    messages: Annotated[int, typer.Option("--messages", min=1, help="Stores per round.")] = 2000,
    owners: Annotated[int, typer.Option("--owners", min=1, help="Owners the stores go to.")] = 100,
    queued: Annotated[
        int, typer.Option("--queued", min=1, help="Messages queued for the dumped owner.")
    ] = 1000,
    reminders: Annotated[
        int, typer.Option("--reminders", min=0, help="Due reminders per sweep.")
    ] = 1000,
    scale: Annotated[
        list[int] | None,
        typer.Option(
            "--scale",
            min=0,
            help="Other owners' rows in the table (repeatable; default 10000; try 1000000).",
            show_default=False,
        ),
    ] = None,
    repeat: Annotated[int, typer.Option("--repeat", min=1, help="Rounds per side.")] = 3,
    redis_wait: Annotated[
        int | None,
        typer.Option(
            "--redis-wait",
            min=0,
            help=(
                "Redis: also measure stores that wait for this many replicas "
                "(redis_wait_replicas; 0 measures the WAIT round trip alone)."
            ),
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            min=1,
            help=(
                "Instead: N producers in one process (threads with and without group commit, "
                "asyncio tasks, the raw baseline), stores/s and acks/s, and the store latency "
                "at --rate stores/s offered."
            ),
        ),
    ] = None,
    per_producer: Annotated[
        int, typer.Option("--per-producer", min=1, help="--concurrency: stores per producer.")
    ] = 200,
    rate: Annotated[
        float, typer.Option("--rate", min=1, help="--concurrency: stores/s offered.")
    ] = 2000.0,
    duration: Annotated[
        float, typer.Option("--duration", min=0.1, max=60, help="--concurrency: seconds offered.")
    ] = 2.0,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a bar chart PNG.")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the results as JSON.")
    ] = None,
) -> None:
    """Measure libmsilo against hand-written code on the bare database clients."""
    from .bench import BenchConfig, BenchError, run_bench, total_steps, write_png
    from .bench.report import require_matplotlib

    if plot is not None:
        require_matplotlib()  # before the run, not after it
    console = Console(highlight=False)
    if concurrency is not None:
        options = {"per_producer": per_producer, "rate": rate, "duration": duration}
        _concurrency(console, db_url, concurrency, options, json_out)
        return
    with tempfile.TemporaryDirectory(prefix="msilo-bench-") as tmp:
        urls = tuple(db_url or [f"sqlite:///{Path(tmp) / 'bench.db'}"])
        config = BenchConfig(
            urls=urls,
            messages=messages,
            owners=owners,
            queued=queued,
            reminders=reminders,
            scales=tuple(scale or [10_000]),
            repeat=repeat,
            redis_wait=redis_wait,
        )
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("starting", total=total_steps(config))

            def step(what: str) -> None:
                progress.update(task, advance=1, description=what)

            report = run_bench(config, step)
    if report.backends:
        for table in results_tables(report):
            console.print(table)
    if any(b.note for b in report.backends):
        console.print("*: " + "; ".join(sorted({b.note for b in report.backends if b.note})))
    if json_out is not None:
        report.write_json(json_out)
        console.print(f"wrote {json_out}")
    if plot is not None and report.backends:
        write_png(report, plot)
        console.print(f"wrote {plot}")
    if report.failures:
        raise BenchError("bench: " + "; ".join(f"{name}: {err}" for name, err in report.failures))


def concurrency_table(results: list[ConcurrencyResult]) -> Table:
    """Stores/s and acks/s of every path, and the store latency at the offered load."""
    table = Table(title="N producers in one process: stores/s, acks/s (one run)")
    for name in ("backend", "path", "producers", "stores/s", "acks/s", "note"):
        table.add_column(name, justify="left" if name in ("backend", "path", "note") else "right")
    for r in results:
        for p in r.paths:
            rates = ("-", "-") if p.error else (f"{p.store_rate:,.0f}", f"{p.ack_rate:,.0f}")
            table.add_row(r.backend, p.path, str(p.producers), *rates, p.error or "")
        if r.latency_error:
            table.add_row(r.backend, "latency", str(r.producers), "-", "-", r.latency_error)
        else:
            note = f"p50 {r.latency_p50_ms:.1f} ms, p99 {r.latency_p99_ms:.1f} ms"
            table.add_row(
                r.backend, "latency", str(r.producers), f"{r.latency_rate:,.0f} offered", "", note
            )
    return table


def _concurrency(
    console: Console,
    db_url: list[str] | None,
    producers: int,
    options: dict[str, Any],
    json_out: Path | None,
) -> None:
    import json

    from .bench.concurrency import ConcurrencyConfig, run_concurrency
    from .masking import mask_url

    results = []
    with tempfile.TemporaryDirectory(prefix="msilo-bench-") as tmp:
        for url in db_url or [f"sqlite:///{Path(tmp) / 'bench.db'}"]:
            config = ConcurrencyConfig(url, producers=producers, **options)
            label = mask_url(url)

            def step(what: str, label: str = label) -> None:
                console.print(f"{label}: measuring {what}")

            results.append(run_concurrency(config, step))
    console.print(concurrency_table(results))
    if json_out is not None:
        json_out.write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n")
        console.print(f"wrote {json_out}")
