"""SIP store rate through Kamailio: its own msilo module against libmsilo (app_python3), on SQLite
and PostgreSQL, driven by sipp on loopback.

Each run starts Debian's Kamailio with a fresh ``silo`` table made from Kamailio's own schema
files, sends ``--messages`` MESSAGEs for offline users with sipp (at most ``--concurrency`` open
at a time, no retransmissions, bounded by ``--timeout``), checks that every one was answered 202
and stored, and reports messages per second of wall time. The figures replace the section between
the markers in ``benchmarks/RESULTS.md``::

    python benchmarks/kamailio_store_rate.py [--messages 2000] [--repeat 3] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from libmsilo import MsiloSettings, Silo  # noqa: E402
from tests.kamailio_harness import (  # noqa: E402
    EXAMPLE,
    SCENARIOS,
    Kamailio,
    Net,
    embedded_env,
)

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
START, END = "<!-- kamailio-store-rate:start -->", "<!-- kamailio-store-rate:end -->"
KAMAILIO_SQL = Path("/usr/share/kamailio")
NATIVE_CFG = ROOT / "tests" / "kamailio" / "msilo_native.cfg"
USERS = 50  # the MESSAGEs go to this many offline users in turn


@dataclass(frozen=True)
class Backend:
    name: str
    libmsilo_url: str  # SQLAlchemy URL
    kamailio_url: str  # Kamailio's db_url
    defines: dict[str, str]
    # Kamailio's db_sqlite sets no busy timeout: a second worker's insert fails with "database
    # is locked" and msilo loses the message, so SQLite runs with one SIP worker on both sides
    # (msilo's clean timer still collides now and then).
    children: int = 2


def _sqlite(workdir: Path) -> Backend:
    db = workdir / "silo.db"
    with sqlite3.connect(db) as conn:
        for part in ("standard", "msilo"):
            conn.executescript((KAMAILIO_SQL / "db_sqlite" / f"{part}-create.sql").read_text())
    return Backend("SQLite", f"sqlite:///{db}", f"sqlite:///{db}", {}, children=1)


def _postgres(url: str) -> Backend:
    import psycopg

    plain = re.sub(r"^postgresql\+psycopg://", "postgresql://", url)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS silo, version, msilo_version")
        for part in ("standard", "msilo"):
            conn.execute((KAMAILIO_SQL / "postgres" / f"{part}-create.sql").read_text())
    kamailio_url = re.sub(r"^postgresql(\+psycopg)?://", "postgres://", url)
    return Backend("PostgreSQL", url, kamailio_url, {"WITH_POSTGRES": "1"})


def _rows(backend: Backend) -> int:
    """Rows in the silo table (plain SQL: Kamailio's table may not be migrated)."""
    engine = sa.create_engine(backend.libmsilo_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM silo")).scalar_one())
    finally:
        engine.dispose()


def _kamailio(which: str, backend: Backend, workdir: Path, net: Net) -> Kamailio:
    env = dict(os.environ)
    if which == "msilo":
        defines = {"DB_URL": f'"{backend.kamailio_url}"', "NO_NOTICE": "1", **backend.defines}
        return Kamailio(net, workdir, NATIVE_CFG, env, defines=defines, children=backend.children)
    settings = MsiloSettings(db_url=backend.libmsilo_url, profile="kamailio")
    with Silo.from_settings(settings, create_schema=False) as silo:
        silo.driver.migrate()  # libmsilo's columns on Kamailio's table
    env.update(
        **embedded_env(),
        MSILO_DB_URL=backend.libmsilo_url,
        MSILO_PROFILE="kamailio",
    )
    defines = {"KEMI_SCRIPT": f'"{EXAMPLE / "msilo_kemi.py"}"'}
    cfg = EXAMPLE / "kamailio.cfg"
    return Kamailio(net, workdir, cfg, env, defines=defines, children=backend.children)


def _users_csv(workdir: Path) -> Path:
    path = workdir / "users.csv"
    path.write_text("SEQUENTIAL\n" + "".join(f"u{i}\n" for i in range(USERS)))
    return path


def run_once(
    which: str, backend: Backend, args: argparse.Namespace, workdir: Path
) -> tuple[float, int]:
    """Messages per second for one Kamailio run, and how many messages were not stored (a
    store the server refused is answered 500 and lost)."""
    net = Net()  # host loopback, free ports: PostgreSQL listens there
    kamailio = _kamailio(which, backend, workdir, net)
    kamailio.start()
    try:
        argv = ["sipp", kamailio.address, "-sf", str(SCENARIOS / "message_bench.xml")]
        argv += ["-inf", str(_users_csv(workdir)), "-i", "127.0.0.1", "-p", str(net.port())]
        argv += ["-key", "domain", kamailio.address, "-key", "text", "benchmark message"]
        argv += ["-m", str(args.messages), "-l", str(args.concurrency), "-r", "100000"]
        argv += ["-nr", "-nostdin", "-timeout", f"{args.timeout}s", "-timeout_error"]
        argv += ["-default_behaviors", "-bye"]  # a failed call ends there, without a BYE
        argv += ["-trace_err", "-error_file", str(workdir / "sipp-errors.log")]
        argv += ["-mp", str(20000 + net.port() % 5000 * 8)]
        started = time.perf_counter()
        out = subprocess.run(argv, capture_output=True, timeout=args.timeout + 30)
        elapsed = time.perf_counter() - started
    finally:
        kamailio.stop()
    if out.returncode not in (0, 1):  # 1: some calls failed (counted below)
        raise RuntimeError(f"sipp failed ({out.returncode}): {out.stderr[-500:]!r}")
    stored = _rows(backend)
    if stored > args.messages:
        raise RuntimeError(f"{which}: {stored} rows for {args.messages} messages")
    return args.messages / elapsed, args.messages - stored


def _versions() -> str:
    kam = subprocess.run(["kamailio", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    sipp = subprocess.run(["sipp", "-v"], capture_output=True, text=True).stdout.strip()
    return f"{kam.strip()}; {sipp.splitlines()[0].strip() if sipp else 'sipp'}"


def _embedded() -> str:
    out = subprocess.run(
        ["/usr/bin/python3", "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
    )
    return f"CPython {out.stdout.strip()}"


Results = dict[tuple[str, str], list[tuple[float, int]]]

METHOD = """\
sipp sends MESSAGEs for 50 offline users over UDP on 127.0.0.1 (no retransmissions, at most
{concurrency} open at once); Kamailio stores each and answers 202; no offline notice. SQLite runs
with one SIP worker on both sides: Kamailio's db_sqlite sets no busy timeout, so with two workers
many inserts fail with `database is locked` and msilo answers 500 (the message is lost); its clean
timer still collides with the one worker now and then. PostgreSQL runs with two workers.
Kamailio's msilo runs from a native config (`tests/kamailio/msilo_native.cfg`), libmsilo from
`examples/kamailio/` (app_python3, `kamailio` profile), both on a fresh `silo` table from
Kamailio's own schema files (migrated for libmsilo). Figures: messages per second of wall time,
median of the runs (min-max); `lost`: messages answered 500 instead of stored, over all runs (the
row count is checked after each run)."""


def _section(results: Results, args: argparse.Namespace) -> str:
    load = os.getloadavg()[0]
    lines = [
        START,
        "## Kamailio: MESSAGE store rate through the SIP server (sipp)",
        "",
        f"`python benchmarks/kamailio_store_rate.py --messages {args.messages} "
        f"--repeat {args.repeat} --concurrency {args.concurrency}`, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {load:.1f} (shared machine, "
        f"2 cores). {_versions()}; libmsilo in Kamailio's embedded {_embedded()}.",
        "",
        METHOD.format(concurrency=args.concurrency),
        "",
        "| backend | Kamailio msilo | Kamailio + libmsilo | libmsilo / msilo |",
        "| --- | --- | --- | --- |",
    ]
    for backend in dict.fromkeys(b for b, _ in results):
        cells = []
        medians = []
        for which in ("msilo", "libmsilo"):
            rates = [rate for rate, _ in results[(backend, which)]]
            lost = sum(n for _, n in results[(backend, which)])
            medians.append(statistics.median(rates))
            cell = f"{medians[-1]:,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"
            cells.append(cell + (f", lost {lost}" if lost else ""))
        lines.append(f"| {backend} | {cells[0]} | {cells[1]} | {medians[1] / medians[0]:.2f} |")
    lines += ["", END]
    return "\n".join(lines)


def write_section(text: str) -> None:
    """Replace the section between the markers in RESULTS.md (append it the first time)."""
    old = RESULTS.read_text()
    if START in old and END in old:
        head, rest = old.split(START, 1)
        new = head + text + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    RESULTS.write_text(new)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--timeout", type=int, default=120, help="seconds per sipp run")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("MSILO_TEST_PG_URL", "postgresql+psycopg://root@127.0.0.1/test"),
        help="PostgreSQL database whose silo and version tables are dropped and recreated",
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not edit RESULTS.md")
    parser.add_argument("--workdir", help="keep the logs here instead of a temporary folder")
    args = parser.parse_args()
    results: Results = {}
    with tempfile.TemporaryDirectory(prefix="msilo-kam-bench-") as scratch:
        tmp = args.workdir or scratch
        for round_ in range(args.repeat):
            for which in ("msilo", "libmsilo"):
                for make in ("sqlite", "postgres"):
                    workdir = Path(tmp) / f"{which}-{make}-{round_}"
                    workdir.mkdir()
                    backend = _sqlite(workdir) if make == "sqlite" else _postgres(args.pg_url)
                    rate, lost = run_once(which, backend, args, workdir)
                    results.setdefault((backend.name, which), []).append((rate, lost))
                    print(
                        f"{backend.name:10} {which:8} {round_ + 1}: {rate:6.0f} msg/s, lost {lost}"
                    )
    text = _section(results, args)
    print(text)
    if not args.no_write:
        write_section(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
