"""Run a real Kamailio (Debian's package) and sipp on loopback for the end-to-end tests.

Everything runs in a private network namespace (``unshare -n``) when the machine allows it, so
the fixed SIP ports cannot collide with anything; otherwise on 127.0.0.1 with free ports. Every
process started here is stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from tests.backends import in_ci

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "kamailio"
SCENARIOS = ROOT / "tests" / "sipp" / "kamailio"
MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
EMBEDDED_PYTHON = "/usr/bin/python3"  # what Debian's app_python3 links against
T = TypeVar("T")
STEP_TIMEOUT = 30.0  # seconds any single sipp run or wait may take (a loaded machine is slow)


def require_tools(*modules: str) -> None:
    """Skip (fail in CI) unless kamailio, the named modules and sipp are installed."""
    missing = [tool for tool in ("kamailio", "sipp") if shutil.which(tool) is None]
    missing += [m for m in modules if not (MODULES / f"{m}.so").exists()]
    if missing:
        message = f"not installed: {', '.join(missing)} (.ci/run installs the Debian packages)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


def embedded_env() -> dict[str, str]:
    """PYTHONPATH and PYTHONHOME for Kamailio's embedded interpreter: this checkout plus this
    environment's site-packages (which fit only an interpreter of the same minor version), and
    the embedded interpreter's own prefix. Without PYTHONHOME it looks for its standard library
    through the ``python3`` first on PATH, which may be another build (pyenv, a venv's base) whose
    extension modules do not load into Debian's libpython (``_ssl``: undefined symbol)."""
    probe = subprocess.run(
        [EMBEDDED_PYTHON, "-c", "import sys; print(sys.prefix, *sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    )
    prefix, major, minor = probe.stdout.split()
    embedded = (int(major), int(minor))
    if embedded != sys.version_info[:2]:
        pytest.fail(
            f"{EMBEDDED_PYTHON} is {embedded}, the tests run on {sys.version_info[:2]}: install "
            "libmsilo for the embedded interpreter instead (docs/kamailio.md)"
        )
    out = subprocess.run(
        [sys.executable, "-m", "libmsilo.kamailio", "pythonpath"],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    return {"PYTHONPATH": out.stdout.strip(), "PYTHONHOME": prefix}


def _netns_works() -> bool:
    if os.environ.get("MSILO_TEST_NO_NETNS") or shutil.which("unshare") is None:
        return False
    try:
        probe = subprocess.run(
            ["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


@dataclass
class Net:
    """Where the processes run: a namespace held by one ``sleep`` process, or the host."""

    holder: subprocess.Popen[bytes] | None = None
    _next_port: int = 5060

    @property
    def isolated(self) -> bool:
        return self.holder is not None

    def prefix(self) -> list[str]:
        if self.holder is None:
            return []
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", "--"]

    def port(self) -> int:
        """A UDP port for a new listener."""
        if self.holder is None:
            return _free_udp_port()
        self._next_port += 1
        return self._next_port

    def popen(
        self, argv: list[str], *, log: Path, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                self.prefix() + argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
            )


@contextmanager
def network() -> Iterator[Net]:
    """A private loopback-only network namespace when possible, else the host's loopback."""
    if not _netns_works():
        yield Net()
        return
    holder = subprocess.Popen(
        ["unshare", "-n", "sh", "-c", "ip link set lo up && exec sleep 600"],
        stdin=subprocess.DEVNULL,
    )
    try:
        net = Net(holder)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # wait until lo is up inside the namespace
            up = subprocess.run(
                [*net.prefix(), "ip", "-o", "addr", "show", "lo"], capture_output=True, text=True
            )
            if "127.0.0.1" in up.stdout:
                break
            time.sleep(0.05)
        yield net
    finally:
        _stop(holder)


@dataclass
class Kamailio:
    """One Kamailio process tree (foreground, ``-DD -E``), stopped by the main PID."""

    net: Net
    workdir: Path
    cfg: Path
    env: dict[str, str]
    defines: dict[str, str] = field(default_factory=dict)
    children: int = 2
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "kamailio.log"

    def start(self) -> None:
        self.port = self.port or self.net.port()
        argv = ["kamailio", "-DD", "-E", "-f", str(self.cfg), "-w", str(self.workdir)]
        argv += ["-Y", str(self.workdir), "-l", f"udp:{self.address}"]
        argv += ["-A", f'LISTEN_ALIAS="{self.address}"', "-A", f"CHILDREN={self.children}"]
        for name, value in self.defines.items():
            argv += ["-A", f"{name}={value}"]
        argv += ["-m", "64", "-M", "16"]
        self.proc = self.net.popen(argv, log=self.log, env=self.env)
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + STEP_TIMEOUT
        # Kamailio logs one line per process it forks; the SIP workers come last.
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"kamailio exited {self.proc.returncode}:\n{self.tail()}")
            text = self.log.read_text(errors="replace")
            if "ERROR" in text and "Traceback" in text:
                raise AssertionError(f"kamailio failed to start:\n{self.tail()}")
            if text.count("probe_max_receive_buffer(): SO_RCVBUF is finally") >= 1:
                time.sleep(0.5)  # the workers enter their receive loops right after
                return
            time.sleep(0.05)
        raise AssertionError(f"kamailio did not start:\n{self.tail()}")

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def errors(self) -> list[str]:
        """Log lines of Python exceptions and ERRORs from the KEMI script."""
        text = self.log.read_text(errors="replace")
        return [
            line
            for line in text.splitlines()
            if "Traceback" in line or ("ERROR" in line and "app_python3" in line)
        ]


@dataclass
class Sipp:
    """sipp runs against one Kamailio; received and sent messages go to trace files."""

    net: Net
    workdir: Path
    target: str
    runs: int = 0

    def _argv(
        self, scenario: str, port: int, keys: Mapping[str, str], extra: list[str]
    ) -> list[str]:
        self.runs += 1
        argv = ["sipp", self.target, "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1"]
        argv += ["-p", str(port), "-nostdin", "-timeout", f"{int(STEP_TIMEOUT)}s"]
        argv += ["-mp", str(20000 + port % 1500 * 8)]  # media ports below the ephemeral range
        argv += ["-timeout_error", "-trace_msg", "-message_file"]
        argv += [str(self.workdir / f"sipp-{self.runs}-{scenario}.log")]
        for name, value in keys.items():
            argv += ["-key", name, value]
        return argv + extra

    def run(self, scenario: str, calls: int = 1, **keys: str) -> str:
        """Run a client scenario to its end; return its message trace."""
        port = self.net.port()
        argv = self._argv(scenario, port, keys, ["-m", str(calls)])
        out = subprocess.run(
            self.net.prefix() + argv, capture_output=True, timeout=STEP_TIMEOUT + 10
        )
        trace = self._trace(scenario)
        if out.returncode != 0:
            raise AssertionError(
                f"sipp {scenario} failed ({out.returncode}):\n{out.stderr[-2000:]!r}\n{trace}"
            )
        return trace

    def message(
        self, user: str, domain: str, text: str, contact: str, sender: str = "alice"
    ) -> str:
        """Send one MESSAGE; return the status code of its final reply."""
        trace = self.run(
            "message.xml", user=user, domain=domain, from_user=sender, contact=contact, text=text
        )
        replies = [line for line in trace.splitlines() if line.startswith("SIP/2.0 ")]
        return replies[-1].split()[1]

    def register(self, user: str, domain: str, contact: str, expires: int = 300) -> None:
        """REGISTER ``contact`` for ``user``; fails unless answered 200."""
        self.run("register.xml", user=user, domain=domain, contact=contact, expires=str(expires))

    def _trace(self, scenario: str) -> str:
        path = self.workdir / f"sipp-{self.runs}-{scenario}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @contextmanager
    def server(self, scenario: str, calls: int, port: int = 0) -> Iterator[Receiver]:
        """A background UAS answering ``calls`` MESSAGEs, stopped by PID on exit."""
        port = port or self.net.port()
        argv = self._argv(scenario, port, {}, ["-m", str(calls)])
        trace = self.workdir / f"sipp-{self.runs}-{scenario}.log"
        proc = self.net.popen(argv, log=self.workdir / f"sipp-{self.runs}.out")
        receiver = Receiver(proc, trace, port)
        time.sleep(0.3)  # let it bind
        try:
            yield receiver
        finally:
            _stop(proc)


@dataclass
class Receiver:
    """A running sipp UAS."""

    proc: subprocess.Popen[bytes]
    trace: Path
    port: int

    def contact(self, user: str) -> str:
        return f"sip:{user}@127.0.0.1:{self.port}"

    def received(self) -> list[str]:
        """The MESSAGE requests received so far, as text; retransmissions (same Call-ID and
        CSeq) counted once."""
        if not self.trace.exists():
            return []
        chunks = self.trace.read_text(errors="replace").split("-" * 47)
        seen: dict[tuple[str, str], str] = {}
        for chunk in chunks:
            if "message received" not in chunk or "\n\nMESSAGE " not in chunk:
                continue
            message = chunk.split("\n\n", 1)[1]
            seen.setdefault((_header(message, "call-id"), _header(message, "cseq")), message)
        return list(seen.values())

    def wait(self, count: int, timeout: float = STEP_TIMEOUT) -> list[str]:
        """Wait until ``count`` MESSAGEs have arrived; return them."""

        def enough() -> list[str] | None:
            messages = self.received()
            return messages if len(messages) >= count else None

        return wait_for(enough, timeout)


def _header(message: str, name: str) -> str:
    for line in message.split("\n\n", 1)[0].splitlines()[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return ""


def wait_for(probe: Callable[[], T | None], timeout: float = STEP_TIMEOUT) -> T:
    """Poll ``probe`` until it returns something other than None (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {probe}")
        time.sleep(0.1)
