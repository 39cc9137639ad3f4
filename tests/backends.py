"""Test URLs of the storage backends, from env variables with local defaults.

A backend that cannot be reached is skipped on a developer machine and fails the run when
``CI=true``: CI must never pass by skipping a backend.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

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
