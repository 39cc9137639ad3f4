"""Throw-away Redis servers on loopback for the Redis driver tests.

``redis_cluster_url`` is a session-scoped fixture yielding ``redis+cluster://127.0.0.1:p1,...``
of a 3-master Redis Cluster; ``redis_tls_url`` yields ``rediss://...`` of a TLS-only server with a
self-signed certificate. Each is started once per test session from the installed ``redis-server``
binary (no persistence, a temporary directory) and its processes are stopped by PID at the end,
also when starting fails half-way. Without the binaries the tests skip (and fail under
``CI=true``).
"""

from __future__ import annotations

import atexit
import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends import in_ci

__all__ = [
    "ClusterProcesses",
    "StandaloneServer",
    "TlsServer",
    "redis_cluster_url",
    "redis_cluster_with_replicas",
    "redis_tls_url",
    "standalone_redis",
]

MASTERS = 3
BUS_OFFSET = 10000  # Redis Cluster's bus port is the client port + 10000
START_TIMEOUT = 60.0  # seconds to wait for the cluster to become ready
STOP_TIMEOUT = 10.0


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports(count: int) -> list[int]:
    """``count`` consecutive client ports whose bus ports are free too."""
    for _ in range(200):
        base = random.randrange(20000, 29000)
        ports = list(range(base, base + count))
        if all(_port_free(p) and _port_free(p + BUS_OFFSET) for p in ports):
            return ports
    raise RuntimeError("no free loopback ports for a Redis Cluster")


class ClusterProcesses:
    """The redis-server processes of one cluster (``replicas`` per master); :meth:`stop` ends
    them by PID."""

    def __init__(self, replicas: int = 0) -> None:
        self.replicas = replicas
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.dir = Path(tempfile.mkdtemp(prefix="msilo-redis-cluster-"))

    @property
    def url(self) -> str:
        """The driver URL naming every node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self) -> None:
        """Start the servers, create the cluster and wait until every node says it is ok."""
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise FileNotFoundError("redis-server / redis-cli not installed")
        self.ports = _pick_ports(MASTERS * (1 + self.replicas))
        for port in self.ports:
            self._spawn(server, port)
        deadline = time.monotonic() + START_TIMEOUT
        for port in self.ports:
            self._wait_for(cli, port, ["ping"], b"PONG", deadline)
        nodes = [f"127.0.0.1:{p}" for p in self.ports]
        replicas = ["--cluster-replicas", str(self.replicas)]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, *replicas, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT,
        )
        for port in self.ports:
            self._wait_for(cli, port, ["cluster", "info"], b"cluster_state:ok", deadline)
        while len(self.replica_ports()) < MASTERS * self.replicas:  # news travel by gossip
            if time.monotonic() > deadline:
                raise TimeoutError("the replicas never joined the cluster")
            time.sleep(0.1)
        for port in self.replica_ports():
            self._wait_for(cli, port, ["role"], b"connected", deadline)  # in sync

    def _cli(self, port: int, *command: str) -> bytes:
        cli = shutil.which("redis-cli") or "redis-cli"
        args = [cli, "-h", "127.0.0.1", "-p", str(port), *command]
        return subprocess.run(args, capture_output=True, timeout=10, check=True).stdout

    def replica_ports(self) -> list[int]:
        """The ports of the nodes that are replicas now."""
        found = []
        for line in self._cli(self.ports[0], "cluster", "nodes").decode().splitlines():
            fields = line.split()
            if len(fields) > 2 and "slave" in fields[2].split(","):
                found.append(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        return sorted(found)

    def failover(self, replica: int) -> None:
        """Promote ``replica`` with a manual CLUSTER FAILOVER (its master hands over without
        losing a write) and wait until every node sees the cluster ok again."""
        self._cli(replica, "cluster", "failover")
        deadline = time.monotonic() + START_TIMEOUT
        cli = shutil.which("redis-cli") or "redis-cli"
        self._wait_for(cli, replica, ["role"], b"master", deadline)
        for port in self.ports:
            self._wait_for(cli, port, ["cluster", "info"], b"cluster_state:ok", deadline)

    def _spawn(self, server: str, port: int) -> None:
        args = [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            f"nodes-{port}.conf",
            "--cluster-node-timeout",
            "5000",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            str(self.dir / f"redis-{port}.log"),
        ]
        self.procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL))

    def _wait_for(
        self, cli: str, port: int, command: list[str], expected: bytes, deadline: float
    ) -> None:
        while True:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {proc.returncode}")
            out = subprocess.run(
                [cli, "-h", "127.0.0.1", "-p", str(port), *command],
                capture_output=True,
                timeout=10,
                check=False,
            ).stdout
            if expected in out:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis on port {port} never answered {expected!r}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Terminate every server this object started (by PID), then remove the directory."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


_cluster: ClusterProcesses | None = None
_failure: str | None = None


def _stop_cluster() -> None:
    global _cluster
    if _cluster is not None:
        _cluster.stop()
        _cluster = None


# The fixture may be imported by several test modules; whichever finalises first stops the one
# shared cluster, and atexit covers an interrupted run.
atexit.register(_stop_cluster)


def _get_cluster() -> ClusterProcesses:
    global _cluster, _failure
    if _cluster is not None:
        return _cluster
    if _failure is None:
        cluster = ClusterProcesses()
        try:
            cluster.start()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            cluster.stop()
            _failure = f"cannot start a Redis Cluster: {exc!r}"
        else:
            _cluster = cluster
            return cluster
    if in_ci():
        pytest.fail(_failure)
    pytest.skip(_failure)


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """URL of a 3-master Redis Cluster on loopback, shared by the whole session."""
    cluster = _get_cluster()
    yield cluster.url
    with contextlib.suppress(Exception):
        _stop_cluster()


class TlsServer(ClusterProcesses):
    """One standalone redis-server that speaks TLS only, with a fresh self-signed certificate."""

    @property
    def cert(self) -> Path:
        """The certificate, which is its own CA."""
        return self.dir / "cert.pem"

    @property
    def url(self) -> str:
        """The driver URL, trusting the self-signed certificate."""
        return f"rediss://127.0.0.1:{self.ports[0]}/0?ssl_ca_certs={self.cert}"

    def start(self) -> None:
        """Make the certificate, start the server and wait until it answers over TLS."""
        server, cli, openssl = (shutil.which(n) for n in ("redis-server", "redis-cli", "openssl"))
        if server is None or cli is None or openssl is None:
            raise FileNotFoundError("redis-server / redis-cli / openssl not installed")
        key = self.dir / "key.pem"
        req = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        req += ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        req += ["-keyout", str(key), "-out", str(self.cert)]
        subprocess.run(
            req,
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT,
        )
        self.ports = _pick_ports(1)
        port = self.ports[0]
        args = [server, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
        args += ["--tls-cert-file", str(self.cert), "--tls-key-file", str(key)]
        args += ["--tls-ca-cert-file", str(self.cert), "--tls-auth-clients", "no"]
        args += ["--dir", str(self.dir), "--save", "", "--appendonly", "no"]
        args += ["--logfile", str(self.dir / "redis-tls.log")]
        self.procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL))
        tls = ["--tls", "--cacert", str(self.cert), "ping"]
        self._wait_for(cli, port, tls, b"PONG", time.monotonic() + START_TIMEOUT)


class StandaloneServer(ClusterProcesses):
    """One private standalone redis-server with the given extra arguments (persistence,
    ``--replicaof``, renamed commands), for a test that needs the server configured its way."""

    def __init__(self, *args: str) -> None:
        super().__init__()
        self.args = args

    @property
    def url(self) -> str:
        """The driver URL (database 0)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.procs[0].pid

    def start(self) -> None:
        """Start the server and wait until it answers."""
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise FileNotFoundError("redis-server / redis-cli not installed")
        self.ports = _pick_ports(1)
        port = self.ports[0]
        args = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        args += ["--logfile", str(self.dir / "redis.log"), "--save", "", "--appendonly", "no"]
        self.procs.append(subprocess.Popen([*args, *self.args], stdin=subprocess.DEVNULL))
        ready = b"NOAUTH" if "--requirepass" in self.args else b"PONG"  # it answers either way
        self._wait_for(cli, port, ["ping"], ready, time.monotonic() + START_TIMEOUT)


