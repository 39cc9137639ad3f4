"""The concurrency benchmark (``msilo bench --concurrency N``): N producers in one process.

Per backend, in one run, each path stores the same requests with N producers and then answers
200 OK to every stored message with N producers:

- ``group``: :class:`~libmsilo.Silo` threads with group commit (the default);
- ``unbatched``: the same with ``group_commit`` off (one transaction / round trip per call);
- ``asyncio``: :class:`~libmsilo.AsyncSilo` tasks, on the native asyncio driver where there is
  one (reported as ``asyncio-native``), else the driver in worker threads;
- ``asyncio-threads``: where there is a native driver, ``AsyncSilo`` on the synchronous driver
  in worker threads too, so one run compares both;
- ``raw``: the hand-written baseline (:mod:`.raw`), one bare connection per producer thread;
- ``single``: one caller through ``Silo`` (``single``) and through the raw baseline
  (``raw-single``), taking turns every few stores within each round; the ratio is the median of
  the rounds' ratios, as in the storage benchmark.

Then the store latency at a fixed offered load: stores are scheduled at ``rate`` per second over
``duration`` seconds across the producers (open loop) and each latency runs from its scheduled
time, so queueing counts. Every row states the goal of issue 16 it answers and whether it is
met. Every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any
from zoneinfo import ZoneInfo

from ..aio import AsyncSilo
from ..drivers.aio import has_native_driver
from ..masking import mask_text
from ..message import OutgoingMessage, SipRequest
from ..settings import MsiloSettings
from ..silo import Silo
from . import workload as wl
from .raw import RawStore, open_raw
from .report import machine_info
from .runner import GOALS, Measurement, backend_kind

__all__ = [
    "PATHS",
    "ConcurrencyConfig",
    "ConcurrencyReport",
    "ConcurrencyResult",
    "Goals",
    "PathResult",
    "goals_for",
    "judge",
    "run_concurrency",
]

_TIME_CAP = 120.0  # seconds at most for one phase

#: Every path, in report order (``single`` gives the ``single`` and ``raw-single`` rows).
PATHS = ("group", "unbatched", "asyncio", "asyncio-threads", "raw", "single")

# Issue 16's goals on this 2-core machine with 64 producers in one process: stores/s, and acks
# at least as fast; Kamailio's C module for comparison (the figures).
RATE_GOALS = {"sqlite": 15_000, "postgresql": 12_000, "mysql": 8_000, "redis": 20_000}
C_MODULE = {"sqlite": 3_000, "postgresql": 5_000}
SINGLE_OWNERS = 10  # the single caller's stores go to at most this many owners (fewer dumps)
SINGLE_CHUNK = 10  # the single caller's sides alternate every this many stores (or acks)
GOAL_PRODUCERS = 64  # the rate goals hold with this many producers
P99_GOAL = ("postgresql", 2_000.0, 10.0)  # backend, stores/s offered, p99 ms at most
# Paths the rate goal applies to (the others are references: the unbatched path, the baseline).
GOAL_PATHS = ("group", "asyncio", "asyncio-native", "asyncio-threads")


@dataclass(frozen=True, slots=True)
class Goals:
    """One backend's goals; None where the issue sets none."""

    rate: float | None  # stores/s and acks/s with N producers
    ratio: float | None  # single caller: Silo time / raw time at most
    p99_ms: float | None  # at ``p99_rate`` stores/s offered
    p99_rate: float | None
    c_module: float | None  # Kamailio's msilo (C) stores/s, for comparison


def goals_for(backend: str) -> Goals:
    """The goals of issue 16 for ``backend`` (``sqlite``, ``postgresql``, ``mysql``, ...)."""
    kind, offered, p99 = P99_GOAL
    return Goals(
        rate=RATE_GOALS.get(backend),
        ratio=GOALS.get(backend),
        p99_ms=p99 if backend == kind else None,
        p99_rate=offered if backend == kind else None,
        c_module=C_MODULE.get(backend),
    )


