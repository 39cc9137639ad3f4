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
    from .bench.concurrency import ConcurrencyReport

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
    single_stores: Annotated[
        int,
        typer.Option(
            "--single-stores", min=1, help="--concurrency: one caller's stores per round."
        ),
    ] = 200,
    single_rounds: Annotated[
        int,
        typer.Option(
            "--single-rounds", min=1, help="--concurrency: one caller's rounds (median ratio)."
        ),
    ] = 9,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a bar chart PNG.")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the results as JSON.")
    ] = None,
    results_md: Annotated[
        Path | None,
        typer.Option(
            "--results-md",
            help=(
                "--concurrency: rewrite the section between the concurrency markers of this "
                "Markdown file (benchmarks/RESULTS.md) from this run."
            ),
        ),
    ] = None,
) -> None:
    """Measure libmsilo against hand-written code on the bare database clients."""
    from .bench import BenchConfig, BenchError, run_bench, total_steps, write_png
    from .bench.report import require_matplotlib

    if plot is not None:
        require_matplotlib()  # before the run, not after it
    console = Console(highlight=False)
    if concurrency is not None:
        options = {
            "per_producer": per_producer,
            "owners": owners,
            "rate": rate,
            "duration": duration,
            "single_stores": single_stores,
            "single_rounds": single_rounds,
        }
        run = _concurrency(console, db_url, concurrency, options)
        _concurrency_outputs(console, run, json_out, plot, results_md)
        return
    if results_md is not None:
        raise typer.BadParameter("--results-md goes with --concurrency", param_hint="--results-md")
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


def _verdict(goal: str, met: bool | None) -> str:
    return goal if met is None else f"{goal}: " + ("met" if met else "MISSED")


def concurrency_table(report: ConcurrencyReport) -> Table:
    """Stores/s and acks/s of every path, the single caller's ratio to the raw baseline, the
    store latency at the offered load, and each row's goal and whether it is met."""
    table = Table(title="N producers in one process: stores/s, acks/s (one run)")
    columns = ("backend", "path", "N", "stores/s", "acks/s", "Silo/raw", "goal", "note")
    for name in columns:
        left = name in ("backend", "path", "goal", "note")
        table.add_column(name, justify="left" if left else "right")
    for r in report.results:
        for p in r.paths:
            rates = ("-", "-") if p.error else (f"{p.store_rate:,.0f}", f"{p.ack_rate:,.0f}")
            ratio = "" if p.store_ratio is None else f"{p.store_ratio:.2f}/{p.ack_ratio or 0:.2f}"
            verdict = _verdict(p.goal, p.met)
            table.add_row(
                r.backend, p.path, str(p.producers), *rates, ratio, verdict, p.error or ""
            )
        if r.latency_error:
            table.add_row(r.backend, "latency", str(r.producers), "-", "-", "", "", r.latency_error)
        else:
            note = f"p50 {r.latency_p50_ms:.1f} ms, p99 {r.latency_p99_ms:.1f} ms"
            offered = f"{r.latency_rate:,.0f} offered"
            verdict = _verdict(r.latency_goal, r.latency_met)
            table.add_row(r.backend, "latency", str(r.producers), offered, "", "", verdict, note)
    return table


def _concurrency(
    console: Console, db_url: list[str] | None, producers: int, options: dict[str, Any]
) -> ConcurrencyReport:
    import time

    from .bench.concurrency import ConcurrencyConfig, ConcurrencyReport, run_concurrency
    from .masking import mask_url

    started = time.perf_counter()
    report: ConcurrencyReport | None = None
    with tempfile.TemporaryDirectory(prefix="msilo-bench-") as tmp:
        for url in db_url or [f"sqlite:///{Path(tmp) / 'bench.db'}"]:
            config = ConcurrencyConfig(url, producers=producers, **options)
            if report is None:
                report = ConcurrencyReport.for_config(config)
            label = mask_url(url)

            def step(what: str, label: str = label) -> None:
                elapsed = time.perf_counter() - started
                console.print(f"{elapsed:5.1f} s  {label}: measuring {what}")

            report.results.append(run_concurrency(config, step))
    assert report is not None
    report.finish(started)
    return report


def _concurrency_outputs(
    console: Console,
    report: ConcurrencyReport,
    json_out: Path | None,
    plot: Path | None,
    results_md: Path | None,
) -> None:
    """The table, then the JSON, the chart and the RESULTS.md section asked for."""
    import json

    from .bench.concurrency_report import write_png, write_results_md

    console.print(concurrency_table(report))
    console.print(f"run took {report.elapsed_s:.0f} s")
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {json_out}")
    if plot is not None:
        write_png(report, plot)
        console.print(f"wrote {plot}")
    if results_md is not None:
        write_results_md(report, results_md, json_path=json_out, chart=plot)
        console.print(f"wrote the concurrency section of {results_md}")
