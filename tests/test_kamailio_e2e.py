"""libmsilo inside a real Kamailio (app_python3, examples/kamailio/) driven by sipp on loopback.

Offline MESSAGE -> 202 + notice; REGISTER -> stored MESSAGE delivered -> 200 -> row gone; a 480
keeps the row for a later retry; a reminder goes out at its time; two SIP workers dump one
mailbox at once without delivering anything twice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from libmsilo import MsiloSettings, Silo, StoredMessage
from tests import kamailio_harness as harness

pytestmark = pytest.mark.timeout(120)

MODULES = ("app_python3", "tm", "sl", "uac", "rtimer", "registrar", "usrloc")


class Stack:
    """Kamailio + libmsilo on SQLite, sipp, and a direct view of the store."""

    def __init__(self, net: harness.Net, workdir: Path) -> None:
        self.db_url = f"sqlite:///{workdir / 'msilo.db'}"
        port = net.port()
        env = dict(os.environ)
        env.update(
            **harness.embedded_env(),
            MSILO_DB_URL=self.db_url,
            MSILO_FROM_ADDRESS="sip:msilo@127.0.0.1",
            MSILO_OFFLINE_MESSAGE="$rU is offline; stored for later",
            MSILO_CONTENT_TYPE_HDR="Content-Type: text/plain\r\n",
            MSILO_REMINDER="sip:reminder@127.0.0.1",
            MSILO_SEND_TIME="1",
            MSILO_SND_TIME_AVP="snd_time",
            MSILO_TIMEZONE="UTC",
            MSILO_CHECK_TIME="1",
            MSILO_LEASE_TIME="32",
            # Reminders go to sip:user@127.0.0.1 (no port): route them through this Kamailio.
            MSILO_OUTBOUND_PROXY=f"sip:127.0.0.1:{port}",
        )
        self.kamailio = harness.Kamailio(
            net,
            workdir,
            harness.EXAMPLE / "kamailio.cfg",
            env,
            defines={"KEMI_SCRIPT": f'"{harness.EXAMPLE / "msilo_kemi.py"}"'},
            port=port,
        )
        self.kamailio.start()
        self.sipp = harness.Sipp(net, workdir, self.kamailio.address)
        self.silo = Silo.from_settings(MsiloSettings(db_url=self.db_url), create_schema=False)

    @property
    def domain(self) -> str:
        return self.kamailio.address

    def rows(self, user: str) -> list[StoredMessage]:
        return self.silo.list(f"sip:{user}@127.0.0.1")

    def message(self, user: str, text: str, contact: str) -> str:
        return self.sipp.message(user, self.domain, text, contact)

    def register(self, user: str, contact: str) -> None:
        self.sipp.register(user, self.domain, contact)

    def close(self) -> None:
        self.kamailio.stop()
        self.silo.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    harness.require_tools(*MODULES)
    workdir = tmp_path_factory.mktemp("kamailio")
    with harness.network() as net:
        s = Stack(net, workdir)
        try:
            yield s
        finally:
            s.close()
        assert not s.kamailio.errors(), s.kamailio.errors()


def _body(message: str) -> str:
    return message.split("\n\n", 1)[1].strip()


def test_offline_message_is_stored_answered_202_and_the_sender_notified(stack: Stack) -> None:
    with stack.sipp.server("uas_200.xml", calls=1) as alice:
        code = stack.message("bob", "hello bob", alice.contact("alice"))
        assert code == "202"
        (notice,) = alice.wait(1)
    assert notice.startswith("MESSAGE sip:alice@127.0.0.1:")
    assert "From: <sip:msilo@127.0.0.1>" in notice
    assert _body(notice) == "bob is offline; stored for later"
    (row,) = stack.rows("bob")
    assert row.body.rstrip() == b"hello bob"  # sipp ends the body with CRLF
    assert row.src_addr.startswith("sip:alice@")


def test_register_delivers_the_stored_message_and_the_200_deletes_it(stack: Stack) -> None:
    with stack.sipp.server("uas_200.xml", calls=1) as sink:
        assert stack.message("dave", "for dave", sink.contact("x")) == "202"
    assert len(stack.rows("dave")) == 1
    with stack.sipp.server("uas_200.xml", calls=1) as dave:
        stack.register("dave", dave.contact("dave"))
        (delivered,) = dave.wait(1)
    assert delivered.startswith(f"MESSAGE {dave.contact('dave')} SIP/2.0")
    assert _body(delivered).endswith("for dave")
    assert _body(delivered).startswith("[Offline message - ")
    harness.wait_for(lambda: True if not stack.rows("dave") else None)


def test_480_keeps_the_message_and_a_later_register_delivers_it(stack: Stack) -> None:
    with stack.sipp.server("uas_200.xml", calls=1) as sink:
        assert stack.message("carol", "for carol", sink.contact("x")) == "202"
    with stack.sipp.server("uas_480.xml", calls=1) as carol:
        stack.register("carol", carol.contact("carol"))
        carol.wait(1)
        row = harness.wait_for(
            lambda: r[0] if (r := stack.rows("carol")) and r[0].attempts == 1 else None
        )
    assert row.lease_token is None  # released: eligible at the next dump
    with stack.sipp.server("uas_200.xml", calls=1) as carol:
        stack.register("carol", carol.contact("carol"))
        (delivered,) = carol.wait(1)
    assert _body(delivered).endswith("for carol")
    harness.wait_for(lambda: True if not stack.rows("carol") else None)


def test_a_reminder_goes_out_at_its_time(stack: Stack) -> None:
    with stack.sipp.server("uas_200.xml", calls=1) as erin:
        stack.register("erin", erin.contact("erin"))
        due = int(time.time()) + 2
        when = datetime.fromtimestamp(due, UTC).strftime("%Y%m%d%H%M%S")
        trace = stack.sipp.run(
            "reminder.xml",
            user="erin",
            domain=stack.domain,
            from_user="alice",
            contact=erin.contact("alice"),
            text="call mum",
            send_at=when,
        )
        assert "SIP/2.0 202" in trace
        (row,) = stack.rows("erin")
        assert row.snd_time == due
        (reminder,) = erin.wait(1)
        assert time.time() >= due
    assert "From: <sip:reminder@127.0.0.1>" in reminder
    assert _body(reminder).endswith("call mum")
    assert _body(reminder).startswith("[Reminder message - ")
    harness.wait_for(lambda: True if not stack.rows("erin") else None)


def test_two_workers_dumping_one_mailbox_deliver_each_message_once(stack: Stack) -> None:
    count = 12
    with stack.sipp.server("uas_200.xml", calls=1) as sink:
        for i in range(count):
            assert stack.message("frank", f"note {i}", sink.contact("x")) == "202"
    assert len(stack.rows("frank")) == count
    with (
        stack.sipp.server("uas_200.xml", calls=count) as first,
        stack.sipp.server("uas_200.xml", calls=count) as second,
        ThreadPoolExecutor(2) as pool,
    ):
        done = [pool.submit(stack.register, "frank", ua.contact("frank")) for ua in (first, second)]
        for future in done:
            future.result()

        def all_delivered() -> list[str] | None:
            got = first.received() + second.received()
            return got if len(got) >= count else None

        delivered = harness.wait_for(all_delivered)
        time.sleep(1.0)  # a double delivery would arrive meanwhile
        delivered = first.received() + second.received()
    bodies = sorted(_body(m).rsplit("] ", 1)[1] for m in delivered)
    assert bodies == sorted(f"note {i}" for i in range(count))
    harness.wait_for(lambda: True if not stack.rows("frank") else None)
