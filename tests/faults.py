"""Fault injection for the reliability tests: a cuttable TCP proxy, a private Redis server, and a
MongoDB database wrapper that can play unreachable.

Everything here talks to loopback addresses only, every loop is bounded in count and time, and
each helper stops what it started (by PID or by closing its own sockets). None of it touches the
shared database servers other than by forwarding a test's own connections to them.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import queue
import selectors
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pymongo.errors import AutoReconnect

__all__ = [
    "CutDirection",
    "FaultyDatabase",
    "PrivateRedis",
    "TcpProxy",
    "free_port",
    "proxy_to",
    "record",
    "url_with_address",
    "wait_until",
]

LOOPBACK = "127.0.0.1"
_POLL = 0.05  # seconds between the proxy loop's checks of its command queue
_CHUNK = 65536
_SEND_TIMEOUT = 5.0  # a peer that reads nothing for this long is dropped


def record(test: str, **figures: object) -> None:
    """Append ``figures`` as one JSON line to the file ``MSILO_RELIABILITY_LOG`` names, if set
    (how the numbers in docs/RELIABILITY.md are collected)."""
    path = os.environ.get("MSILO_RELIABILITY_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"test": test, **figures}, default=str) + "\n")


def free_port() -> int:
    """A TCP port on loopback that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def url_with_address(url: str, host: str, port: int) -> str:
    """``url`` with its host and port replaced (user and password kept)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``check`` until it is true or ``timeout`` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _hard_close(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer sees the connection reset, as after a crash."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        sock.close()


class CutDirection(enum.Enum):
    """Which bytes an armed proxy swallows before it cuts everything."""

    REQUEST = "request"  # client -> server: the server never sees the request
    RESPONSE = "response"  # server -> client: the server did the work, the client never hears


class _Pair:
    __slots__ = ("client", "server")

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server

    def peer(self, sock: socket.socket) -> socket.socket:
        return self.server if sock is self.client else self.client


class TcpProxy:
    """A TCP forwarder on a loopback port to one loopback upstream, with faults on demand.

    - :meth:`cut` closes every connection (RST) and stops listening, so new connections are
      refused; :meth:`restore` listens again on the same port.
    - :meth:`stall` is a partition: connections stay open but no byte moves either way, and
      new connections are accepted but never reach the server. :meth:`restore` resets the
      stalled connections and forwards again.
    - :meth:`arm` makes the next chunk in one direction vanish and then cuts, to fail a call
      in the middle of its round trip.

    One thread runs a selector loop; the test thread's commands go through a queue, so no socket
    is touched by two threads. The loop ends on :meth:`close` or after ``lifetime`` seconds.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        max_connections: int = 64,
        lifetime: float = 900.0,
    ) -> None:
        if not upstream_host.startswith("127.") and upstream_host not in ("localhost", "::1"):
            raise ValueError("the proxy forwards to loopback addresses only")
        self.upstream = (upstream_host, upstream_port)
        self.max_connections = max_connections
        self.port = free_port()
        self.accepted = 0  # connections forwarded, for the record
        self.cuts = 0  # cuts done (by cut() or an armed chunk)
        self._lifetime = lifetime
        self._sel = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._pairs: dict[socket.socket, _Pair] = {}
        self._held: list[socket.socket] = []  # accepted while stalled, never forwarded
        self._stalled = False
        self._armed: CutDirection | None = None
        self._arm_skip = 0
        self._commands: queue.Queue[tuple[Callable[[], None], threading.Event]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tcp-proxy", daemon=True)

    # ---- public commands (any thread) ---------------------------------------------------------

    def start(self) -> TcpProxy:
        """Listen and start forwarding."""
        self._listen()
        self._thread.start()
        return self

    def url(self, url: str) -> str:
        """``url`` pointed at this proxy."""
        return url_with_address(url, LOOPBACK, self.port)

    def cut(self) -> None:
        """Close every connection and refuse new ones."""
        self._call(self._do_cut)

    def stall(self) -> None:
        """Stop moving bytes: a network partition where packets are silently dropped."""
        self._call(self._do_stall)

    def restore(self) -> None:
        """Forward again (after :meth:`cut` or :meth:`stall`)."""
        self._call(self._do_restore)

    def arm(self, direction: CutDirection, after: int = 0) -> None:
        """Let ``after`` chunks going ``direction`` through, swallow the next one, then cut."""

        def set_armed() -> None:
            self._armed = direction
            self._arm_skip = after

        self._call(set_armed)

    @property
    def armed(self) -> bool:
        """Whether an armed cut has not fired yet."""
        return self._armed is not None

    @property
    def connections(self) -> int:
        """Connections open through the proxy now."""
        return len(self._pairs) // 2

    def close(self) -> None:
        """Stop the loop and close every socket."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(10)
        self._teardown()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, command: Callable[[], None]) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("the proxy is not running")
        done = threading.Event()
        self._commands.put((command, done))
        if not done.wait(10):
            raise RuntimeError("the proxy loop did not answer")

    # ---- the loop (proxy thread only) ---------------------------------------------------------

    def _loop(self) -> None:
        deadline = time.monotonic() + self._lifetime
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                self._run_commands()
                for key, _ in self._sel.select(_POLL):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._listener:
                        self._accept()
                    elif sock in self._pairs:
                        self._forward(sock)
        finally:
            self._run_commands()  # release any waiting caller
            self._teardown()

    def _run_commands(self) -> None:
        while True:
            try:
                command, done = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                command()
            finally:
                done.set()

    def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, self.port))
        sock.listen(16)
        sock.setblocking(False)
        self._listener = sock
        self._sel.register(sock, selectors.EVENT_READ)

    def _unlisten(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        if self._stalled:
            self._held.append(client)  # the handshake completed; nothing will ever answer
            return
        if self.connections >= self.max_connections:
            _hard_close(client)
            return
        try:
            server = socket.create_connection(self.upstream, timeout=2.0)
        except OSError:
            _hard_close(client)
            return
        for sock in (client, server):
            sock.settimeout(_SEND_TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, server)
        self._pairs[client] = self._pairs[server] = pair
        self._sel.register(client, selectors.EVENT_READ)
        self._sel.register(server, selectors.EVENT_READ)
        self.accepted += 1

    def _forward(self, sock: socket.socket) -> None:
        pair = self._pairs[sock]
        try:
            data = sock.recv(_CHUNK)
        except OSError:
            data = b""
        if not data:
            self._drop(pair)
            return
        armed = self._armed
        if armed is not None:
            going = CutDirection.REQUEST if sock is pair.client else CutDirection.RESPONSE
            if going is armed:
                if self._arm_skip > 0:
                    self._arm_skip -= 1
                else:
                    self._armed = None
                    self._do_cut()
                    return
        try:
            pair.peer(sock).sendall(data)
        except OSError:
            self._drop(pair)

    def _drop(self, pair: _Pair) -> None:
        for sock in (pair.client, pair.server):
            self._pairs.pop(sock, None)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)
            _hard_close(sock)

    def _drop_all(self) -> None:
        for pair in {id(p): p for p in self._pairs.values()}.values():
            self._drop(pair)
        for sock in self._held:
            _hard_close(sock)
        self._held.clear()

    def _do_cut(self) -> None:
        self._unlisten()
        self._drop_all()
        self._stalled = False
        self.cuts += 1

    def _do_stall(self) -> None:
        self._stalled = True
        # Stop reading: bytes pile up in the kernel buffers and nobody answers.
        for sock in list(self._pairs):
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)

    def _do_restore(self) -> None:
        if self._stalled:
            self._drop_all()  # like a partition outlasting TCP: the old connections are dead
            self._stalled = False
        self._armed = None
        if self._listener is None:
            self._listen()

    def _teardown(self) -> None:
        self._drop_all()
        self._unlisten()
        with contextlib.suppress(Exception):
            self._sel.close()


@contextlib.contextmanager
def proxy_to(url: str) -> Iterator[TcpProxy]:
    """A started :class:`TcpProxy` in front of the server ``url`` names."""
    parts = urlsplit(url)
    proxy = TcpProxy(parts.hostname or LOOPBACK, parts.port or 0)
    with proxy:
        yield proxy


class PrivateRedis:
    """A ``redis-server`` of the test's own on a free loopback port, killed and restarted by PID.

    It keeps nothing on disk, so a restart comes back empty (scripts included), as a Redis
    without persistence does after a crash.
    """

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self._binary = binary
        self._dir = workdir
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's PID while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        log = open(self._dir / f"redis-{self.port}.log", "ab")  # noqa: SIM115 - Popen keeps it
        args = [self._binary, "--port", str(self.port), "--bind", LOOPBACK, "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self._dir), "--daemonize", "no"]
        self._proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        if not wait_until(self._answers, timeout):
            self.kill()
            raise RuntimeError(f"redis-server on port {self.port} did not start")

    def _answers(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server (by its PID) and wait for it to be gone."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.kills += 1

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class _FaultyProxy:
    """Forwards every call to ``target`` unless ``switch.down`` is set."""

    def __init__(self, target: Any, switch: FaultyDatabase) -> None:
        self._target = target
        self._switch = switch

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr
        switch = self._switch

        def call(*args: Any, **kwargs: Any) -> Any:
            switch.check()
            return attr(*args, **kwargs)

        return call

    def __getitem__(self, name: str) -> _FaultyProxy:
        return _FaultyProxy(self._target[name], self._switch)


class FaultyDatabase(_FaultyProxy):
    """A pymongo-like database whose every operation raises ``AutoReconnect`` while down.

    mongomock lives in one process, so a network outage is injected at the client API instead,
    with the error pymongo raises when the server goes away (a ``ConnectionFailure``).
    """

    def __init__(self, target: Any) -> None:
        super().__init__(target, self)
        self.down = False
        self.refused = 0

    def check(self) -> None:
        """Raise like pymongo does for an unreachable server while ``down``."""
        if self.down:
            self.refused += 1
            raise AutoReconnect("connection refused (injected outage)")
