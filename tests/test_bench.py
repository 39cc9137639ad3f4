"""``msilo bench``: the raw baselines do the same work as libmsilo, and a tiny run reports."""

from __future__ import annotations

import json
import runpy
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from libmsilo import Silo
from libmsilo.bench import BenchConfig, BenchError, run_bench
from libmsilo.bench import workload as wl
from libmsilo.bench.concurrency import (
    ConcurrencyReport,
    ConcurrencyResult,
    PathResult,
    judge,
)
from libmsilo.bench.concurrency_report import END, START, render_section, write_section
from libmsilo.bench.raw import RawStore, open_raw
from libmsilo.bench.runner import _LibSide, redact
from libmsilo.cli import app
from libmsilo.testing.conformance import unique_table
from tests.backends import backend_url

UTC = ZoneInfo("UTC")


@pytest.fixture(params=["sqlite", "postgresql", "mysql", "redis", "mongomock"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    kind = request.param
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'bench.db'}"
    if kind == "mongomock":
        return "mongomock://localhost/msilo_bench_test"
    return backend_url(kind)


@pytest.fixture
def sides(url: str) -> Iterator[tuple[_LibSide, RawStore]]:
    lib = _LibSide(url, unique_table("msilo_bl_"), UTC)
    raw = open_raw(url, unique_table("msilo_br_"), UTC)
    raw.create()
    try:
        yield lib, raw
    finally:
        lib.driver.drop_schema()
        lib.loader.close()
        lib.silo.close()
        raw.drop()
        raw.close()


def _same(lib_msgs: list, raw_msgs: list) -> None:  # type: ignore[type-arg]
    assert [m.mid is not None for m in lib_msgs] == [True] * len(lib_msgs)
    got = [(m.ruri, m.from_uri, m.to_uri, m.headers, m.body) for m in lib_msgs]
    want = [(m.ruri, m.from_uri, m.to_uri, m.headers, m.body) for m in raw_msgs]
    assert got == want


def test_raw_baseline_does_what_libmsilo_does(sides: tuple[_LibSide, RawStore]) -> None:
    lib, raw = sides
    now = 1_900_000_000  # fixed: the same rows, times and prefixes on both sides
    # The dump reads this clock; the raw side is handed the same ``now``.
    silo = Silo(lib.driver, lib.settings, clock=lambda: float(now))
    silo.tick(now - 10)  # the first tick always purges: done before there is anything to purge
    for load in (lib.loader.load, raw.bulk_load):
        load(wl.other_rows(30, now))
        load(wl.queue_rows(4, now))
        load(wl.expired_rows(3, now))
        load(wl.reminder_rows(2, now))

    dumped = silo.dump(owner=f"sip:{wl.TARGET}@{wl.DOMAIN}")
    raw_dumped = raw.dump(wl.TARGET, wl.DOMAIN, now, now + 30, "tok")
    assert len(dumped) == 4
    _same(dumped, raw_dumped)
    assert dumped[0].body.startswith(b"[Offline message - ")
    for msg, raw_msg in zip(dumped, raw_dumped, strict=True):
        silo.on_reply(msg.mid or 0, 200)
        raw.reply_ok(raw_msg.mid)
    assert silo.dump(owner=f"sip:{wl.TARGET}@{wl.DOMAIN}") == []
    assert raw.dump(wl.TARGET, wl.DOMAIN, now, now + 30, "tok2") == []

    due = silo.tick(now=float(now))
    raw_due = raw.sweep(now, now + 30, "tok3")
    assert len(due) == 2
    _same(due, raw_due)
    assert raw.sweep(now, now + 30, "tok4") == []  # leased: not swept twice

    assert silo.purge_expired(now) == 3
    assert raw.purge(now) == 3
    assert raw.purge(now) == 0


def test_raw_store_returns_increasing_ids(sides: tuple[_LibSide, RawStore]) -> None:
    _, raw = sides
    rows = wl.store_rows(3, 2)
    mids = [raw.store(row, 1_900_000_000) for row in rows]
    assert mids == sorted(mids) and len(set(mids)) == 3
    got = raw.dump("store0", wl.DOMAIN, 1_900_000_001, 1_900_000_031, "t")
    assert [m.mid for m in got] == [mids[0], mids[2]]


def test_bench_command_writes_json_and_png(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--db-url",
            f"sqlite:///{db}",
            *("--messages", "20", "--owners", "3", "--queued", "10", "--reminders", "5"),
            *("--scale", "100", "--scale", "300", "--repeat", "1"),
            *("--json", str(out_json), "--plot", str(out_png)),
        ],
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert "ratio" in result.stdout
    data = json.loads(out_json.read_text())
    assert data["machine"]["nproc"] >= 1 and data["machine"]["cpu"]
    (backend,) = data["backends"]
    assert backend["backend"] == "sqlite" and backend["client"] == "sqlite3"
    ops = [(r["op"], r["table_rows"], r["items"]) for r in backend["results"]]
    assert ops == [
        ("store", 0, 20),
        ("dump", 100, 10),
        ("sweep", 100, 5),
        ("purge", 100, 1),
        ("dump", 300, 10),
        ("sweep", 300, 5),
        ("purge", 300, 3),
    ]
    for r in backend["results"]:
        assert r["ratio"] > 0 and r["libmsilo_median_s"] > 0 and r["raw_median_s"] > 0
        assert r["goal"] == (1.5 if r["op"] in ("store", "dump") else None)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with sqlite3.connect(db) as conn:  # every benchmark table was dropped
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    assert [n for n in names if n.startswith("msilo_bench")] == []


def test_bench_reports_a_backend_without_baseline_and_goes_on(tmp_path: Path) -> None:
    config = BenchConfig(
        urls=("memory://", f"sqlite:///{tmp_path / 'b.db'}"),
        messages=2,
        owners=1,
        queued=1,
        reminders=0,
        scales=(0,),
        repeat=1,
    )
    report = run_bench(config)
    ((name, error),) = report.failures
    assert name == "memory (--db-url #1)" and "no raw baseline" in error
    assert [b.backend for b in report.backends] == ["sqlite"]


def test_bench_command_reports_failed_backends_on_one_line() -> None:
    args = ["bench", "--db-url", "gopher://x/", "--db-url", "memory://", "--repeat", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert "gopher (--db-url #1)" in line and "memory (--db-url #2)" in line
    assert "no raw baseline" in line


@pytest.mark.parametrize(
    "values", [{"urls": ()}, {"urls": ("x://",), "repeat": 0}, {"urls": ("x://",), "scales": ()}]
)
def test_config_validation(values: dict[str, object]) -> None:
    with pytest.raises(BenchError):
        BenchConfig(**values)  # type: ignore[arg-type]


def test_redact_is_deprecated_for_mask_url() -> None:
    with pytest.warns(DeprecationWarning, match="mask_url"):
        assert redact("postgresql://u:secret@h:5/db") == "postgresql://u:***@h:5/db"


def test_the_cli_imports_the_benchmark_only_for_its_command() -> None:
    code = (
        "import sys, libmsilo.cli; "
        "print(sorted(m for m in sys.modules if m.startswith(('libmsilo.bench', 'matplotlib'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


_SECTION = "# Results\n\nprose before\n\n{start}\nold figures\n{end}\n\nprose after\n"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "redis"])
def test_bench_concurrency_measures_every_path(kind: str, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'c.db'}" if kind == "sqlite" else backend_url(kind)
    out_json, out_png, out_md = tmp_path / "c.json", tmp_path / "c.png", tmp_path / "R.md"
    out_md.write_text(_SECTION.format(start=START, end=END))
    args = ["bench", "--db-url", db_url, "--concurrency", "4", "--per-producer", "5"]
    args += ["--rate", "200", "--duration", "0.2", "--single-stores", "6", "--single-rounds", "3"]
    args += ["--json", str(out_json), "--plot", str(out_png), "--results-md", str(out_md)]
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "stores/s" in result.stdout and "p99" in result.stdout and "Silo/raw" in result.stdout
    assert "≥" in result.stdout and "at 64 producers" in result.stdout  # stated, not judged
    data = json.loads(out_json.read_text())
    assert data["producers"] == 4 and data["single_rounds"] == 3 and data["elapsed_s"] > 0
    assert len(data["load"]) == 2 and data["machine"]["nproc"] >= 1
    (backend,) = data["results"]
    assert backend["backend"] == kind and backend["server"] and "url" not in backend
    assert backend["latency_error"] is None and backend["latency_p99_ms"] > 0
    paths = {p["path"]: p for p in backend["paths"]}
    # SQLite has no native asyncio driver: its asyncio path is the worker threads already.
    aio = ["asyncio"] if kind == "sqlite" else ["asyncio-native", "asyncio-threads"]
    assert list(paths) == ["group", "unbatched", *aio, "raw", "single", "raw-single"]
    goal = {"sqlite": "≤ 1.5x raw", "postgresql": "≤ 1.25x raw", "redis": "≤ 1.25x raw"}[kind]
    for p in paths.values():
        assert p["error"] is None, p
        assert p["store_rate"] > 0 and p["ack_rate"] > 0
        single = p["path"] in ("single", "raw-single")
        assert p["producers"] == (1 if single else 4)
        assert p["stores"] == (6 if single else 20)  # per round
        assert len(p["store_s"]) == len(p["ack_s"]) == (3 if single else 1)
        if p["path"] in ("unbatched", "raw", "raw-single"):  # references: no goal
            assert (p["goal"], p["met"], p["store_ratio"]) == ("", None, None)
        elif p["path"] == "single":
            assert p["store_ratio"] > 0 and p["ack_ratio"] > 0
            assert p["goal"] == goal and isinstance(p["met"], bool)
        else:  # the rate goal is for 64 producers: stated, not judged with 4
            assert p["goal"].endswith("/s at 64 producers") and p["met"] is None
    if kind == "postgresql":  # the p99 goal is at 2,000 stores/s: stated, not judged at 200
        assert backend["latency_goal"] == "p99 ≤ 10 ms at 2,000/s"
    assert backend["latency_met"] is None
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = out_md.read_text()
    assert md.startswith("# Results\n\nprose before\n\n" + START)
    assert md.endswith(END + "\n\nprose after\n") and "old figures" not in md
    assert "![stores/s and acks/s per backend and path](c.png)" in md
    assert "--json c.json --plot c.png --results-md R.md" in md
    name = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "redis": "Redis"}[kind]
    for p in paths:
        assert f"| {name} | {p} |" in md