@contextlib.contextmanager
def redis_cluster_with_replicas() -> Iterator[ClusterProcesses]:
    """A private 3-master cluster with one replica each, for a test that changes its roles;
    stopped by PID afterwards. Skips (fails under ``CI=true``) when it cannot start."""
    cluster = ClusterProcesses(replicas=1)
    try:
        cluster.start()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        cluster.stop()
        message = f"cannot start a Redis Cluster with replicas: {exc!r}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield cluster
    finally:
        cluster.stop()


@contextlib.contextmanager
def standalone_redis(*args: str) -> Iterator[StandaloneServer]:
    """A :class:`StandaloneServer` for the ``with`` block, stopped by PID afterwards; skips (fails
    under ``CI=true``) when it cannot start."""
    server = StandaloneServer(*args)
    try:
        server.start()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        server.stop()
        message = f"cannot start a private redis-server: {exc!r}"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield server
    finally:
        server.stop()


_tls: TlsServer | None = None
_tls_failure: str | None = None


def _stop_tls() -> None:
    global _tls
    if _tls is not None:
        _tls.stop()
        _tls = None


atexit.register(_stop_tls)


@pytest.fixture(scope="session")
def redis_tls_url() -> Iterator[str]:
    """URL (``rediss://``) of a TLS-only Redis server on loopback, shared by the whole session."""
    global _tls, _tls_failure
    if _tls is None and _tls_failure is None:
        server = TlsServer()
        try:
            server.start()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            server.stop()
            _tls_failure = f"cannot start a TLS Redis server: {exc!r}"
        else:
            _tls = server
    if _tls is None:
        message = _tls_failure or "no TLS Redis server"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    yield _tls.url
    with contextlib.suppress(Exception):
        _stop_tls()
