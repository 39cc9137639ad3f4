"""``msilo bench``: the raw baselines do the same work as libmsilo, and a tiny run reports."""

from __future__ import annotations

import json
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


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "redis"])
def test_bench_concurrency_measures_every_path(kind: str, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'c.db'}" if kind == "sqlite" else backend_url(kind)
    out_json = tmp_path / "c.json"
    args = ["bench", "--db-url", db_url, "--concurrency", "4", "--per-producer", "5"]
    args += ["--rate", "200", "--duration", "0.2", "--json", str(out_json)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "stores/s" in result.stdout and "p99" in result.stdout
    ((backend,),) = [json.loads(out_json.read_text())]
    assert backend["latency_error"] is None and backend["latency_p99_ms"] > 0
    paths = {p["path"]: p for p in backend["paths"]}
    aio = "asyncio" if kind == "sqlite" else "asyncio-native"
    assert set(paths) == {"group", "unbatched", aio, "raw", "single", "raw-single"}
    for p in paths.values():
        assert p["error"] is None, p
        assert p["stores"] == (5 if p["producers"] == 1 else 20)
        assert p["store_rate"] > 0 and p["ack_rate"] > 0