def test_results_md_goes_with_concurrency(tmp_path: Path) -> None:
    md = tmp_path / "R.md"
    result = CliRunner().invoke(app, ["bench", "--results-md", str(md)])
    assert result.exit_code == 2 and "--concurrency" in result.output
    assert not md.exists()


def _report(**rates: tuple[float, float]) -> ConcurrencyReport:
    """A report of PostgreSQL with 64 producers: the given (stores/s, acks/s) per path."""
    report = ConcurrencyReport(64, 10, 5, 2000.0, 1.0, 10, 3, load=[0.5, 0.7])
    result = ConcurrencyResult("postgresql", 64, server="PostgreSQL 15")
    for path, (store, ack) in rates.items():
        result.paths.append(PathResult(path, 64, 640, store, ack, [0.1], [0.1]))
    result.paths.append(PathResult("single", 1, 10, 900, 900, [0.01] * 3, [0.01] * 3, 1.2, 1.3))
    result.paths.append(PathResult("raw-single", 1, 10, 1000, 1100, [0.01] * 3, [0.01] * 3))
    result.latency_rate, result.latency_p50_ms, result.latency_p99_ms = 2000.0, 0.5, 9.5
    report.results.append(result)
    return report


def test_concurrency_goals_are_judged_per_row() -> None:
    report = _report(
        group=(12_500, 20_000),  # met: both at least the goal
        unbatched=(4_000, 6_000),  # a reference: no goal
        **{"asyncio-native": (15_000, 11_000)},  # acks below the goal: missed
    )
    (result,) = report.results
    result.paths.append(PathResult("asyncio-threads", 64, error="StorageUnavailable: down"))
    judge(result)
    verdicts = {p.path: (p.goal, p.met) for p in result.paths}
    assert verdicts == {
        "group": ("≥ 12,000/s", True),
        "unbatched": ("", None),
        "asyncio-native": ("≥ 12,000/s", False),
        "asyncio-threads": ("≥ 12,000/s", False),  # failed: not met
        "single": ("≤ 1.25x raw", False),  # the ack ratio 1.3 is above 1.25
        "raw-single": ("", None),
    }
    assert (result.latency_goal, result.latency_met) == ("p99 ≤ 10 ms at 2,000/s", True)
    result.latency_p99_ms = 10.5
    judge(result)
    assert result.latency_met is False


