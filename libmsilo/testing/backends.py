"""Which real backends ``msilo_backend`` runs on: given URLs, or throwaway containers.

Order of choice: ``--msilo-backend URL`` (repeatable), else ``MSILO_TEST_BACKEND`` (URLs
separated by white space), else one container per kind in :data:`CONTAINER_KINDS` started with
testcontainers when it is installed and a Docker engine answers, else a single choice that skips
with the reason naming what is missing.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..drivers import url_scheme
from ..errors import SettingsError

__all__ = [
    "BACKEND_ENV",
    "CONTAINER_KINDS",
    "BackendChoice",
    "ContainerPool",
    "container_url",
    "docker_problem",
    "select_backends",
]

BACKEND_ENV = "MSILO_TEST_BACKEND"

#: Container kind -> (testcontainers module, class, image, constructor arguments).
CONTAINER_KINDS: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "postgresql": ("postgres", "PostgresContainer", "postgres:16-alpine", {"driver": "psycopg"}),
    "mariadb": ("mysql", "MySqlContainer", "mariadb:11", {"dialect": "pymysql"}),
    "redis": ("redis", "RedisContainer", "redis:7-alpine", {}),
    "mongodb": ("mongodb", "MongoDbContainer", "mongo:7", {}),
}


@dataclass(frozen=True, slots=True)
class BackendChoice:
    """One parametrization of ``msilo_backend``: a URL, a container kind, or a skip reason."""

    id: str
    url: str | None = None
    container: str | None = None
    skip: str | None = None


def _label(url: str) -> str:
    try:
        return url_scheme(url)
    except SettingsError:
        return "url"


def _from_urls(urls: Sequence[str]) -> list[BackendChoice]:
    choices: list[BackendChoice] = []
    used: set[str] = set()
    for url in urls:
        label = base = _label(url)
        n = 1
        while label in used:
            n += 1
            label = f"{base}{n}"
        used.add(label)
        choices.append(BackendChoice(label, url=url))
    return choices


def select_backends(
    urls: Sequence[str],
    env: Mapping[str, str],
    problem: Callable[[], str | None],
) -> list[BackendChoice]:
    """The backends to run on. ``problem()`` says why containers cannot be started (None when
    they can); it is only called when no URL is given."""
    if urls:
        return _from_urls(urls)
    from_env = env.get(BACKEND_ENV, "").split()
    if from_env:
        return _from_urls(from_env)
    missing = problem()
    if missing is None:
        return [BackendChoice(kind, container=kind) for kind in CONTAINER_KINDS]
    reason = (
        f"no real backend: pass --msilo-backend URL or set {BACKEND_ENV}, or start a Docker "
        f"engine for testcontainers ({missing})"
    )
    return [BackendChoice("no-backend", skip=reason)]


def docker_problem(timeout: float = 3.0) -> str | None:
    """Why testcontainers cannot start containers here, or None when it can."""
    try:
        importlib.import_module("testcontainers.core.container")
        docker = importlib.import_module("docker")
    except ImportError as exc:
        return f"{exc.name} is not installed: pip install 'libmsilo[testing]'"
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # the SDK raises DockerException, requests and OS errors alike
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"no Docker engine answers at {where}: {first}"
    return None


def container_url(kind: str, container: Any) -> str:
    """The libmsilo ``db_url`` of a started container of ``kind``."""
    if kind == "redis":
        host = container.get_container_host_ip()
        return f"redis://{host}:{container.get_exposed_port(6379)}/0"
    url: str = container.get_connection_url()
    return url


def _container_class(module: str, name: str) -> Any:
    for prefix in ("testcontainers.community.", "testcontainers."):
        try:
            return getattr(importlib.import_module(prefix + module), name)
        except ImportError:
            continue
    raise SettingsError(f"testcontainers has no {module} module: pip install 'libmsilo[testing]'")


class ContainerPool:
    """Containers started on first use and stopped together (one test session)."""

    def __init__(self) -> None:
        self._started: dict[str, tuple[Any, str]] = {}

    def url(self, kind: str) -> str:
        """The URL of the running container of ``kind``, started now if needed."""
        if kind not in self._started:
            module, name, image, kwargs = CONTAINER_KINDS[kind]
            container = _container_class(module, name)(image, **kwargs)
            container.start()
            try:
                self._started[kind] = (container, container_url(kind, container))
            except Exception:
                container.stop()
                raise
        return self._started[kind][1]

    def stop(self) -> None:
        """Stop every container started."""
        while self._started:
            _, (container, _) = self._started.popitem()
            container.stop()
