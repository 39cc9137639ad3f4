"""examples/udp_host.py end to end: the host runs as its own process on loopback, sipp (Debian
``sip-tester``) plays the user agents with the scenarios in tests/sipp/, and the rows are read
back from the host's store. Every process is stopped by its PID; every wait is bounded."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from libmsilo import MsiloSettings, Silo, SipRequest
from libmsilo.drivers.base import StoredMessage

from .backends import in_ci

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "udp_host.py"
SCENARIOS = Path(__file__).resolve().parent / "sipp"
ALICE = "sip:alice@127.0.0.1"
REMINDER = "sip:reminder@127.0.0.1"
WAIT = 20.0  # seconds: the bound of every wait (the relay timeout of the host is 2 s)


@pytest.fixture(scope="module")
def sipp() -> str:
    path = shutil.which("sipp")
    if path is None:
        message = "sipp is not installed (Debian package sip-tester)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port(ip: str = "127.0.0.1") -> int:
    """A UDP port on loopback ``ip`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((ip, 0))
        port: int = sock.getsockname()[1]
        return port


class Host:
    """examples/udp_host.py in a subprocess; its log lines are collected as they come."""

    def __init__(self, url: str, env: dict[str, str], ip: str = "127.0.0.1") -> None:
        self.url = url
        self.lines: list[str] = []
        self._changed = threading.Condition()
        command = [sys.executable, str(EXAMPLE), "--port", "0", "--db-url", url, "--timer-f", "2"]
        command += ["--offline-message", "$rU is offline", "--host", ip]
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        threading.Thread(target=self._read, daemon=True).start()
        where = re.escape(bracketed(ip))
        self.port = int(self.wait_log(rf"listening on udp {where}:(\d+)").group(1))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_log(self, pattern: str, count: int = 1) -> re.Match[str]:
        """The ``count``-th log line matching ``pattern``; fails after WAIT seconds."""

        def found() -> list[re.Match[str]]:
            return [m for m in map(re.compile(pattern).search, self.lines) if m is not None]

        with self._changed:
            self._changed.wait_for(lambda: len(found()) >= count, WAIT)
            matches = found()
        assert len(matches) >= count, f"no {pattern!r} in the host log:\n" + "\n".join(self.lines)
        return matches[count - 1]

    def rows(self, aor: str = ALICE) -> list[StoredMessage]:
        with Silo.from_settings(MsiloSettings(db_url=self.url), create_schema=False) as silo:
            return silo.list(aor)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class Sipp:
    """One sipp run of one call; ``remote`` is the host's port (None: server mode)."""

    def __init__(self, binary: str, scenario: str, trace: Path, remote: int | None, port: int,
                 ip: str = "127.0.0.1", **keys: str) -> None:  # fmt: skip
        self.trace = trace
        command = [binary, *([f"{bracketed(ip)}:{remote}"] if remote else []), "-sf",
                   str(SCENARIOS / scenario), "-m", "1", "-i", ip, "-bind_local", "-p",
                   str(port), "-nostdin", "-timeout", f"{WAIT:.0f}s", "-timeout_error",
                   "-trace_msg", "-message_file", str(trace), "-trace_err", "-error_file",
                   str(trace.with_suffix(".err"))]  # fmt: skip
        for name, value in keys.items():
            command += ["-key", name, value]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait(self) -> str:
        """Wait for sipp, assert exit status 0, return the messages it sent and received."""
        try:
            _, err = self.proc.communicate(timeout=WAIT + 10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=10)
            raise
        errors = self.trace.with_suffix(".err")
        detail = errors.read_text(errors="replace") if errors.exists() else err.decode()
        assert self.proc.returncode == 0, f"sipp exit {self.proc.returncode}: {detail}"
        return self.trace.read_text(errors="replace")


def host_env() -> dict[str, str]:
    """The host's environment: no MSILO_* of the developer; the reminder sweep each second."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSILO_")}
    return env | {"MSILO_REMINDER": REMINDER, "MSILO_SEND_TIME": "1"}


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    running = Host(f"sqlite:///{tmp_path / 'host.db'}", host_env())
    try:
        yield running
    finally:
        running.stop()


class Agents:
    """Runs the scenarios against the host: each run traced to a file of its own."""

    def __init__(
        self, binary: str, tmp_path: Path, host_port: int = 0, ip: str = "127.0.0.1"
    ) -> None:
        self.binary, self.dir, self.host_port, self.runs = binary, tmp_path, host_port, 0
        self.ip = ip  # of the host and the user agents

    def start(self, scenario: str, *, listen: int | None = None, **keys: str) -> Sipp:
        """Start sipp: a client of the host, or (``listen``) a UA waiting on that port."""
        self.runs += 1
        trace = self.dir / f"{self.runs}-{scenario}.log"
        remote = None if listen else self.host_port
        port = listen or free_port(self.ip)
        return Sipp(self.binary, scenario, trace, remote, port, self.ip, **keys)

    def run(self, scenario: str, **keys: str) -> str:
        return self.start(scenario, **keys).wait()

    def register(self, contact: str, user: str = "alice", expiry: str = "3600") -> str:
        return self.run("register.xml", aor_user=user, binding=contact, expiry=expiry)

    def message(self, text: str = "hello", *, notice_to: int | None = None) -> tuple[str, str]:
        """bob sends alice a MESSAGE; with ``notice_to`` bob's UA there answers the notice.
        Returns both traces (the second is "" without ``notice_to``)."""
        notice = self.start("answer_200.xml", listen=notice_to) if notice_to else None
        contact = f"<sip:bob@{bracketed(self.ip)}:{notice_to or free_port(self.ip)}>"
        trace = self.run("message.xml", aor_user="alice", from_user="bob", binding=contact,
                         text=text)  # fmt: skip
        return trace, "" if notice is None else notice.wait()


@pytest.fixture
def agents(sipp: str, host: Host, tmp_path: Path) -> Agents:
    return Agents(sipp, tmp_path, host.port)


def final_status(trace: str) -> str:
    """The status line of the last response sipp received."""
    return re.findall(r"message received \[\d+\] bytes :\n\n(SIP/2\.0 [^\n]+)", trace)[-1]


def contact(port: int, ip: str = "127.0.0.1") -> str:
    return f"<sip:alice@{bracketed(ip)}:{port}>"


def bracketed(ip: str) -> str:
    """``ip`` as the host part of a URI or Via (an IPv6 address in brackets)."""
    return f"[{ip}]" if ":" in ip else ip


# ---- registrar


def test_register_answers_with_bindings_tag_and_rport(agents: Agents, host: Host) -> None:
    port = free_port()
    trace = agents.register(contact(port), expiry="7200")  # asserts To tag, rport, received
    assert final_status(trace) == "SIP/2.0 200 OK"
    assert f"Contact: <sip:alice@127.0.0.1:{port}>;expires=3600" in trace  # capped
    assert "Expires: 3600" in trace
    host.wait_log(r"REGISTER sip:127\.0\.0\.1 from 127\.0\.0\.1:\d+ -> 200 OK \(1 binding")
    assert host.rows() == []


@pytest.mark.parametrize(
    "removal", ["*", "<sip:alice@127.0.0.1:{port}>", "<sip:alice@127.0.0.1:{port}>;expires=0"]
)
def test_deregistered_user_gets_the_next_message_stored(
    agents: Agents, host: Host, removal: str
) -> None:
    port = free_port()
    agents.register(contact(port))
    agents.run("unregister.xml", aor_user="alice", binding=removal.format(port=port))
    host.wait_log(r"REGISTER .* -> 200 OK \(0 binding", count=1)
    trace, _ = agents.message("after de-registration")
    assert final_status(trace) == "SIP/2.0 202 Accepted"
    host.wait_log(r"MESSAGE sip:alice@127\.0\.0\.1 from .* -> 202 Accepted \(offline; stored")
    assert [r.body for r in host.rows()] == [b"after de-registration\r\n"]


def test_binding_expires(agents: Agents, host: Host) -> None:
    agents.register(contact(free_port()), expiry="1")
    time.sleep(1.5)  # the binding's lifetime has passed
    trace, _ = agents.message("after expiry")
    assert final_status(trace) == "SIP/2.0 202 Accepted"
    host.wait_log(r"MESSAGE sip:alice@127\.0\.0\.1 from .* -> 202 Accepted \(offline; stored")
    assert [r.body for r in host.rows()] == [b"after expiry\r\n"]


def udp_exchange(port: int, request: str) -> str:
    """Send one request (LF line ends here) from a fresh socket; the response as text."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ua:
        ua.bind(("127.0.0.1", 0))
        ua.settimeout(WAIT)
        wire = request.format(ua=ua.getsockname()[1]).replace("\n", "\r\n").encode()
        ua.sendto(wire, ("127.0.0.1", port))
        return ua.recv(65535).decode()


REGISTER = (
    "REGISTER sip:127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{{ua}};branch=z9hG4bK{branch}\n"
    "From: <sip:alice@127.0.0.1>;tag=1\nTo: <sip:alice@127.0.0.1>\nCall-ID: {branch}\n"
    "CSeq: 1 REGISTER\nContact: {contact}\nExpires: {expires}\nContent-Length: 0\n\n"
)


def test_registrar_details(host: Host) -> None:
    bound = udp_exchange(host.port, REGISTER.format(branch="r1", contact=contact(5999), expires=60))
    assert "Contact: <sip:alice@127.0.0.1:5999>;expires=60\r\n" in bound
    # A contact's own expires parameter wins over the Expires header.
    gone = REGISTER.format(branch="r2", contact=contact(5999) + ";expires=0", expires=3600)
    answer = udp_exchange(host.port, gone)
    assert answer.startswith("SIP/2.0 200 OK") and "Contact:" not in answer
    # "*" removes everything, and only with Expires: 0 (RFC 3261 §10.3 step 6).
    star = udp_exchange(host.port, REGISTER.format(branch="r3", contact="*", expires=3600))
    assert star.startswith("SIP/2.0 400 Bad Request")
    options = REGISTER.format(branch="o1", contact="*", expires=0).replace("REGISTER", "OPTIONS")
    answer = udp_exchange(host.port, options)
    assert answer.startswith("SIP/2.0 405 ") and "Allow: REGISTER, MESSAGE" in answer
    assert host.rows() == []


def test_a_retransmission_gets_the_same_answer_and_stores_once(host: Host) -> None:
    message = (
        "MESSAGE sip:alice@127.0.0.1 SIP/2.0\n"
        "Via: SIP/2.0/UDP 127.0.0.1:5998;branch=z9hG4bKm1;rport\n"  # answer to the source port
        "From: <sip:bob@127.0.0.1:5998>;tag=1\nTo: <sip:alice@127.0.0.1>\nCall-ID: m1\n"
        "CSeq: 1 MESSAGE\nContent-Type: text/plain\nContent-Length: 2\n\nhi"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ua:
        ua.bind(("127.0.0.1", 0))
        ua.settimeout(WAIT)
        ua.sendto(message.replace("\n", "\r\n").encode(), ("127.0.0.1", host.port))
        first = ua.recv(65535)
        ua.sendto(message.replace("\n", "\r\n").encode(), ("127.0.0.1", host.port))
        again = ua.recv(65535)
    assert first.startswith(b"SIP/2.0 202 Accepted") and again == first  # same To tag too
    assert len(host.rows()) == 1


# ---- offline store, notice, dump


def test_offline_message_is_stored_and_the_sender_notified(agents: Agents, host: Host) -> None:
    notice_port = free_port()
    trace, notice = agents.message(notice_to=notice_port)
    assert final_status(trace) == "SIP/2.0 202 Accepted"
    assert f"MESSAGE sip:bob@127.0.0.1:{notice_port} SIP/2.0" in notice
    assert "\n\nalice is offline" in notice
    host.wait_log(r"notice to sip:bob@127\.0\.0\.1:\d+ -> 200 OK")
    [row] = host.rows()
    assert (row.src_addr, row.body, row.ctype) == ("sip:bob@127.0.0.1", b"hello\r\n", "text/plain")


def test_stored_message_is_delivered_on_register_and_deleted(agents: Agents, host: Host) -> None:
    agents.message("stored for later")
    [row] = host.rows()
    port = free_port()
    ua = agents.start("answer_200.xml", listen=port)
    agents.register(contact(port))
    delivered = ua.wait()
    assert f"MESSAGE sip:alice@127.0.0.1:{port} SIP/2.0" in delivered
    assert "] stored for later" in delivered  # behind the [Offline message - date] prefix
    host.wait_log(rf"dump {row.mid} to sip:alice@127\.0\.0\.1:{port} -> 200 OK delivered")
    assert host.rows() == []


def test_480_keeps_the_row_and_the_next_registration_retries(agents: Agents, host: Host) -> None:
    agents.message("try again")
    [row] = host.rows()
    first, second = free_port(), free_port()
    ua = agents.start("answer_480.xml", listen=first)
    agents.register(contact(first))
    ua.wait()
    host.wait_log(rf"dump {row.mid} to .*:{first} -> 480 Temporarily Unavailable retry")
    [kept] = host.rows()
    assert (kept.mid, kept.attempts, kept.lease_token) == (row.mid, 1, None)
    ua = agents.start("answer_200.xml", listen=second)
    agents.register(contact(second))
    assert "] try again" in ua.wait()
    host.wait_log(rf"dump {row.mid} to .*:{second} -> 200 OK delivered")
    assert host.rows() == []


# ---- stateful relay


def test_message_to_a_registered_user_is_relayed(agents: Agents, host: Host) -> None:
    port = free_port()
    ua = agents.start("answer_200.xml", listen=port)
    agents.register(contact(port))
    trace, _ = agents.message("live")
    assert final_status(trace) == "SIP/2.0 200 OK"
    relayed = ua.wait()
    assert f"MESSAGE sip:alice@127.0.0.1:{port} SIP/2.0" in relayed
    assert re.search(rf"Via: SIP/2\.0/UDP 127\.0\.0\.1:{host.port};branch=z9hG4bK", relayed)
    assert re.search(r"Via: SIP/2\.0/UDP 127\.0\.0\.1:\d+;rport=\d+;.*received=127", relayed)
    assert "Max-Forwards: 69" in relayed and "\n\nlive" in relayed
    host.wait_log(r"MESSAGE sip:alice@127\.0\.0\.1 from .* -> 200 OK \(relayed to")
    assert host.rows() == []


def test_relay_answered_480_is_stored_with_202(agents: Agents, host: Host) -> None:
    port = free_port()
    ua = agents.start("answer_480.xml", listen=port)
    agents.register(contact(port))
    trace, notice = agents.message("refused", notice_to=free_port())
    ua.wait()
    assert final_status(trace) == "SIP/2.0 202 Accepted"
    assert "\n\nalice is offline" in notice
    host.wait_log(r"-> 202 Accepted \(relay answered 480 Temporarily Unavailable; stored")
    assert [r.body for r in host.rows()] == [b"refused\r\n"]


def test_relay_timeout_is_stored_with_202(agents: Agents, host: Host) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # a UA that never answers
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        agents.register(contact(port))
        trace, _ = agents.message("nobody home")  # sipp retransmits meanwhile: one row only
        silent.settimeout(0)
        first = silent.recv(65535)
    assert first.startswith(f"MESSAGE sip:alice@127.0.0.1:{port} SIP/2.0".encode())
    assert final_status(trace) == "SIP/2.0 202 Accepted"
    host.wait_log(r"-> 202 Accepted \(relay answered 408 Request Timeout; stored")
    assert [r.body for r in host.rows()] == [b"nobody home\r\n"]


def test_a_host_on_ipv6_loopback_serves_its_bracketed_aors(sipp: str, tmp_path: Path) -> None:
    """``--host ::1``: AORs are sip:alice@[::1]; the default domain matches them, so a stored
    message is dumped on REGISTER and a due reminder reaches alice's binding over ::1."""
    host = Host(f"sqlite:///{tmp_path / 'host6.db'}", host_env(), ip="::1")
    try:
        agents, alice = Agents(sipp, tmp_path, host.port, ip="::1"), "sip:alice@[::1]"
        trace, _ = agents.message("over ipv6")
        assert final_status(trace) == "SIP/2.0 202 Accepted"
        [row] = host.rows(alice)
        port = free_port("::1")
        ua = agents.start("answer_200.xml", listen=port)
        agents.register(contact(port, "::1"))
        assert "] over ipv6" in ua.wait()
        host.wait_log(rf"dump {row.mid} to sip:alice@\[::1\]:{port} -> 200 OK delivered")
        port = free_port("::1")
        ua = agents.start("answer_200.xml", listen=port)
        agents.register(contact(port, "::1"))  # the newest binding gets the reminder
        mid = store_due_reminder(host, alice)
        assert f"MESSAGE sip:alice@[::1]:{port} SIP/2.0" in ua.wait()
        host.wait_log(rf"reminder {mid} to sip:alice@\[::1\] -> 200 OK delivered")
        assert host.rows(alice) == []
    finally:
        host.stop()


# ---- bad input, timers, command line


def test_content_length_beyond_the_body_is_answered_400(agents: Agents, host: Host) -> None:
    trace = agents.run("bad_length.xml")
    assert final_status(trace) == "SIP/2.0 400 Bad Request"
    assert re.search(r"To: <sip:alice@127\.0\.0\.1>;tag=\w+", trace)
    host.wait_log(r"MESSAGE sip:alice@127\.0\.0\.1 from .* -> 400 Bad Request \(body has 7")
    assert host.rows() == []


def test_due_reminder_is_sent_by_the_timers(agents: Agents, host: Host) -> None:
    port = free_port()
    ua = agents.start("answer_200.xml", listen=port)
    agents.register(contact(port))
    mid = store_due_reminder(host, ALICE)
    reminder = ua.wait()  # the host's timers send it to alice's binding
    assert f"MESSAGE sip:alice@127.0.0.1:{port} SIP/2.0" in reminder
    assert f"From: <{REMINDER}>" in reminder and "] stand-up" in reminder
    host.wait_log(rf"reminder {mid} to sip:alice@127\.0\.0\.1 -> 200 OK delivered")
    assert host.rows() == []


def store_due_reminder(host: Host, to: str) -> int | None:
    """Store a reminder to ``to`` ("stand-up", due five seconds ago) in the host's store."""
    request = SipRequest.parse(
        f"MESSAGE {to} SIP/2.0\r\nFrom: <sip:bob@127.0.0.1>;tag=1\r\nTo: <{to}>\r\n"
        "Call-ID: r1\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n\r\nstand-up".encode()
    )
    settings = MsiloSettings(db_url=host.url, reminder=REMINDER, send_time=1)
    with Silo.from_settings(settings, create_schema=False) as silo:
        return silo.store(request, send_at=int(time.time()) - 5).mid


def test_help_lists_the_options() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for option in ("--port", "--db-url", "--timer-f", "--max-expires"):
        assert option in done.stdout


def test_example_stays_small() -> None:
    assert len(EXAMPLE.read_text().splitlines()) < 300  # issue 12: small enough to read
