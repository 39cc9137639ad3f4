"""The storage benchmark: libmsilo against a hand-written baseline on the same backend, same run.

Per backend: the store rate, then for each table size (other owners' rows) the dump of one owner's
queue (claim + render + a 200 OK deleting each), the reminder sweep (``tick`` over due reminders)
and the expiry purge (1 % of the table expired). Rounds alternate which side goes first; the
median of each side's rounds is reported with the ratio libmsilo / raw (above 1 = slower).
"""

from __future__ import annotations

import gc
import logging
import statistics
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from ..drivers.base import Driver, NewMessage
from ..drivers.schemes import SCHEMES, url_scheme
from ..errors import MsiloError
from ..masking import mask_text, mask_url
from ..settings import MsiloSettings
from ..silo import Silo
from . import workload as wl
from .raw import RawStore, open_raw

__all__ = [
    "BenchConfig",
    "BenchError",
    "Measurement",
    "Progress",
    "failure_label",
    "run_backend",
    "total_steps",
]

log = logging.getLogger("libmsilo")

Progress = Callable[[str], None]  # called once per finished step, with what comes next


WARMUP_STORES = 100  # unmeasured stores per side before the store rounds

# The store and dump goals of the brief: libmsilo / raw at most this (reported only).
GOALS = {"sqlite": 1.5, "postgresql": 1.25, "mysql": 1.25, "redis": 1.25}


class BenchError(MsiloError):
    """The benchmark could not run, or a side did not do the expected work."""


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """What to measure and how much."""

    urls: tuple[str, ...]
    messages: int = 2000  # stores per round
    owners: int = 100  # owners the stores are spread over
    queued: int = 1000  # messages queued for the dumped owner
    reminders: int = 1000  # due reminders per sweep
    scales: tuple[int, ...] = (10_000,)  # rows of other owners in the table
    expired_share: float = 0.01  # of the table, removed by each purge
    repeat: int = 3  # rounds per side; the median is reported
    redis_wait: int | None = None  # Redis: also measure stores waiting for this many replicas

    def __post_init__(self) -> None:
        if not self.urls:
            raise BenchError("bench: no database URL given")
        if min(self.messages, self.owners, self.queued, self.repeat) < 1 or self.reminders < 0:
            raise BenchError("bench: sizes and --repeat must be positive")
        if any(s < 0 for s in self.scales) or not self.scales:
            raise BenchError("bench: --scale sizes must be zero or more")


@dataclass(slots=True)
class Measurement:
    """One operation on one backend at one table size: seconds per round on each side."""

    op: str  # store, dump, sweep, purge
    items: int  # messages handled per round
    table_rows: int  # other owners' rows in the table (0 for the store benchmark)
    lib_s: list[float] = field(default_factory=list)
    raw_s: list[float] = field(default_factory=list)

    @property
    def lib_median(self) -> float:
        """libmsilo's median seconds per round."""
        return statistics.median(self.lib_s)

    @property
    def raw_median(self) -> float:
        """The raw baseline's median seconds per round."""
        return statistics.median(self.raw_s)

    @property
    def ratio(self) -> float:
        """libmsilo time / raw time (above 1: libmsilo is slower): the median of the rounds'
        ratios, each round running both sides back to back, so drift in the machine's load
        between rounds cancels out."""
        pairs = [lib / raw for lib, raw in zip(self.lib_s, self.raw_s, strict=True) if raw > 0]
        return statistics.median(pairs) if pairs else float("inf")

    @property
    def best_ratio(self) -> float:
        """libmsilo's fastest round / the raw side's fastest round: the least disturbed
        estimate when other work on the machine slows some rounds down."""
        fastest = min(self.raw_s)
        return min(self.lib_s) / fastest if fastest > 0 else float("inf")

    def rate(self, seconds: float) -> float:
        """Messages per second at ``seconds`` per round."""
        return self.items / seconds if seconds > 0 else float("inf")


@dataclass(slots=True)
class BackendResult:
    """Every measurement of one backend."""

    url: str  # with its password masked; reports name the backend and server instead
    backend: str  # sqlite, postgresql, mysql, redis, mongodb, mongomock
    client: str  # the raw baseline's bare client
    server: str
    note: str
    goal: float | None
    measurements: list[Measurement] = field(default_factory=list)


