"""The concurrency benchmark (``msilo bench --concurrency N``): N producers in one process.

Per backend, in one run, each path stores the same requests with N producers and then answers
200 OK to every stored message with N producers:

- ``group``: :class:`~libmsilo.Silo` threads with group commit (the default);
- ``unbatched``: the same with ``group_commit`` off (one transaction / round trip per call);
- ``asyncio``: :class:`~libmsilo.AsyncSilo` tasks, on the native asyncio driver where there is
  one (reported as ``asyncio-native``);
- ``raw``: the hand-written baseline (:mod:`.raw`), one bare connection per producer thread;
- ``single``: one producer through ``Silo`` and ``raw-single`` through the raw baseline.

Then the store latency at a fixed offered load: stores are scheduled at ``rate`` per second over
``duration`` seconds across the producers (open loop) and each latency runs from its scheduled
time, so queueing counts. Every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from ..aio import AsyncSilo
from ..masking import mask_url
from ..message import SipRequest
from ..settings import MsiloSettings
from ..silo import Silo
from . import workload as wl
from .raw import RawStore, open_raw

__all__ = ["ConcurrencyConfig", "ConcurrencyResult", "PathResult", "run_concurrency"]

_TIME_CAP = 120.0  # seconds at most for one phase


@dataclass(frozen=True, slots=True)
class ConcurrencyConfig:
    """What to measure: ``producers`` threads / tasks, ``per_producer`` stores each."""

    url: str
    producers: int = 64
    per_producer: int = 200
    owners: int = 100
    rate: float = 2000.0  # stores/s offered in the latency phase
    duration: float = 2.0  # seconds of the latency phase
    paths: tuple[str, ...] = ("group", "unbatched", "asyncio", "raw", "single", "raw-single")


@dataclass(slots=True)
class PathResult:
    """One path's rates (stores/s, acks/s); ``error`` when it could not run."""

    path: str
    producers: int
    stores: int = 0
    store_rate: float = 0.0
    ack_rate: float = 0.0
    error: str | None = None


@dataclass(slots=True)
class ConcurrencyResult:
    """One backend's figures."""

    backend: str
    url: str
    producers: int
    paths: list[PathResult] = field(default_factory=list)
    latency_rate: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    latency_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def _split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    return [list(items[i::parts]) for i in range(parts)]


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


def _silo_path(config: ConcurrencyConfig, path: str, producers: int) -> PathResult:
    """Store and ack through Silo threads (``group`` / ``unbatched`` / ``single``) or AsyncSilo
    tasks (``asyncio``)."""
    result = PathResult(path, producers)
    silo = Silo.from_settings(_settings(config.url, path != "unbatched", producers))
    try:
        count = producers * config.per_producer
        requests = wl.store_requests(count, config.owners)
        shares = _split(requests, producers)
        mids: list[int | None] = []
        lock = threading.Lock()
        replies: list[list[tuple[int, str]]] = []

        def store(i: int) -> None:
            got = [silo.store(r, notify=False).mid for r in shares[i]]
            with lock:
                mids.extend(got)

        def dump() -> None:
            if len(mids) != count or None in mids:
                raise RuntimeError(f"{path}: {count} stores gave {len(mids)} ids")
            owners = [f"sip:store{k}@{wl.DOMAIN}" for k in range(min(config.owners, count))]
            dumped = [m for owner in owners for m in silo.dump(owner=owner)]
            replies.extend(_split([(m.mid, m.lease_token) for m in dumped], producers))

        def ack(i: int) -> None:
            for mid, token in replies[i]:
                silo.on_reply(mid, 200, token=token)

        _warm_up(silo)
        store_s, ack_s = _phased(producers, [store, ack], between=dump)
        if silo.stats.dumped_messages != count:
            raise RuntimeError(f"{path}: {silo.stats.dumped_messages} of {count} acks deleted")
        result.stores = count
        result.store_rate, result.ack_rate = count / store_s, count / ack_s
    finally:
        silo.driver.drop_schema()
        silo.close()
    return result


_WARM_UP = wl.store_requests(1, 1)[0]


def _warm_up(silo: Silo) -> None:
    """One unmeasured store and delete: statements prepared, connections open."""
    mid = silo.store(_WARM_UP, notify=False).mid
    if mid is not None:
        silo.delete(mid)


def _async_path(config: ConcurrencyConfig, producers: int) -> PathResult:
    """Store and ack through :class:`AsyncSilo` tasks, one per producer, on its native asyncio
    driver where there is one (PostgreSQL, Redis), else the driver in worker threads."""
    result = PathResult("asyncio", producers)
    count = producers * config.per_producer
    shares = _split(wl.store_requests(count, config.owners), producers)

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=producers))
        aio = await AsyncSilo.from_settings(_settings(config.url, True, producers))
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
                raise RuntimeError(f"asyncio: {count} stores did not all store")
            owners = [f"sip:store{k}@{wl.DOMAIN}" for k in range(min(config.owners, count))]
            dumped = [m for owner in owners for m in await aio.dump(owner=owner)]
            replies = _split([(m.mid, m.lease_token) for m in dumped], producers)

            async def ack(share: Sequence[tuple[int, str]]) -> None:
                for mid, token in share:
                    await aio.on_reply(mid, 200, token=token)

            start = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*map(ack, replies)), _TIME_CAP)
            ack_s = time.perf_counter() - start
            if aio.stats.dumped_messages != count:
                raise RuntimeError(f"asyncio: {aio.stats.dumped_messages} of {count} acks")
            return store_s, ack_s
        finally:
            await aio.async_driver.drop_schema()
            await aio.close()

    store_s, ack_s = asyncio.run(main())
    result.stores = count
    result.store_rate, result.ack_rate = count / store_s, count / ack_s
    return result


def _raw_path(config: ConcurrencyConfig, path: str, producers: int) -> PathResult:
    """Store and delete with the hand-written baseline, one connection per producer."""
    result = PathResult(path, producers)
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
        result.stores = count
        result.store_rate, result.ack_rate = count / store_s, count / ack_s
    finally:
        last = open_raw(config.url, table, zone)
        last.drop()
        last.close()
    return result


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


def run_concurrency(
    config: ConcurrencyConfig, progress: Callable[[str], None] | None = None
) -> ConcurrencyResult:
    """Measure every path of ``config.paths`` and the latency on one backend."""
    from ..drivers.schemes import url_scheme

    result = ConcurrencyResult(url_scheme(config.url), mask_url(config.url), config.producers)
    for path in config.paths:
        if progress is not None:
            progress(path)
        producers = 1 if path in ("single", "raw-single") else config.producers
        try:
            if path.startswith("raw"):
                result.paths.append(_raw_path(config, path, producers))
            elif path == "asyncio":
                result.paths.append(_async_path(config, producers))
            else:
                result.paths.append(_silo_path(config, path, producers))
        except Exception as exc:  # reported in the table; the other paths still run
            result.paths.append(PathResult(path, producers, error=f"{type(exc).__name__}: {exc}"))
    if progress is not None:
        progress("latency")
    try:
        _latency(config, result)
    except Exception as exc:
        result.latency_error = f"{type(exc).__name__}: {exc}"
    return result