def test_concurrency_json_round_trip_renders_the_same_section(tmp_path: Path) -> None:
    report = _report(group=(9_000, 20_000))
    judge(report.results[0])
    again = ConcurrencyReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again == report
    text = render_section(report, chart="concurrency.png")
    assert text == render_section(again, chart="concurrency.png")
    assert "| PostgreSQL | group | 64 | 9,000 | 20,000 |  | ≥ 12,000/s | **no** |" in text
    assert "| PostgreSQL | single | 1 | 900 | 900 | 1.20 / 1.30 | ≤ 1.25x raw | **no** |" in text
    assert "| PostgreSQL | 2,000 | 0.5 | 9.5 | p99 ≤ 10 ms at 2,000/s | yes |" in text
    md = tmp_path / "R.md"
    md.write_text("intro\n")  # no markers yet: the section is appended
    write_section(md, text)
    write_section(md, text)  # and then replaced, not appended again
    assert md.read_text() == "intro\n\n" + text + "\n"


def test_concurrency_md_script_rewrites_the_section_from_json(tmp_path: Path) -> None:
    report = _report(group=(9_000, 20_000))
    judge(report.results[0])
    data, md = tmp_path / "concurrency.json", tmp_path / "R.md"
    data.write_text(json.dumps(report.to_dict()))
    md.write_text(_SECTION.format(start=START, end=END))
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "concurrency_md.py"
    main = runpy.run_path(str(script))["main"]
    assert main([str(data), "--results", str(md), "--plot", str(tmp_path / "c.png")]) == 0
    section = render_section(report, chart="c.png", json_name="concurrency.json", md_name="R.md")
    assert md.read_text() == _SECTION.format(start=START, end=END).replace(
        f"{START}\nold figures\n{END}", section
    )
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