@dataclass(frozen=True, slots=True)
class ConcurrencyConfig:
    """What to measure: ``producers`` threads / tasks, ``per_producer`` stores each; the single
    caller ``single_stores`` stores per round, ``single_rounds`` rounds per side."""

    url: str
    producers: int = 64
    per_producer: int = 200
    owners: int = 100
    rate: float = 2000.0  # stores/s offered in the latency phase
    duration: float = 2.0  # seconds of the latency phase
    single_stores: int = 200
    single_rounds: int = 9
    paths: tuple[str, ...] = PATHS

    def __post_init__(self) -> None:
        unknown = [p for p in self.paths if p not in PATHS]
        if unknown:
            raise ValueError(f"unknown paths {unknown}; known: {', '.join(PATHS)}")
        if min(self.producers, self.per_producer, self.owners) < 1:
            raise ValueError("producers, per_producer and owners must be positive")
        if min(self.single_stores, self.single_rounds) < 1:
            raise ValueError("single_stores and single_rounds must be positive")


@dataclass(slots=True)
class PathResult:
    """One path's rates (stores/s, acks/s, from the median round) and seconds per round;
    ``error`` when it could not run. ``goal`` says in words what the row is held to, ``met``
    whether it is (None: no goal, a reference row)."""

    path: str
    producers: int
    stores: int = 0
    store_rate: float = 0.0
    ack_rate: float = 0.0
    store_s: list[float] = field(default_factory=list)
    ack_s: list[float] = field(default_factory=list)
    store_ratio: float | None = None  # single: median over rounds of Silo time / raw time
    ack_ratio: float | None = None
    goal: str = ""
    met: bool | None = None
    error: str | None = None


