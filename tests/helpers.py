"""Builders shared by the behaviour tests: requests, a settable clock, a Silo on the backend
the test runs on (the ``backend`` fixture of ``tests/conftest.py``; memory without it)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from libmsilo import MsiloSettings, Silo, SipRequest
from libmsilo.drivers import Driver
from libmsilo.drivers.memory import MemoryDriver

T0 = 1_700_000_000  # Tue Nov 14 22:13:20 2023 UTC


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def isolate_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No MSILO_* variable or .env file of the developer leaks into a command; rich tables are
    wide enough not to wrap values."""
    for name in list(os.environ):
        if name.startswith("MSILO_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")


def settings(**values: Any) -> MsiloSettings:
    """Settings for tests: memory store, UTC unless told otherwise."""
    values.setdefault("db_url", "memory://")
    values.setdefault("timezone", "UTC")
    return MsiloSettings(**values)


#: Opens a fresh driver for :func:`make_silo`; the ``backend`` fixture swaps it per test.
new_driver: Callable[[], Driver] = MemoryDriver


def make_silo(clock: Clock | None = None, **values: Any) -> Silo:
    """A Silo on a fresh, empty driver of the test's backend."""
    return Silo(new_driver(), settings(**values), clock=clock or Clock())


def message(
    to: str = "sip:alice@example.com",
    ruri: str | None = None,
    body: bytes = b"hello",
    *,
    frm: str = '"Bob" <sip:bob@example.org>;tag=a73kszlfl',
    ctype: str | None = "text/plain",
    extra: list[tuple[str, str]] | None = None,
    **kw: Any,
) -> SipRequest:
    """An incoming MESSAGE."""
    headers = [
        ("Via", "SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bK776sgdkse"),
        ("From", frm),
        ("To", f"<{to}>"),
        ("Call-ID", "asd88asd77a@192.0.2.4"),
        ("CSeq", "1 MESSAGE"),
    ]
    if ctype is not None:
        headers.append(("Content-Type", ctype))
    headers += extra or []
    return SipRequest("MESSAGE", ruri or to, headers, body, **kw)


def register(
    aor: str = "sip:alice@example.com",
    contact: str | None = "<sip:alice@192.0.2.7:5060>",
    *,
    expires: str | None = "3600",
    extra: list[tuple[str, str]] | None = None,
) -> SipRequest:
    """A REGISTER for ``aor``."""
    headers = [
        ("Via", "SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKnashds7"),
        ("From", f"<{aor}>;tag=456248"),
        ("To", f"<{aor}>"),
        ("Call-ID", "843817637684230@998sdasdh09"),
        ("CSeq", "1826 REGISTER"),
    ]
    if contact is not None:
        headers.append(("Contact", contact))
    if expires is not None:
        headers.append(("Expires", expires))
    headers += extra or []
    return SipRequest("REGISTER", "sip:example.com", headers)


def run_threads(work: Callable[[int], object], n: int) -> None:
    """Run ``work(i)`` for i in ``range(n)``, one thread each, started together behind a
    barrier; raise the first error a thread raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            work(i)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(120)
    assert not any(t.is_alive() for t in pool), "a thread did not finish"
    if errors:
        raise errors[0]
