"""libmsilo.kamailio against a stand-in for Kamailio's KSR module (the real one runs in
tests/test_kamailio_e2e.py): what each call reads from and hands to Kamailio."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from libmsilo import MsiloSettings, ReplyOutcome, Silo
from libmsilo.kamailio import KamailioMsilo, pythonpath

MESSAGE = (
    "MESSAGE sip:bob@example.org SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n"
    "From: <sip:alice@example.org>;tag=a\r\n"
    "To: <sip:bob@example.org>\r\n"
    "Call-ID: c1\r\n"
    "CSeq: 1 MESSAGE\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Length: 5\r\n\r\nhello"
)
REGISTER = (
    "REGISTER sip:example.org SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bK2\r\n"
    "From: <sip:bob@example.org>;tag=b\r\n"
    "To: <sip:bob@example.org>\r\n"
    "Call-ID: r1\r\n"
    "CSeq: 1 REGISTER\r\n"
    "Contact: <sip:bob@192.0.2.2:5060>\r\n"
    "Expires: 300\r\n"
    "Content-Length: 0\r\n\r\n"
)


class FakePV:
    def __init__(self, ksr: FakeKSR) -> None:
        self.ksr = ksr
        self.values: dict[str, Any] = {"$si": "192.0.2.1", "$sp": 5060}
        self.values.update({"$Ri": "192.0.2.9", "$Rp": 5060})

    def get(self, name: str) -> Any:
        return self.values.get(name)

    def sets(self, name: str, value: str) -> None:
        self.values[name] = value

    def seti(self, name: str, value: int) -> None:
        self.values[name] = value


class FakeKSR:
    """Records replies and uac_req_send calls; status codes for t_check_status."""

    def __init__(self) -> None:
        self.pv = FakePV(self)
        self.replies: list[tuple[str, int, str]] = []
        self.sent: list[dict[str, Any]] = []
        self.logged: list[str] = []
        self.status = 480
        self.uac_result = 1
        self.flags: set[int] = set()
        ksr = self

        class SL:
            def send_reply(self, code: int, reason: str) -> int:
                ksr.replies.append(("sl", code, reason))
                return 1

        class TM:
            def t_is_canceled(self) -> int:
                return -1

            def t_check_status(self, code: str) -> bool:
                return int(code) == ksr.status

            def t_reply(self, code: int, reason: str) -> int:
                ksr.replies.append(("tm", code, reason))
                return 1

        class UAC:
            def uac_req_send(self) -> int:
                values = ksr.pv.values
                ksr.sent.append({k[9:-1]: v for k, v in values.items() if k.startswith("$uac_req")})
                return ksr.uac_result

        self.sl, self.tm, self.uac = SL(), TM(), UAC()

    def err(self, text: str) -> None:
        self.logged.append(text)

    def isflagset(self, flag: int) -> bool:
        return flag in self.flags

    info = err


def _settings(tmp_path: Path, **extra: Any) -> MsiloSettings:
    return MsiloSettings(
        db_url=f"sqlite:///{tmp_path / 'k.db'}",
        from_address="sip:msilo@example.org",
        offline_message="$rU is offline",
        content_type_hdr="Content-Type: text/plain\r\n",
        **extra,
    )


@pytest.fixture
def ksr() -> FakeKSR:
    return FakeKSR()


@pytest.fixture
def msilo(tmp_path: Path, ksr: FakeKSR) -> KamailioMsilo:
    adapter = KamailioMsilo(_settings(tmp_path), ksr=ksr)
    yield adapter
    adapter.close()


def test_store_replies_202_and_sends_the_notice_without_a_reply_handler(
    msilo: KamailioMsilo, ksr: FakeKSR
) -> None:
    ksr.pv.values["$mb"] = MESSAGE
    assert msilo.store() == 1
    assert ksr.replies == [("sl", 202, "Accepted")]
    (notice,) = ksr.sent
    assert notice["ruri"] == "sip:alice@example.org"
    assert notice["furi"] == "sip:msilo@example.org"
    assert notice["body"] == "bob is offline"
    assert notice["hdrs"] == "Content-Type: text/plain\r\n"
    assert notice["evroute"] == 0 and notice["evparam"] == ""
    assert msilo.silo.count("sip:bob@example.org") == 1


def test_the_skip_notification_flag_suppresses_the_notice(tmp_path: Path, ksr: FakeKSR) -> None:
    adapter = KamailioMsilo(_settings(tmp_path, skip_notification_flag=5), ksr=ksr)
    ksr.pv.values["$mb"] = MESSAGE
    ksr.flags.add(5)
    assert adapter.store() == 1
    assert ksr.sent == [] and ksr.replies == [("sl", 202, "Accepted")]
    ksr.flags.clear()
    assert adapter.store() == 1
    assert len(ksr.sent) == 1
    adapter.close()


def test_a_kept_call_id_goes_back_on_the_dumped_message(tmp_path: Path, ksr: FakeKSR) -> None:
    adapter = KamailioMsilo(_settings(tmp_path, use_mode=1), ksr=ksr)
    ksr.pv.values["$mb"] = MESSAGE
    adapter.store(notify=False)
    ksr.pv.values["$mb"] = REGISTER
    assert adapter.dump() == 1
    assert ksr.sent[0]["callid"] == "c1"
    adapter.close()


def test_a_bad_request_is_not_stored_and_not_answered(msilo: KamailioMsilo, ksr: FakeKSR) -> None:
    ksr.pv.values["$mb"] = MESSAGE.replace("From: <sip:alice@example.org>;tag=a\r\n", "")
    assert msilo.store() == -1
    assert ksr.replies == [] and ksr.sent == []
    assert "not stored" in ksr.logged[0]


def test_dump_sends_with_mid_and_token_and_the_reply_finishes_the_row(
    msilo: KamailioMsilo, ksr: FakeKSR
) -> None:
    ksr.pv.values["$mb"] = MESSAGE
    msilo.store(notify=False)
    ksr.pv.values["$mb"] = REGISTER
    assert msilo.dump() == 1
    (sent,) = ksr.sent
    assert sent["ruri"] == "sip:bob@192.0.2.2:5060"  # the registered contact
    assert sent["evroute"] == 1
    mid, token = sent["evparam"].split(":")
    row = msilo.silo.get(int(mid))
    assert row is not None and row.lease_token == token
    ksr.pv.values["$uac_req(evcode)"] = 480
    assert msilo.on_uac_reply() is ReplyOutcome.RETRY
    assert msilo.dump() == 1
    ksr.pv.values["$uac_req(evparam)"] = ksr.sent[-1]["evparam"]
    ksr.pv.values["$uac_req(evcode)"] = 200
    assert msilo.on_uac_reply() is ReplyOutcome.DELIVERED
    assert msilo.silo.get(int(mid)) is None


def test_a_reply_to_another_request_is_ignored(msilo: KamailioMsilo, ksr: FakeKSR) -> None:
    ksr.pv.values["$uac_req(evparam)"] = ""
    ksr.pv.values["$uac_req(evcode)"] = 200
    assert msilo.on_uac_reply() is ReplyOutcome.IGNORED


def test_a_failed_uac_send_counts_as_a_failed_attempt(msilo: KamailioMsilo, ksr: FakeKSR) -> None:
    ksr.pv.values["$mb"] = MESSAGE
    msilo.store(notify=False)
    ksr.pv.values["$mb"] = REGISTER
    ksr.uac_result = -1
    assert msilo.dump() == 1
    (row,) = msilo.silo.list("sip:bob@example.org")
    assert row.lease_token is None and row.attempts == 1


@pytest.mark.parametrize("status", [408, 480, 503])
def test_the_failure_route_stores_on_408_480_503(
    msilo: KamailioMsilo, ksr: FakeKSR, status: int
) -> None:
    ksr.status = status
    ksr.pv.values["$mb"] = MESSAGE
    ksr.pv.values["$ou"] = "sip:bob@example.org"
    assert msilo.store_failed() == 1
    assert ksr.replies == [("tm", 202, "Accepted")]
    assert msilo.silo.count("sip:bob@example.org") == 1


def test_the_failure_route_leaves_other_replies_and_own_requests(
    msilo: KamailioMsilo, ksr: FakeKSR
) -> None:
    ksr.pv.values["$mb"] = MESSAGE
    ksr.status = 486
    assert msilo.store_failed() == -1
    ksr.status = 480
    ksr.pv.values.update({"$si": "192.0.2.9", "$sp": 5060})  # sent by this Kamailio
    assert msilo.store_failed() == -1
    assert ksr.replies == []
    assert msilo.silo.count("sip:bob@example.org") == 0


def test_each_process_opens_its_own_silo(
    tmp_path: Path, ksr: FakeKSR, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[int] = []

    def factory(settings: MsiloSettings) -> Silo:
        opened.append(os.getpid())
        return Silo.from_settings(settings, create_schema=False)

    adapter = KamailioMsilo(_settings(tmp_path), ksr=ksr, factory=factory)
    assert opened == []  # nothing is opened before the fork
    adapter.child_init(1)
    first = adapter.silo
    assert adapter.silo is first and len(opened) == 1
    monkeypatch.setattr(os, "getpid", lambda: -5)  # as in a forked child
    assert adapter.silo is not first and len(opened) == 2
    adapter.close()
    first.close()


def test_each_process_stores_without_the_group_commit(tmp_path: Path, ksr: FakeKSR) -> None:
    settings = _settings(tmp_path)
    assert settings.group_commit  # the default: on
    adapter = KamailioMsilo(settings, ksr=ksr)
    ksr.pv.values["$mb"] = MESSAGE
    assert adapter.store() == 1
    assert not adapter.silo.settings.group_commit  # one request at a time per process
    assert adapter.settings is settings and settings.group_commit
    assert adapter.silo.count("sip:bob@example.org") == 1
    adapter.close()


def test_the_timer_sends_due_reminders(tmp_path: Path, ksr: FakeKSR) -> None:
    settings = _settings(tmp_path, reminder="sip:reminder@example.org", send_time=1)
    adapter = KamailioMsilo(settings, ksr=ksr)
    ksr.pv.values["$mb"] = MESSAGE
    adapter.silo.store(adapter.request(), send_at=1_000)
    assert adapter.on_timer() == 1
    (sent,) = ksr.sent
    assert sent["furi"] == "sip:reminder@example.org"
    assert sent["ruri"] == "sip:bob@example.org"
    adapter.close()


def test_pythonpath_lets_another_interpreter_import_libmsilo(tmp_path: Path) -> None:
    path = pythonpath({})
    # A venv made with --system-site-packages finds its dependencies in its base's as well.
    assert set(site.getsitepackages()) <= set(path.split(os.pathsep))
    assert path.split(os.pathsep)[0] == str(Path(__file__).resolve().parent.parent)
    out = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path[:0] = sys.argv[1].split(':');"
         "import libmsilo.kamailio, pydantic, sqlalchemy; print('ok')", path],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert out.stdout.strip() == "ok", out.stderr
