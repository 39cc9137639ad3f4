"""SIP store rate through Kamailio: its own msilo module against libmsilo (app_python3), on SQLite
and PostgreSQL, driven by sipp on loopback.

Each run starts Debian's Kamailio with a fresh ``silo`` table made from Kamailio's own schema files
and sends ``--messages`` MESSAGEs for offline users with sipp as fast as Kamailio answers (``-r``
far above any reachable rate, at most ``--concurrency`` open at a time, no retransmissions, each
reply awaited at most ``--recv-timeout`` ms, the whole run bounded by ``--timeout``). It counts the
202s, the 500s and the replies that never came (sipp's statistics), reads every stored row back
(each message's number is in its body: one missing, doubled or stored for another user is reported)
and measures messages per second of sipp's wall time and the CPU time Kamailio's processes (and
sipp) spent per message. The servers run alternately, in a different order each round, with the
same workers on the same database; a third one, the example's KEMI routing answering 202 without
storing, shows the floor under libmsilo. The figures replace the section between the markers in
``benchmarks/RESULTS.md``::

    python benchmarks/kamailio_store_rate.py [--messages 5000] [--repeat 3] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from libmsilo import MsiloSettings, Silo  # noqa: E402
from libmsilo.bench.concurrency_report import write_section as replace_section  # noqa: E402
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
TEXT = "benchmark message"  # the scenario appends the call number: "benchmark message 17"
# Kamailio's msilo (C); Kamailio + libmsilo (app_python3); the same KEMI routing answering 202
# without storing anything: the floor under libmsilo (Kamailio, app_python3, the route's calls).
SERVERS = ("msilo", "libmsilo", "kemi")
TITLES = {
    "msilo": "Kamailio msilo (C)",
    "libmsilo": "Kamailio + libmsilo",
    "kemi": "KEMI routing, no store",
}
REPLY_ONLY = ROOT / "tests" / "kamailio" / "kemi_reply_only.py"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Backend:
    name: str
    libmsilo_url: str  # SQLAlchemy URL
    kamailio_url: str  # Kamailio's db_url
    defines: dict[str, str]
    children: int


@dataclass
class Run:
    """One sipp run against one Kamailio."""

    rate: float  # messages per second of sipp's wall time
    cpu_ms: float  # CPU time of Kamailio's processes per message, milliseconds
    sipp_cpu_ms: float  # sipp's CPU time per message, milliseconds
    refused: int  # answered 500: not stored, and the sender knows
    unanswered: int  # no final reply within --recv-timeout, or any other failure
    missing: int  # messages without a row
    wrong: int  # rows stored twice, for another user, or for no message sent

    @property
    def lost(self) -> int:
        """Messages answered 202 but not stored, and wrong rows: broken promises (a lower
        bound should an unanswered message have been stored)."""
        return max(0, self.missing - self.refused - self.unanswered) + self.wrong


def _sqlite(workdir: Path, children: int) -> Backend:
    db = workdir / "silo.db"
    with sqlite3.connect(db) as conn:
        # WAL for both servers (libmsilo's driver sets it on every connection; Kamailio's
        # db_sqlite keeps whatever the file has): each commit appends to the log and syncs it
        # (synchronous=FULL, SQLite's default, on both sides).
        conn.execute("PRAGMA journal_mode=WAL")
        for part in ("standard", "msilo"):
            conn.executescript((KAMAILIO_SQL / "db_sqlite" / f"{part}-create.sql").read_text())
    url = f"sqlite:///{db}"
    return Backend("SQLite", url, url, {}, children)


def _postgres(url: str, children: int) -> Backend:
    import psycopg

    plain = re.sub(r"^postgresql\+psycopg://", "postgresql://", url)
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS silo, version, msilo_version")
        for part in ("standard", "msilo"):
            conn.execute((KAMAILIO_SQL / "postgres" / f"{part}-create.sql").read_text())
    kamailio_url = re.sub(r"^postgresql(\+psycopg)?://", "postgres://", url)
    return Backend("PostgreSQL", url, kamailio_url, {"WITH_POSTGRES": "1"}, children)


def _check_rows(backend: Backend, messages: int) -> tuple[int, int]:
    """Read every stored row back: (messages missing, rows that are not one sent message stored
    once for its user). Message n goes to user ``u{(n - 1) % USERS}`` with ``TEXT n`` as body."""
    engine = sa.create_engine(backend.libmsilo_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT username, body FROM silo")).all()
    finally:
        engine.dispose()
    good: set[int] = set()
    wrong = 0
    for username, body in rows:
        text = bytes(body).decode() if isinstance(body, bytes | memoryview) else str(body)
        number = text.strip().removeprefix(TEXT).strip()
        n = int(number) if number.isdigit() else 0
        if 1 <= n <= messages and username == f"u{(n - 1) % USERS}" and n not in good:
            good.add(n)
        else:
            wrong += 1
    return messages - len(good), wrong


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
    script = REPLY_ONLY if which == "kemi" else EXAMPLE / "msilo_kemi.py"
    defines = {"KEMI_SCRIPT": f'"{script}"'}
    cfg = EXAMPLE / "kamailio.cfg"
    return Kamailio(net, workdir, cfg, env, defines=defines, children=backend.children)


def _users_csv(workdir: Path) -> Path:
    path = workdir / "users.csv"
    path.write_text("SEQUENTIAL\n" + "".join(f"u{i}\n" for i in range(USERS)))
    return path


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and every process below it (Kamailio's workers)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    tree = {pid}
    grew = True
    while grew:
        below = {child for child, parent in parents.items() if parent in tree} - tree
        grew = bool(below)
        tree |= below
    return sum(times.get(p, 0.0) for p in tree)


def _children_cpu() -> float:
    """User + system CPU time of this process's waited-for children (sipp)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _sipp_stats(path: Path) -> dict[str, str]:
    """The last row of sipp's statistics file (cumulative counters end in ``(C)``)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    return {k: v for k, v in rows[-1].items() if k} if rows else {}


def _count(stats: dict[str, str], name: str) -> int:
    return int(stats.get(f"{name}(C)", "0") or 0)


def run_once(which: str, backend: Backend, args: argparse.Namespace, workdir: Path) -> Run:
    """One sipp run against a fresh Kamailio on ``backend``."""
    net = Net()  # host loopback, free ports: PostgreSQL listens there
    kamailio = _kamailio(which, backend, workdir, net)
    kamailio.start()
    assert kamailio.proc is not None
    try:
        stats = workdir / "sipp-stats.csv"
        argv = ["sipp", kamailio.address, "-sf", str(SCENARIOS / "message_bench.xml")]
        argv += ["-inf", str(_users_csv(workdir)), "-i", "127.0.0.1", "-p", str(net.port())]
        argv += ["-key", "domain", kamailio.address, "-key", "text", TEXT]
        # Offer far more than any server answers; -l bounds the MESSAGEs open at once.
        argv += ["-m", str(args.messages), "-l", str(args.concurrency), "-r", "100000"]
        argv += ["-nr", "-recv_timeout", str(args.recv_timeout), "-nostdin"]
        argv += ["-timeout", f"{args.timeout}s", "-timeout_error"]
        argv += ["-default_behaviors", "abortunexp"]  # a 500 ends its MESSAGE (no BYE)
        argv += ["-trace_stat", "-stf", str(stats), "-fd", "3600"]
        argv += ["-trace_err", "-error_file", str(workdir / "sipp-errors.log")]
        argv += ["-mp", str(20000 + net.port() % 5000 * 8)]
        cpu_before = _cpu_seconds(kamailio.proc.pid)
        sipp_before = _children_cpu()
        started = time.perf_counter()
        out = subprocess.run(net.prefix() + argv, capture_output=True, timeout=args.timeout + 30)
        elapsed = time.perf_counter() - started
        cpu = _cpu_seconds(kamailio.proc.pid) - cpu_before
        sipp_cpu = _children_cpu() - sipp_before
    finally:
        kamailio.stop()
    (workdir / "sipp.out").write_bytes(out.stdout + out.stderr)
    if out.returncode not in (0, 1):  # 1: some calls failed (counted below)
        raise RuntimeError(f"sipp failed ({out.returncode}): {out.stderr[-500:]!r}")
    sipp = _sipp_stats(stats)
    accepted, failed = _count(sipp, "SuccessfulCall"), _count(sipp, "FailedCall")
    if accepted + failed != args.messages:
        raise RuntimeError(f"sipp counted {accepted} + {failed} calls for {args.messages}")
    refused = _count(sipp, "FailedUnexpectedMessage")  # the scenario expects only a 202
    missing, wrong = _check_rows(backend, args.messages) if which != "kemi" else (0, 0)
    return Run(
        rate=args.messages / elapsed,
        cpu_ms=cpu * 1000 / args.messages,
        sipp_cpu_ms=sipp_cpu * 1000 / args.messages,
        refused=refused,
        unanswered=failed - refused,
        missing=missing,
        wrong=wrong,
    )


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


Results = dict[tuple[str, str], list[Run]]

METHOD = """\
sipp sends {messages:,} MESSAGEs per run for 50 offline users over UDP on 127.0.0.1, offered far
faster than any server answers (`-r 100000`) with at most {concurrency} open at once (`-l`), no
retransmissions, each reply awaited at most {recv_timeout} ms (`-recv_timeout`), a 500 ending its
MESSAGE (`-default_behaviors abortunexp`); Kamailio stores each and answers 202, no offline notice.
Both servers run with the same SIP workers on the same database, one after the other in alternating
order each round: Kamailio's msilo from a native config (`tests/kamailio/msilo_native.cfg`),
libmsilo from `examples/kamailio/` (app_python3, `kamailio` profile), both on a fresh `silo` table
from Kamailio's own schema files (migrated for libmsilo). SQLite runs in WAL mode with SQLite's
default `synchronous=FULL` for both (one log sync per commit) and one SIP worker: Kamailio's
db_sqlite sets no busy timeout, so with a second writer msilo answers 500 for most inserts
(`database is locked`), and with one now and then, when its clean timer writes at the same moment.
After each run every stored row is read back (body and user). Figures: messages per second of
sipp's wall time, median of the runs (min-max); the CPU time of all Kamailio processes and of sipp
per message (medians; the database server's own CPU is not counted); over all runs, `500`: refused
(not stored, the sender told), `lost`: answered 202 but not stored, or stored twice or for another
user, `no reply`: no final reply within the receive timeout."""


def _median_range(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def _problems(runs: list[Run]) -> str:
    counts = [
        (sum(r.refused for r in runs), "500"),
        (sum(r.lost for r in runs), "lost"),
        (sum(r.unanswered for r in runs), "no reply"),
    ]
    return ", ".join(f"{what}: {n}" for n, what in counts if n) or "none"


def _section(results: Results, args: argparse.Namespace, load: tuple[float, float]) -> str:
    lines = [
        START,
        "## Kamailio: MESSAGE store rate through the SIP server (sipp)",
        "",
        f"`python benchmarks/kamailio_store_rate.py --messages {args.messages} "
        f"--repeat {args.repeat} --concurrency {args.concurrency} "
        f"--children {args.children}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average "
        f"{load[0]:.1f} before and {load[1]:.1f} after (2 cores shared with other work). "
        f"{_versions()}; libmsilo in Kamailio's embedded {_embedded()}.",
        "",
        METHOD.format(
            messages=args.messages, concurrency=args.concurrency, recv_timeout=args.recv_timeout
        ),
        "",
        "| backend | SIP workers | server | msg/s | Kamailio CPU ms/msg | sipp CPU ms/msg | "
        "not stored |",
        "| --- | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for name, children in _children(args).items():
        label = {"sqlite": "SQLite", "postgres": "PostgreSQL"}[name]
        medians = {}
        for which, title in TITLES.items():
            runs = results.get((label, which))
            if not runs:
                continue
            medians[which] = statistics.median(r.rate for r in runs)
            cpu = statistics.median(r.cpu_ms for r in runs)
            sipp = statistics.median(r.sipp_cpu_ms for r in runs)
            lines.append(
                f"| {label} | {children} | {title} | {_median_range([r.rate for r in runs])} | "
                f"{cpu:.3f} | {sipp:.3f} | {_problems(runs)} |"
            )
        if "msilo" in medians and "libmsilo" in medians:
            ratio = medians["libmsilo"] / medians["msilo"]
            lines.append(f"| {label} | | libmsilo / msilo | {ratio:.2f} | | | |")
    lines += ["", *_analysis(results), "", END]
    return "\n".join(lines)


ANALYSIS = """\
Where the time goes. The KEMI routing alone, storing nothing, answers {floor}, and sipp spends at
most {sipp:.3f} ms of CPU per message: neither the harness nor app_python3 bounds these figures;
the store does. Kamailio's CPU per message with msilo and with libmsilo: {cpu}. msilo's store is
one C insert; libmsilo's is Python, about 256 Python calls per message on SQLite and 306 on
PostgreSQL (cProfile), 0.05 ms of CPU in a loop with SQLite on a RAM disk. In a live PostgreSQL
worker (8 workers, timed with process_time inside Kamailio) one route call took 0.26 ms of CPU:
psycopg 0.10, the rest of the driver 0.02, reading `$mb` and the source from Kamailio and parsing
the request 0.03, choosing the owner and building the row 0.03, the Silo and the adapter 0.02, the
route's other KSR calls and the 202 0.06 (the same code runs slower there than in a loop: the
worker sleeps on the network and the database between messages, and shares 2 cores with 7 other
workers, the database and sipp). On SQLite one worker waits for each commit's log sync, so libmsilo
adds its Python time to every sync (the sync's own system time is in both figures); on PostgreSQL
the workers share the cores with the database and sipp, so libmsilo is bound by its CPU per message
while msilo is bound by the commit latency. The group commit cannot help inside Kamailio: each
worker process runs one request at a time with its own `Silo`, so a batch would only ever hold one
message (the adapter turns it off: about 10% fewer Python calls and 10% less CPU per store), and
batching across workers would need the requests to meet in one process (docs/kamailio.md,
"Throughput")."""


def _analysis(results: Results) -> list[str]:
    """The paragraph under the table, with this run's figures."""
    floors, cpus = [], []
    for label in dict.fromkeys(backend for backend, _ in results):
        runs = {w: results[(label, w)] for w in TITLES if (label, w) in results}
        if "kemi" in runs:
            rate = statistics.median(r.rate for r in runs["kemi"])
            floors.append(f"{rate:,.0f} msg/s on {label}")
        if "msilo" in runs and "libmsilo" in runs:
            c, py = (statistics.median(r.cpu_ms for r in runs[w]) for w in ("msilo", "libmsilo"))
            cpus.append(f"{c:.2f} and {py:.2f} ms on {label}")
    if not floors or not cpus:
        return []
    sipp = max(statistics.median(r.sipp_cpu_ms for r in runs) for runs in results.values())
    text = ANALYSIS.format(floor=" and ".join(floors), sipp=sipp, cpu=", ".join(cpus))
    return textwrap.wrap(" ".join(text.split()), 100, break_on_hyphens=False)


def write_section(text: str) -> None:
    """Replace the section between the markers in RESULTS.md (append it the first time)."""
    replace_section(RESULTS, text, (START, END))


def _children(args: argparse.Namespace) -> dict[str, int]:
    """SIP workers per backend from ``--children sqlite=1,postgres=8``."""
    pairs = (item.split("=") for item in args.children.split(","))
    return {name.strip(): int(count) for name, count in pairs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32, help="MESSAGEs open at once")
    parser.add_argument(
        "--children",
        default="sqlite=1,postgres=8",
        help="backends to run and Kamailio's SIP workers for each",
    )
    parser.add_argument("--timeout", type=int, default=300, help="seconds per sipp run")
    parser.add_argument("--recv-timeout", type=int, default=5000, help="ms to await each 202")
    parser.add_argument("--servers", default=",".join(SERVERS), help="of msilo,libmsilo,kemi")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("MSILO_TEST_PG_URL", "postgresql+psycopg://root@127.0.0.1/test"),
        help="PostgreSQL database whose silo and version tables are dropped and recreated",
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not edit RESULTS.md")
    parser.add_argument("--workdir", help="keep the logs here instead of a temporary folder")
    args = parser.parse_args()
    servers = [s for s in SERVERS if s in args.servers.split(",")]
    results: Results = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="msilo-kam-bench-") as scratch:
        tmp = args.workdir or scratch
        for round_ in range(args.repeat):
            for make, children in _children(args).items():
                order = servers if round_ % 2 == 0 else servers[::-1]
                for which in order:
                    workdir = Path(tmp) / f"{which}-{make}-{round_}"
                    workdir.mkdir(parents=True)
                    if make == "sqlite":
                        backend = _sqlite(workdir, children)
                    else:
                        backend = _postgres(args.pg_url, children)
                    run = run_once(which, backend, args, workdir)
                    results.setdefault((backend.name, which), []).append(run)
                    print(
                        f"{backend.name:10} {which:8} {round_ + 1}: {run.rate:6.0f} msg/s, "
                        f"{run.cpu_ms:.3f} ms CPU/msg (sipp {run.sipp_cpu_ms:.3f}), "
                        f"lost {run.lost}, 500 {run.refused}, no reply {run.unanswered}",
                        flush=True,
                    )
    text = _section(results, args, (load_before, os.getloadavg()[0]))
    print(text)
    if not args.no_write and {"msilo", "libmsilo"} <= set(servers):
        write_section(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