def total_steps(config: BenchConfig) -> int:
    """How many times :func:`run_backend` calls ``progress`` over all URLs."""
    per_scale = 2 + config.repeat  # seeding, warm-up, rounds
    waits = 0
    if config.redis_wait is not None:
        redis_urls = [u for u in config.urls if backend_kind(u) == "redis"]
        waits = config.repeat * len(redis_urls)
    return len(config.urls) * (1 + config.repeat + len(config.scales) * per_scale) + waits


def redact(url: str) -> str:
    """Deprecated: use :func:`libmsilo.masking.mask_url`."""
    warnings.warn(
        "libmsilo.bench.runner.redact is deprecated; use libmsilo.masking.mask_url",
        DeprecationWarning,
        stacklevel=2,
    )
    return mask_url(url)


def backend_kind(url: str) -> str:
    """The backend a URL reaches (``sqlite``, ``postgresql``, ``mysql``, ``redis``, ...)."""
    scheme = url_scheme(url)
    return SCHEMES[scheme].backend if scheme in SCHEMES else scheme


def failure_label(url: str, number: int) -> str:
    """How a report names a backend that could not be measured: its kind and which
    ``--db-url`` it was (never the URL, which may hold a password or a private path)."""
    try:
        kind = backend_kind(url)
    except MsiloError:
        kind = "unknown"
    return f"{kind} (--db-url #{number})"


@contextmanager
def _timed(into: list[float]) -> Iterator[None]:
    gc.collect()
    start = time.perf_counter()
    yield
    into.append(time.perf_counter() - start)


def _expect(what: str, got: int, want: int) -> None:
    if got != want:
        raise BenchError(f"bench: {what} handled {got} messages, expected {want}")


class _LibSide:
    """libmsilo on its own table, with a loader to seed it outside the measured paths."""

    def __init__(self, url: str, table: str, zone: tzinfo, **extra: Any) -> None:
        self.settings = MsiloSettings(
            db_url=url,
            db_table=table,
            profile="libmsilo",
            timezone=str(zone),
            reminder=wl.REMINDER_FROM,
            send_time=1,
            expire_time=wl.EXPIRE_TIME,
            max_messages=0,
            from_address=None,
            offline_message=None,
            content_type_hdr=None,
            contact_hdr=None,
            outbound_proxy=None,
            add_date=True,
            add_contact=True,
            **extra,
        )
        self.silo = Silo.from_settings(self.settings)
        self.driver: Driver = self.silo.driver
        self.loader = _Loader(url, table, zone, self.driver)

    def fresh(self) -> Silo:
        """A Silo with new timers on the same driver (so the first tick's purge is not timed)."""
        return Silo(self.driver, self.settings)


class _Loader:
    """Seeds libmsilo's table in bulk, outside the measured paths."""

    def __init__(self, url: str, table: str, zone: tzinfo, driver: Driver) -> None:
        self.kind = backend_kind(url)
        self.driver, self.table = driver, table
        self.sql: RawStore | None = None
        self.mongo: Any = None
        if self.kind in ("sqlite", "postgresql", "mysql"):
            # The raw client bulk-loads libmsilo's table just as well: the same columns.
            self.sql = open_raw(url, table, zone)
        elif self.kind == "mongodb":
            from .raw_mongo import mongo_database

            self.mongo = mongo_database(url)
        self._next_id = 10**12  # far above the ids libmsilo's own inserts take

    def load(self, rows: Iterable[wl.Row]) -> None:
        """Insert ``rows`` into libmsilo's table."""
        if self.sql is not None:
            self.sql.bulk_load(rows)
        elif self.kind == "redis":
            from .raw_redis import load_lib_redis

            load_lib_redis(self.driver, rows)
        elif self.mongo is not None:
            from .raw_mongo import mongo_document

            docs = []
            for row in rows:
                docs.append(mongo_document(row, self._next_id))
                self._next_id += 1
            if docs:
                self.mongo[1][self.table].insert_many(docs)
        else:
            # No bulk path for this backend's layout: its own insert, one row at a time.
            for row in rows:
                self.driver.insert(NewMessage(*row))

    def analyze(self) -> None:
        """Refresh planner statistics of libmsilo's table."""
        if self.sql is not None:
            self.sql.analyze()

    def close(self) -> None:
        """Close the loader's own connection."""
        if self.sql is not None:
            self.sql.close()
        if self.mongo is not None:
            self.mongo[0].close()


