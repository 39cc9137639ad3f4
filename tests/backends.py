"""Test URLs of the storage backends, from env variables with local defaults, and the factory
that gives the behaviour tests a fresh driver of the backend they run on.

A backend that cannot be reached is skipped on a developer machine and fails the run when
``CI=true``: CI must never pass by skipping a backend.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from libmsilo.drivers import Driver, DriverOptions, StoreLayout, open_driver
from libmsilo.drivers.memory import MemoryDriver
from libmsilo.records import MAX_INT64
from libmsilo.testing import unique_table

DEFAULTS = {
    "postgresql": ("MSILO_TEST_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"),
    "mysql": ("MSILO_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
    "redis": ("MSILO_TEST_REDIS_URL", "redis://127.0.0.1:6379/13"),
}


def in_ci() -> bool:
    """True when running under CI (``CI=true``)."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def reachable(url: str, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to the URL's host and port opens."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    if port is None:
        return True
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def backend_url(kind: str) -> str:
    """The URL of a network backend for tests, or skip (fail in CI) when it is unreachable."""
    if kind == "mongo":
        url = os.environ.get("MSILO_TEST_MONGO_URL")
        if not url:
            # No MongoDB server exists on these machines; the Mongo driver runs on mongomock.
            pytest.skip("MSILO_TEST_MONGO_URL not set: no real MongoDB server to test against")
        return url
    env, default = DEFAULTS[kind]
    url = os.environ.get(env, default)
    if not reachable(url):
        message = f"{kind} backend at {url} is unreachable (set {env} to override)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return url


# ---- the behaviour tests on every backend (issue 10): one fixture built from a backend name

#: Every backend the behaviour tests run on; ``MSILO_TEST_BEHAVIOUR_BACKENDS`` (comma-separated)
#: narrows it.
BEHAVIOUR_BACKENDS = ("memory", "sqlite", "postgresql", "mysql", "redis", "mongomock")


def behaviour_backends() -> list[str]:
    """The backends chosen for this run (all by default)."""
    raw = os.environ.get("MSILO_TEST_BEHAVIOUR_BACKENDS", "")
    chosen = [k.strip() for k in raw.split(",") if k.strip()] or list(BEHAVIOUR_BACKENDS)
    unknown = set(chosen) - set(BEHAVIOUR_BACKENDS)
    if unknown:
        raise ValueError(f"MSILO_TEST_BEHAVIOUR_BACKENDS: unknown backends {sorted(unknown)}")
    return chosen


class DriverPool:
    """Fresh, empty drivers of one backend for the behaviour tests.

    Each driver gets its own table (key prefix, database) once per session; :meth:`release`
    empties the drivers a test used and keeps them for the next test, so a test costs no DDL.
    """

    def __init__(self, kind: str, directory: Path, url: str | None = None) -> None:
        self.kind = kind
        self._directory = directory
        if url is None and kind in DEFAULTS:
            url = backend_url(kind)  # skip (fail in CI) early when unreachable
        self._url = url
        self._idle: list[Driver] = []
        self._busy: list[Driver] = []

    def __call__(self) -> Driver:
        """An empty driver, for this test only."""
        driver = self._idle.pop() if self._idle else self._new()
        self._busy.append(driver)
        return driver

    def _new(self) -> Driver:
        layout = StoreLayout(table=unique_table())
        if self.kind == "memory":
            return MemoryDriver()
        if self.kind == "mongomock":
            from libmsilo.drivers.mongo import open_mongomock

            # The tests' clock is in 2023: no TTL index, which works on the real clock.
            driver: Driver = open_mongomock(unique_table("db"), layout, ttl_delay=None)
        else:
            url = self._url or f"sqlite:///{self._directory / f'{layout.table}.db'}"
            driver = open_driver(url, layout, DriverOptions(timeout=10))
        driver.create_schema()
        return driver

    def release(self) -> None:
        """Empty the drivers the test used and keep them (memory drivers are just dropped)."""
        busy, self._busy = self._busy, []
        for driver in busy:
            if self.kind != "memory":
                driver.delete_expired(MAX_INT64)  # every row: all expire by then
                self._idle.append(driver)

    def close(self) -> None:
        """Drop and close every driver."""
        self.release()
        for driver in self._idle:
            try:
                driver.drop_schema()
            finally:
                driver.close()
        self._idle.clear()