@dataclass(slots=True)
class ConcurrencyResult:
    """One backend's figures (named by its kind and server version, never its URL)."""

    backend: str
    producers: int
    server: str = ""
    paths: list[PathResult] = field(default_factory=list)
    latency_rate: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    latency_goal: str = ""
    latency_met: bool | None = None
    latency_error: str | None = None

    @property
    def goals(self) -> Goals:
        """The goals of this backend."""
        return goals_for(self.backend)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the goals' figures."""
        return {**asdict(self), "goals": asdict(self.goals)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConcurrencyResult:
        """Back from :meth:`as_dict`."""
        fields = {k: v for k, v in data.items() if k not in ("paths", "goals")}
        return cls(**fields, paths=[PathResult(**p) for p in data.get("paths", [])])


_CLIENTS = ("psycopg", "PyMySQL", "redis", "hiredis", "SQLAlchemy", "pymongo")


def client_versions() -> dict[str, str]:
    """The installed database clients and their versions."""
    found = {}
    for name in _CLIENTS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


@dataclass(slots=True)
class ConcurrencyReport:
    """One ``msilo bench --concurrency`` run: the machine, the settings, every backend."""

    producers: int
    per_producer: int
    owners: int
    rate: float
    duration: float
    single_stores: int
    single_rounds: int
    results: list[ConcurrencyResult] = field(default_factory=list)
    date: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    elapsed_s: float = 0.0
    load: list[float] = field(default_factory=list)  # 1-minute load average: start, end
    machine: dict[str, Any] = field(default_factory=machine_info)
    clients: dict[str, str] = field(default_factory=client_versions)

    @classmethod
    def for_config(cls, config: ConcurrencyConfig) -> ConcurrencyReport:
        """An empty report of ``config``'s settings, load average taken now."""
        return cls(
            producers=config.producers,
            per_producer=config.per_producer,
            owners=config.owners,
            rate=config.rate,
            duration=config.duration,
            single_stores=config.single_stores,
            single_rounds=config.single_rounds,
            load=[_load()],
        )

    def finish(self, started: float) -> None:
        """Record the run's wall time since ``started`` (perf_counter) and the load now."""
        self.elapsed_s = time.perf_counter() - started
        self.load = [*self.load[:1], _load()]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        from .. import __version__

        return {
            "libmsilo": __version__,
            **asdict(self),
            "results": [r.as_dict() for r in self.results],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConcurrencyReport:
        """Back from :meth:`to_dict` (a JSON file of an earlier run)."""
        fields = {k: v for k, v in data.items() if k not in ("libmsilo", "results")}
        results = [ConcurrencyResult.from_dict(r) for r in data.get("results", [])]
        return cls(**fields, results=results)


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return -1.0


def _split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    return [list(items[i::parts]) for i in range(parts)]


def _owners(owners: int, count: int) -> list[str]:
    """The owners ``count`` stores of :func:`workload.store_requests` over ``owners`` went to."""
    return [f"sip:store{k}@{wl.DOMAIN}" for k in range(min(owners, count))]


def _phased(
    n: int,
    phases: Sequence[Callable[[int], None]],
    *,
    setup: Callable[[int], None] | None = None,
    between: Callable[[], None] | None = None,
) -> list[float]:
    """Run each phase in ``n`` threads (the same threads for every phase, so a connection that
    must stay in its thread can); the wall time of each phase. ``setup(i)`` runs in each thread
    before the first phase, ``between()`` in the caller between phases; neither is timed."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(n + 1, timeout=_TIME_CAP)

    def run(i: int) -> None:
        try:
            if setup is not None:
                setup(i)
            for phase in phases:
                barrier.wait()
                phase(i)
                barrier.wait()
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    pool = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in pool:
        t.start()
    times: list[float] = []
    try:
        for k in range(len(phases)):
            if k and between is not None:
                between()
            barrier.wait()
            start = time.perf_counter()
            barrier.wait()
            times.append(time.perf_counter() - start)
    except threading.BrokenBarrierError:
        pass
    except BaseException:
        barrier.abort()
        raise
    for t in pool:
        t.join(_TIME_CAP)
    if errors:
        raise errors[0]
    if len(times) != len(phases):
        raise TimeoutError(f"producers did not finish within {_TIME_CAP:.0f} s")
    return times


def _settings(url: str, group: bool, producers: int) -> MsiloSettings:
    return MsiloSettings(
        db_url=url,
        db_table=wl.unique_name(),
        timezone="UTC",
        group_commit=group,
        db_pool_size=max(1, min(producers, 10)),
        db_timeout=30,
    )


def _rates(result: PathResult, count: int, store_s: float, ack_s: float) -> PathResult:
    result.stores = count
    result.store_s, result.ack_s = [store_s], [ack_s]
    result.store_rate, result.ack_rate = count / store_s, count / ack_s
    return result


Lease = tuple[int, str | None]  # a dumped message's id and lease token, for its 200 OK


def _leases(dumped: Sequence[OutgoingMessage], count: int, what: str) -> list[Lease]:
    """The ids and tokens of ``dumped``, which must be ``count`` stored messages."""
    leases = [(m.mid, m.lease_token) for m in dumped if m.mid is not None]
    if len(leases) != count:
        raise RuntimeError(f"{what}: {count} stores, {len(leases)} dumped")
    return leases


def _dump_all(silo: Silo, owners: Sequence[str], count: int, what: str) -> list[Lease]:
    """Lease every stored message of ``owners`` (not timed); exactly ``count`` of them."""
    return _leases([m for owner in owners for m in silo.dump(owner=owner)], count, what)


def _silo_path(config: ConcurrencyConfig, path: str, producers: int) -> PathResult:
    """Store and ack through Silo threads (``group`` / ``unbatched``)."""
    silo = Silo.from_settings(_settings(config.url, path != "unbatched", producers))
    try:
        count = producers * config.per_producer
        shares = _split(wl.store_requests(count, config.owners), producers)
        mids: list[int | None] = []
        lock = threading.Lock()
        replies: list[list[Lease]] = []

        def store(i: int) -> None:
            got = [silo.store(r, notify=False).mid for r in shares[i]]
            with lock:
                mids.extend(got)

        def dump() -> None:
            if len(mids) != count or None in mids:
                raise RuntimeError(f"{path}: {count} stores gave {len(mids)} ids")
            dumped = _dump_all(silo, _owners(config.owners, count), count, path)
            replies.extend(_split(dumped, producers))

        def ack(i: int) -> None:
            for mid, token in replies[i]:
                silo.on_reply(mid, 200, token=token)

        _warm_up(silo)
        store_s, ack_s = _phased(producers, [store, ack], between=dump)
        if silo.stats.dumped_messages != count:
            raise RuntimeError(f"{path}: {silo.stats.dumped_messages} of {count} acks deleted")
        return _rates(PathResult(path, producers), count, store_s, ack_s)
    finally:
        silo.driver.drop_schema()
        silo.close()


_WARM_UP = wl.store_requests(1, 1)[0]


def _warm_up(silo: Silo) -> None:
    """One unmeasured store and delete: statements prepared, connections open."""
    mid = silo.store(_WARM_UP, notify=False).mid
    if mid is not None:
        silo.delete(mid)


def _async_path(config: ConcurrencyConfig, producers: int, native: bool | None) -> PathResult:
    """Store and ack through :class:`AsyncSilo` tasks, one per producer: on its native asyncio
    driver where there is one (``native=None``, reported as ``asyncio-native``), or the
    synchronous driver in worker threads (``native=False``: ``asyncio-threads``)."""
    result = PathResult("asyncio" if native is None else "asyncio-threads", producers)
    count = producers * config.per_producer
    shares = _split(wl.store_requests(count, config.owners), producers)

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=producers))
        settings = _settings(config.url, True, producers)
        aio = await AsyncSilo.from_settings(settings, native=native)
        try:
            if aio.native:
                result.path = "asyncio-native"
            warm = await aio.store(_WARM_UP, notify=False)
            if warm.mid is not None:
                await aio.delete(warm.mid)

            async def store(share: Sequence[SipRequest]) -> list[int | None]:
                return [(await aio.store(r, notify=False)).mid for r in share]

            start = time.perf_counter()
            parts = await asyncio.wait_for(asyncio.gather(*map(store, shares)), _TIME_CAP)
            store_s = time.perf_counter() - start
            if sum(1 for part in parts for mid in part if mid is not None) != count:
                raise RuntimeError(f"{result.path}: {count} stores did not all store")
            dumped = [
                m for owner in _owners(config.owners, count) for m in await aio.dump(owner=owner)
            ]
            replies = _split(_leases(dumped, count, result.path), producers)

            async def ack(share: Sequence[Lease]) -> None:
                for mid, token in share:
                    await aio.on_reply(mid, 200, token=token)

            start = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*map(ack, replies)), _TIME_CAP)
            ack_s = time.perf_counter() - start
            if aio.stats.dumped_messages != count:
                raise RuntimeError(f"{result.path}: {aio.stats.dumped_messages} of {count} acks")
            return store_s, ack_s
        finally:
            await aio.async_driver.drop_schema()
            await aio.close()

    return _rates(result, count, *asyncio.run(main()))


def _raw_path(config: ConcurrencyConfig, producers: int) -> PathResult:
    """Store and delete with the hand-written baseline, one connection per producer."""
    table = wl.unique_name()
    zone = ZoneInfo("UTC")
    first = open_raw(config.url, table, zone)
    first.create()
    first.close()
    stores: list[RawStore | None] = [None] * producers
    count = producers * config.per_producer
    shares = _split(wl.store_rows(count, config.owners), producers)
    now = int(time.time())
    mids: list[list[int]] = [[] for _ in range(producers)]

    def connect(i: int) -> None:
        stores[i] = open_raw(config.url, table, zone)  # in its thread (sqlite3 wants that)

    def store(i: int) -> None:
        raw = stores[i]
        assert raw is not None
        mids[i] = [raw.store(row, now) for row in shares[i]]

    def ack(i: int) -> None:
        raw = stores[i]
        assert raw is not None
        for mid in mids[i]:
            raw.reply_ok(mid)
        raw.close()

    try:
        store_s, ack_s = _phased(producers, [store, ack], setup=connect)
        return _rates(PathResult("raw", producers), count, store_s, ack_s)
    finally:
        last = open_raw(config.url, table, zone)
        last.drop()
        last.close()


def _interleaved(
    chunks: int, first: int, lib: Callable[[int], None], raw: Callable[[int], None]
) -> tuple[float, float]:
    """Run ``lib(k)`` and ``raw(k)`` back to back for each chunk ``k``, alternating which side
    goes first (``first``: parity of the chunks where ``lib`` does), so both sides meet the
    same disturbances of the machine; each side's total seconds."""
    gc.collect()
    spent = [0.0, 0.0]
    sides = (lib, raw)
    for k in range(chunks):
        for side in (0, 1) if k % 2 == first else (1, 0):
            start = time.perf_counter()
            sides[side](k)
            spent[side] += time.perf_counter() - start
    return spent[0], spent[1]


def _single(config: ConcurrencyConfig) -> list[PathResult]:
    """One caller: ``Silo`` (group commit on, as a lone caller meets it) against the raw
    baseline, ``single_rounds`` rounds of ``single_stores`` stores and then their acks, the two
    sides interleaved in chunks of ``SINGLE_CHUNK``, after one shorter unmeasured round."""
    count, spread = config.single_stores, min(config.owners, SINGLE_OWNERS)
    requests = wl.store_requests(count, spread)
    rows = wl.store_rows(count, spread)
    owners = _owners(spread, count)
    store, ack = Measurement("store", count, 0), Measurement("ack", count, 0)
    silo = Silo.from_settings(_settings(config.url, True, 1))
    raw = open_raw(config.url, wl.unique_name(), ZoneInfo("UTC"))
    raw.create()

    def one_round(n: int, first: int) -> tuple[float, float, float, float]:
        """Store and ack ``n`` messages on each side: (lib store, raw store, lib ack, raw
        ack) seconds."""
        lib_mids: list[int | None] = []
        raw_mids: list[int] = []
        now = int(time.time())
        cut = [slice(k, min(k + SINGLE_CHUNK, n)) for k in range(0, n, SINGLE_CHUNK)]

        def lib_store(k: int) -> None:
            lib_mids.extend(silo.store(r, notify=False).mid for r in requests[cut[k]])

        def raw_store(k: int) -> None:
            raw_mids.extend(raw.store(row, now) for row in rows[cut[k]])

        stores = _interleaved(len(cut), first, lib_store, raw_store)
        if None in lib_mids:
            raise RuntimeError("single: a store did not store")
        leases = _dump_all(silo, owners, n, "single")

        def lib_ack(k: int) -> None:
            for mid, token in leases[cut[k]]:
                silo.on_reply(mid, 200, token=token)

        def raw_ack(k: int) -> None:
            for mid in raw_mids[cut[k]]:
                raw.reply_ok(mid)

        return (*stores, *_interleaved(len(cut), first, lib_ack, raw_ack))

    warm = min(count, 50)
    try:
        one_round(warm, 0)  # warm-up, not reported
        for round_ in range(config.single_rounds):
            lib_s, raw_s, lib_ack_s, raw_ack_s = one_round(count, round_ % 2)
            store.lib_s.append(lib_s)
            store.raw_s.append(raw_s)
            ack.lib_s.append(lib_ack_s)
            ack.raw_s.append(raw_ack_s)
        deleted = silo.stats.dumped_messages
        if deleted != count * config.single_rounds + warm:
            raise RuntimeError(f"single: {deleted} acks deleted")
    finally:
        silo.driver.drop_schema()
        silo.close()
        raw.drop()
        raw.close()
    lib_row = _side("single", store.lib_s, ack.lib_s, count)
    lib_row.store_ratio, lib_row.ack_ratio = store.ratio, ack.ratio
    return [lib_row, _side("raw-single", store.raw_s, ack.raw_s, count)]


def _side(path: str, store_s: list[float], ack_s: list[float], count: int) -> PathResult:
    """One caller's row: rates of its median round, every round's seconds."""
    store, ack = statistics.median(store_s), statistics.median(ack_s)
    return PathResult(path, 1, count, count / store, count / ack, store_s, ack_s)


def _latency(config: ConcurrencyConfig, result: ConcurrencyResult) -> None:
    """p50/p99 store latency (group commit) at ``config.rate`` stores/s offered."""
    producers = config.producers
    silo = Silo.from_settings(_settings(config.url, True, producers))
    try:
        _warm_up(silo)
        total = max(1, int(config.rate * config.duration))
        requests = wl.store_requests(total, config.owners)
        latencies: list[float] = []
        lock = threading.Lock()
        start = time.perf_counter() + 0.2

        def produce(i: int) -> None:
            mine: list[float] = []
            for n in range(i, total, producers):
                due = start + n / config.rate
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                silo.store(requests[n], notify=False)
                mine.append(time.perf_counter() - due)
            with lock:
                latencies.extend(mine)

        _phased(producers, [produce])
        cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
        result.latency_rate = config.rate
        result.latency_p50_ms = cuts[49] * 1000
        result.latency_p99_ms = cuts[98] * 1000
    finally:
        silo.driver.drop_schema()
        silo.close()


def judge(result: ConcurrencyResult) -> None:
    """Fill in each row's goal and whether it is met: None where the run's settings are not the
    goal's (producers, offered rate); a path that failed does not meet it."""
    goals = result.goals
    for p in result.paths:
        if goals.rate is not None and p.path in GOAL_PATHS:
            p.goal = f"≥ {goals.rate:,.0f}/s"
            if p.producers != GOAL_PRODUCERS:
                p.goal += f" at {GOAL_PRODUCERS} producers"
                continue
            p.met = p.error is None and min(p.store_rate, p.ack_rate) >= goals.rate
        elif goals.ratio is not None and p.path == "single":
            p.goal = f"≤ {goals.ratio:g}x raw"
            ratios = (p.store_ratio, p.ack_ratio)
            p.met = p.error is None and all(r is not None and r <= goals.ratio for r in ratios)
    if goals.p99_ms is not None and goals.p99_rate is not None:
        result.latency_goal = f"p99 ≤ {goals.p99_ms:g} ms at {goals.p99_rate:,.0f}/s"
        if result.latency_error is not None:
            result.latency_met = False
        elif result.latency_rate == goals.p99_rate:
            result.latency_met = result.latency_p99_ms <= goals.p99_ms


def _server(url: str) -> str:
    """The server's version (as the raw baseline's client reads it)."""
    raw = open_raw(url, wl.unique_name(), ZoneInfo("UTC"))
    try:
        return raw.server_version()
    finally:
        raw.close()


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {mask_text(str(exc))}"


def run_concurrency(
    config: ConcurrencyConfig, progress: Callable[[str], None] | None = None
) -> ConcurrencyResult:
    """Measure every path of ``config.paths`` and the latency on one backend."""
    result = ConcurrencyResult(backend_kind(config.url), config.producers)
    try:
        result.server = _server(config.url)
    except Exception as exc:  # the paths report it
        result.server = _error(exc)
    for path in config.paths:
        if path == "asyncio-threads" and not has_native_driver(config.url):
            continue  # the asyncio path runs on worker threads already
        if progress is not None:
            progress(path)
        producers = 1 if path == "single" else config.producers
        try:
            if path == "raw":
                result.paths.append(_raw_path(config, producers))
            elif path == "single":
                result.paths.extend(_single(config))
            elif path.startswith("asyncio"):
                native = None if path == "asyncio" else False
                result.paths.append(_async_path(config, producers, native))
            else:
                result.paths.append(_silo_path(config, path, producers))
        except Exception as exc:  # reported in the table; the other paths still run
            failed = ["single", "raw-single"] if path == "single" else [path]
            result.paths.extend(PathResult(p, producers, error=_error(exc)) for p in failed)
    if progress is not None:
        progress("latency")
    try:
        _latency(config, result)
    except Exception as exc:
        result.latency_error = _error(exc)
    judge(result)
    return result