class _Run:
    """One backend: both sides, their tables, and the measurements."""

    def __init__(self, url: str, config: BenchConfig, progress: Progress) -> None:
        self.url, self.config, self.progress = url, config, progress
        self.zone = ZoneInfo("UTC")
        tag = uuid.uuid4().hex[:8]
        self.lib_table, self.raw_table = f"msilo_bench_lib_{tag}", f"msilo_bench_raw_{tag}"
        self.lib: _LibSide | None = None
        self.raw: RawStore | None = None
        self._sides: list[_LibSide | RawStore] = []  # every side opened, dropped by close()

    def open(self) -> None:
        self.lib = self._lib_side(self.lib_table)
        self.raw = self._raw_side(open_raw(self.url, self.raw_table, self.zone))

    def _lib_side(self, table: str, **extra: Any) -> _LibSide:
        side = _LibSide(self.url, table, self.zone, **extra)
        self._sides.append(side)
        return side

    def _raw_side(self, raw: RawStore) -> RawStore:
        self._sides.append(raw)
        raw.create()
        return raw

    def close(self) -> None:
        errors: list[BaseException] = []
        for side in self._sides:
            try:
                if isinstance(side, _LibSide):
                    side.driver.drop_schema()
                else:
                    side.drop()
            except Exception as exc:
                errors.append(exc)
            if isinstance(side, _LibSide):
                side.loader.close()
                side.silo.close()
            else:
                side.close()
        if errors:
            log.warning("bench: cleanup failed: %s", mask_text(str(errors[0])))

    # ---- store

    def store_waiting(self, replicas: int) -> Measurement:
        """Stores that wait for ``replicas`` Redis replicas (libmsilo's ``redis_wait_replicas``;
        the raw side sends WAIT in the same pipeline), on tables of their own."""
        from .raw_redis import RawRedis

        lib = self._lib_side(f"{self.lib_table}_w", redis_wait_replicas=replicas)
        raw = self._raw_side(RawRedis(self.url, f"{self.raw_table}_w", self.zone, replicas))
        return self.store(f"store+wait{replicas}", lib.silo, raw)

    def store(
        self, op: str = "store", silo: Silo | None = None, raw: RawStore | None = None
    ) -> Measurement:
        assert self.lib is not None and self.raw is not None
        cfg = self.config
        requests = wl.store_requests(cfg.messages, cfg.owners)
        rows = wl.store_rows(cfg.messages, cfg.owners)
        m = Measurement(op, cfg.messages, 0)
        silo, raw = silo or self.lib.silo, raw or self.raw
        # Warm-up, not measured: connections, prepared statements, scripts, caches.
        for req, row in list(zip(requests, rows, strict=True))[:WARMUP_STORES]:
            silo.store(req)
            raw.store(row, int(time.time()))
        for round_ in range(cfg.repeat):
            for side in self._order(round_):
                if side == "lib":
                    with _timed(m.lib_s):
                        for req in requests:
                            silo.store(req)
                else:
                    with _timed(m.raw_s):
                        for row in rows:
                            raw.store(row, int(time.time()))
            self.progress(f"{op} round {round_ + 1}/{cfg.repeat}")
        return m

    @staticmethod
    def _order(round_: int) -> tuple[str, str]:
        # Alternate who goes first, so warm caches and background work do not favour one side.
        return ("lib", "raw") if round_ % 2 == 0 else ("raw", "lib")

    # ---- dump, sweep, purge at one table size

    def scale(self, rows: int) -> list[Measurement]:
        assert self.lib is not None and self.raw is not None
        cfg = self.config
        now = int(time.time())
        self.lib.loader.load(wl.other_rows(rows, now))
        self.raw.bulk_load(wl.other_rows(rows, now))
        self.raw.analyze()
        self.lib.loader.analyze()
        self.progress(f"{rows:,} rows seeded")
        expired = int(rows * cfg.expired_share)
        dump = Measurement("dump", cfg.queued, rows)
        sweep = Measurement("sweep", cfg.reminders, rows)
        purge = Measurement("purge", expired, rows)
        warmup = tuple(Measurement(m.op, m.items, rows) for m in (dump, sweep, purge))
        for round_ in range(-1, cfg.repeat):  # round -1 warms up and is not reported
            d, sw, p = warmup if round_ < 0 else (dump, sweep, purge)
            for side in self._order(round_):
                if side == "lib":
                    self._lib_round(d, sw, p, expired)
                else:
                    self._raw_round(d, sw, p, expired)
            what = "warm-up" if round_ < 0 else f"round {round_ + 1}/{cfg.repeat}"
            self.progress(f"{rows:,} rows: {what}")
        return [dump, sweep, purge]

    def _seed_round(self, load: Callable[[Iterable[wl.Row]], None], expired: int) -> int:
        now = int(time.time())
        load(wl.queue_rows(self.config.queued, now))
        load(wl.expired_rows(expired, now))
        load(wl.reminder_rows(self.config.reminders, now))
        return now

    def _lib_round(self, dump: Measurement, sweep: Measurement, purge: Measurement, n: int) -> None:
        assert self.lib is not None
        silo = self.lib.fresh()
        silo.tick(now=time.time() - 10)  # the first tick always purges; keep that out of the sweep
        now = self._seed_round(self.lib.loader.load, n)
        owner = f"sip:{wl.TARGET}@{wl.DOMAIN}"
        with _timed(dump.lib_s):
            out = silo.dump(owner=owner)
            for msg in out:
                silo.on_reply(msg.mid or 0, 200)
        _expect("libmsilo dump", len(out), dump.items)
        with _timed(sweep.lib_s):
            due = silo.tick(now=float(now))
        _expect("libmsilo reminder sweep", len(due), sweep.items)
        for msg in due:
            silo.on_reply(msg.mid or 0, 200)
        with _timed(purge.lib_s):
            purged = silo.purge_expired(now)
        _expect("libmsilo purge", purged, n)

    def _raw_round(self, dump: Measurement, sweep: Measurement, purge: Measurement, n: int) -> None:
        raw = self.raw
        assert raw is not None
        now = self._seed_round(raw.bulk_load, n)
        lease = 30  # check_time, as libmsilo's default
        with _timed(dump.raw_s):
            t = int(time.time())
            out = raw.dump(wl.TARGET, wl.DOMAIN, t, t + lease, uuid.uuid4().hex)
            for msg in out:
                raw.reply_ok(msg.mid)
        _expect("raw dump", len(out), dump.items)
        with _timed(sweep.raw_s):
            due = raw.sweep(now, now + lease, uuid.uuid4().hex)
        _expect("raw reminder sweep", len(due), sweep.items)
        for msg in due:
            raw.reply_ok(msg.mid)
        with _timed(purge.raw_s):
            purged = raw.purge(now)
        _expect("raw purge", purged, n)


def run_backend(url: str, config: BenchConfig, progress: Progress) -> BackendResult:
    """Measure one backend; every table the run made is dropped afterwards."""
    kind = backend_kind(url)
    if kind in ("memory",):
        raise BenchError("bench: the memory driver has no raw baseline to compare with")
    run = _Run(url, config, progress)
    try:
        run.open()
        assert run.raw is not None
        result = BackendResult(
            url=mask_url(url),
            backend=kind,
            client=run.raw.client,
            server=run.raw.server_version(),
            note="in-process fake, not a MongoDB server" if kind == "mongomock" else "",
            goal=GOALS.get(kind),
        )
        progress(f"{kind}: store")
        result.measurements.append(run.store())
        if kind == "redis" and config.redis_wait is not None:
            result.measurements.append(run.store_waiting(config.redis_wait))
        for rows in config.scales:
            result.measurements.extend(run.scale(rows))
        return result
    finally:
        run.close()
