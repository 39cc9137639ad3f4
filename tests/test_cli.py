"""The ``msilo`` command, via typer's CliRunner, on SQLite files (and memory:// where it fits)."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from libmsilo import SCHEMA_VERSION, MsiloSettings, Silo
from libmsilo.cli import app
from libmsilo.drivers.base import NewMessage
from tests.helpers import isolate_cli

runner = CliRunner()
ALICE = "sip:alice@example.com"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_cli(tmp_path, monkeypatch)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


def ok(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def fails(*args: str, code: int = 1) -> str:
    """Run a command that must fail with ONE line on stderr and no traceback."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert lines[0].startswith("msilo: error: ")
    return lines[0]


def silo_on(url: str, **values: object) -> Silo:
    return Silo.from_settings(MsiloSettings(db_url=url, timezone="UTC", **values))


def add_row(url: str, **fields: object) -> int:
    row = {
        "src_addr": "sip:bob@example.org",
        "dst_addr": ALICE,
        "username": "alice",
        "domain": "example.com",
        "body": b"hello",
        "ctype": "text/plain",
        "inc_time": 1_700_000_000,
        "exp_time": 4_000_000_000,
        "snd_time": 0,
    }
    row.update(fields)
    with silo_on(url) as silo:
        mid = silo.driver.insert(NewMessage(**row))  # type: ignore[arg-type]
    assert mid is not None
    return mid


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows if not r[0].startswith("sqlite_")}


# ---- init, migrate


def test_init_creates_the_table_and_drop_empties_it(url: str, tmp_path: Path) -> None:
    out = ok("init", "--db-url", url, "--table", "msgs")
    assert "created" in out and "'msgs'" in out
    assert "msgs" in tables(tmp_path / "store.db")
    with silo_on(url, db_table="msgs") as silo:
        silo.driver.insert(
            NewMessage("sip:b@x.org", ALICE, "alice", "example.com", b"x", "text/plain", 1, 2**40)
        )
        assert silo.count(ALICE) == 1
    assert "dropped and created" in ok("init", "--db-url", url, "--table", "msgs", "--drop")
    with silo_on(url, db_table="msgs") as silo:
        assert silo.count(ALICE) == 0


def test_migrate_adds_lease_columns_to_an_opensips_table(url: str, tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE silo (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "src_addr CHAR(255) NOT NULL DEFAULT '', dst_addr CHAR(255) NOT NULL DEFAULT '', "
            "username CHAR(64) NOT NULL DEFAULT '', domain CHAR(64) NOT NULL DEFAULT '', "
            "inc_time INTEGER NOT NULL DEFAULT 0, exp_time INTEGER NOT NULL DEFAULT 0, "
            "snd_time INTEGER NOT NULL DEFAULT 0, ctype CHAR(255) DEFAULT NULL, body BLOB)"
        )
        conn.execute(
            "INSERT INTO silo (src_addr, dst_addr, username, domain, inc_time, exp_time, ctype,"
            " body) VALUES ('sip:bob@example.org', 'sip:alice@example.com', 'alice',"
            " 'example.com', 1700000000, 4000000000, 'text/plain', X'6869')"
        )
    out = ok("migrate", "--db-url", url, "--profile", "opensips")
    assert "migrated" in out and "'id'" in out
    assert f"schema version 0 -> {SCHEMA_VERSION}" in " ".join(out.split())
    again = ok("migrate", "--db-url", url, "--profile", "opensips")
    assert f"at schema version {SCHEMA_VERSION} already" in " ".join(again.split())
    with sqlite3.connect(path) as conn:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(silo)")}
        assert {"lease_token", "lease_until", "attempts"} <= columns
        assert conn.execute("SELECT count(*) FROM silo").fetchone()[0] == 1
    shown = ok("show", "1", "--db-url", url, "--profile", "opensips")
    assert "hi" in shown


# ---- store, inbox, show, delete


def test_store_then_inbox_show_delete(url: str) -> None:
    out = ok("store", "--db-url", url, "--from", "sip:bob@example.org", "--to", ALICE,
             "--body", "Hi Alice", "--timezone", "UTC")  # fmt: skip
    mid = int(re.search(r"mid (\d+)", out).group(1))  # type: ignore[union-attr]
    listing = ok("inbox", ALICE, "--db-url", url, "--timezone", "UTC")
    assert "1 message" in listing and "sip:bob@example.org" in listing
    assert re.search(rf"\b{mid}\b", listing)
    shown = ok("show", str(mid), "--db-url", url, "--timezone", "UTC")
    assert "Hi Alice" in shown and "body (text)" in shown and "text/plain" in shown
    assert "alice@example.com" in shown and "waiting" in shown
    assert f"deleted message {mid}" in ok("delete", str(mid), "--db-url", url)
    assert "0 messages" in ok("inbox", ALICE, "--db-url", url)
    assert "no message with mid" in fails("show", str(mid), "--db-url", url)
    assert "no message with mid" in fails("delete", str(mid), "--db-url", url)


def test_inbox_limit_says_how_many_are_hidden(url: str) -> None:
    for n in range(3):
        add_row(url, body=f"m{n}".encode())
    out = ok("inbox", ALICE, "--db-url", url, "--limit", "2")
    assert "3 messages" in out and "1 more not shown" in out


def test_show_binary_body_as_hex_and_lease(url: str) -> None:
    mid = add_row(url, body=b"\xff\x00\xfe", ctype="application/octet-stream")
    with silo_on(url) as silo:
        silo.dump(owner=ALICE)  # leases it
    out = ok("show", str(mid), "--db-url", url)
    assert "body (hex)" in out and "ff00fe" in out
    assert "(live)" in out


def test_store_reminder_and_notice(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSILO_FROM_ADDRESS", "sip:registrar@example.com")
    monkeypatch.setenv("MSILO_OFFLINE_MESSAGE", "$tU is offline")
    monkeypatch.setenv("MSILO_CONTENT_TYPE_HDR", "Content-Type: text/plain")
    out = ok("store", "--db-url", url, "--from", "sip:bob@example.org", "--to", ALICE,
             "--body", "later", "--send-at", "20991231235959", "--timezone", "UTC")  # fmt: skip
    assert "stored reminder as mid" in out
    assert "offline notice" in out and "alice is offline" in out
    assert "MESSAGE sip:bob@example.org SIP/2.0" in out
    mid = re.search(r"mid (\d+)", out).group(1)  # type: ignore[union-attr]
    shown = ok("show", mid, "--db-url", url, "--timezone", "UTC")
    assert "2099-12-31 23:59:59" in shown and "reminder" in shown


def test_store_on_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    out = ok("store", "--db-url", "memory://", "--from", "sip:bob@example.org", "--to", ALICE,
             "--body", "x")  # fmt: skip
    assert "stored message as mid 1" in out
    assert "0 messages" in ok("inbox", ALICE, "--db-url", "memory://")


CAPTURED = (
    "MESSAGE sip:alice@example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bK776sgdkse\r\n"
    'From: "Bob" <sip:bob@example.org>;tag=49583\r\n'
    "To: <sip:alice@example.com>\r\n"
    "Call-ID: asd88asd77a@192.0.2.4\r\n"
    "CSeq: 1 MESSAGE\r\n"
    "Content-Type: text/plain;charset=utf-8\r\n"
    "Content-Length: 12\r\n"
    "\r\n"
    "Hello\r\nAlice"
)


@pytest.mark.parametrize("line_end", ["\r\n", "\n"])
def test_store_a_captured_message_file(url: str, tmp_path: Path, line_end: str) -> None:
    head, body = CAPTURED.split("\r\n\r\n")
    capture = tmp_path / "message.sip"
    capture.write_bytes((head.replace("\r\n", line_end) + line_end * 2 + body + "\n").encode())
    out = ok("store", "--file", str(capture), "--db-url", url, "--timezone", "UTC")
    mid = int(re.search(r"stored message as mid (\d+)", out).group(1))  # type: ignore[union-attr]
    with silo_on(url) as silo:
        row = silo.get(mid)
    assert row is not None
    assert (row.src_addr, row.dst_addr, row.username, row.domain) == (
        "sip:bob@example.org", ALICE, "alice", "example.com")  # fmt: skip
    assert (row.body, row.ctype) == (b"Hello\r\nAlice", "text/plain;charset=utf-8")


def test_store_a_message_from_stdin(url: str) -> None:
    result = runner.invoke(app, ["store", "--file", "-", "--db-url", url], input=CAPTURED)
    assert result.exit_code == 0, result.output
    with silo_on(url) as silo:
        assert [r.body for r in silo.list(ALICE)] == [b"Hello\r\nAlice"]


def test_store_file_errors(url: str, tmp_path: Path) -> None:
    capture = tmp_path / "register.sip"
    capture.write_text(CAPTURED.replace("MESSAGE sip:", "REGISTER sip:", 1))
    assert "not a MESSAGE" in fails("store", "--file", str(capture), "--db-url", url)
    capture.write_text(CAPTURED.replace("Content-Length: 12", "Content-Length: 50"))
    line = fails("store", "--file", str(capture), "--db-url", url)
    assert "InvalidRequest" in line and "Content-Length says 50" in line
    assert "missing.sip" in fails("store", "--file", str(tmp_path / "missing.sip"))
    mixed = ("store", "--file", str(capture), "--body", "x", "--db-url", url)
    assert "--file takes the whole MESSAGE" in fails(*mixed, code=2)
    assert "give --from, --to and --body" in fails("store", "--to", ALICE, code=2)
    with silo_on(url) as silo:
        assert silo.count(ALICE) == 0


def test_store_takes_name_addr_values(url: str) -> None:
    out = ok("store", "--db-url", url, "--from", '"Alice Liddell" <sip:alice@example.com>',
             "--to", "Bob <sip:bob@example.org;transport=udp>", "--body", "hi")  # fmt: skip
    mid = int(re.search(r"mid (\d+)", out).group(1))  # type: ignore[union-attr]
    with silo_on(url) as silo:
        row = silo.get(mid)
    assert row is not None
    assert (row.src_addr, row.username, row.domain) == (ALICE, "bob", "example.org")
    assert row.dst_addr == "sip:bob@example.org;transport=udp"


# ---- purge, stats


def test_purge_owner_and_expired(url: str) -> None:
    add_row(url)
    add_row(url)
    add_row(url, username="carol", dst_addr="sip:carol@example.com", exp_time=1_700_000_100)
    assert "deleted 1 expired message\n" in ok("purge", "--expired", "--db-url", url)
    assert f"deleted 2 messages of {ALICE}" in ok("purge", ALICE, "--db-url", url)
    assert f"deleted 0 messages of {ALICE}" in ok("purge", ALICE, "--db-url", url)
    add_row(url)
    assert f"deleted 1 message of {ALICE}\n" in ok("purge", ALICE, "--db-url", url)


@pytest.mark.parametrize("args", [(), (ALICE, "--expired")])
def test_purge_needs_exactly_one_target(url: str, args: tuple[str, ...]) -> None:
    assert "exactly one" in fails("purge", *args, "--db-url", url, code=2)


def test_stats_for_an_owner(url: str) -> None:
    add_row(url)
    add_row(url, snd_time=4_000_000_000 - 10)
    add_row(url)
    with silo_on(url) as silo:
        silo.dump(owner=ALICE, max_messages=1)
    out = ok("stats", ALICE, "--db-url", url, "--timezone", "UTC")
    counts = dict(re.findall(r"(unexpired messages|offline messages|reminders pending|"
                             r"in delivery \(leased\))\s*│\s*(\d+)", out))  # fmt: skip
    assert counts == {
        "unexpired messages": "3",
        "offline messages": "2",
        "reminders pending": "1",
        "in delivery (leased)": "1",
    }


def test_stats_without_owner_is_honest(url: str) -> None:
    ok("init", "--db-url", url)
    out = ok("stats", "--db-url", url)
    assert "reachable" in out and "no global counters" in out


# ---- config


CFG = """
loadmodule "msilo.so"
modparam("msilo", "db_url", "sqlite:///srv.db")  # the server's store
modparam("msilo", "from_address", "sip:registrar@example.net")
modparam("msilo", "offline_message", "$tU is offline")
modparam("msilo", "content_type_hdr", "Content-Type: text/plain\\r\\n")
modparam("msilo", "expire_time", 7200)
modparam("msilo", "sc_mid", "id")
"""


def test_config_opensips_table_and_json(tmp_path: Path) -> None:
    cfg = tmp_path / "opensips.cfg"
    cfg.write_text(CFG)
    table = ok("config", "--opensips", str(cfg))
    assert "sip:registrar@example.net" in table and "7200" in table
    values = json.loads(ok("config", "--kamailio", str(cfg), "--json"))
    assert values["expire_time"] == 7200
    assert values["sc_mid"] == "id"
    assert values["profile"] == "kamailio"
    assert values["check_time"] == 60  # the real modules' default, from the profile


def test_config_errors(tmp_path: Path) -> None:
    assert "exactly one" in fails("config", code=2)
    cfg = tmp_path / "a.cfg"
    cfg.write_text(CFG)
    assert "exactly one" in fails("config", "--opensips", str(cfg), "--kamailio", str(cfg), code=2)
    assert "missing.cfg" in fails("config", "--opensips", str(tmp_path / "missing.cfg"))
    bad = tmp_path / "bad.cfg"
    bad.write_text('modparam("msilo", "expire_time", 0)\n')
    assert "expire_time" in fails("config", "--opensips", str(bad))


# ---- errors


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (("store", "--from", "not a uri", "--to", ALICE, "--body", "x"), "Invalid"),
        (
            ("store", "--from", "sip:b@x.org", "--to", ALICE, "--body", "x", "--send-at", "2024"),
            "InvalidSendTime",
        ),
        (("inbox", "bob@example.com"), "InvalidURI"),
        (("inbox", ALICE, "--profile", "asterisk"), "SettingsError"),
        (("inbox", ALICE, "--timezone", "Mars/Olympus"), "SettingsError"),
        (("inbox", ALICE, "--table", "x;drop"), "SettingsError"),
    ],
)
def test_bad_input_is_one_line(url: str, args: tuple[str, ...], expect: str) -> None:
    assert expect in fails(*args, "--db-url", url)


def test_unreachable_database_is_one_line() -> None:
    line = fails("inbox", ALICE, "--db-url", "postgresql+psycopg://root@127.0.0.1:1/x")
    assert "StorageUnavailable" in line


def test_stats_reports_an_unreachable_store() -> None:
    line = fails("stats", "--db-url", "postgresql+psycopg://root@127.0.0.1:1/x")
    assert "StorageUnavailable" in line


def test_unknown_scheme_is_one_line() -> None:
    assert "no driver" in fails("stats", "--db-url", "gopher://x/")


def test_missing_table_is_a_storage_error_that_says_to_init(url: str) -> None:
    ok("init", "--db-url", url)
    line = fails("inbox", ALICE, "--db-url", url, "--table", "nothere")
    assert "StorageError" in line and "nothere" in line and "run `msilo init`" in line


@pytest.mark.parametrize(
    "args",
    [("inbox", ALICE), ("stats",), ("stats", ALICE), ("show", "1"), ("delete", "1"),
     ("purge", "--expired")],
)  # fmt: skip
def test_a_store_never_initialised_says_to_init_and_creates_no_file(
    url: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    line = fails(*args, "--db-url", url)
    assert "no message store at" in line and "run `msilo init`" in line
    assert not (tmp_path / "store.db").exists()


def test_a_bad_zone_is_named_once(url: str) -> None:
    line = fails("inbox", ALICE, "--db-url", url, "--timezone", "Mars/Olympus")
    assert line.endswith("SettingsError: timezone: unknown IANA zone name 'Mars/Olympus'")


def test_wide_addresses_are_wrapped_not_cut(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sender = "sip:" + "b" * 40 + "@" + "sender-domain." * 3 + "example.org"
    add_row(url, src_addr=sender)
    monkeypatch.setenv("COLUMNS", "80")
    out = ok("inbox", ALICE, "--db-url", url, "--timezone", "UTC")
    assert "…" not in out
    cells = [line.split("│") for line in out.splitlines() if line.startswith("│")]
    assert "".join(cell[2].strip() for cell in cells) == sender  # the "from" column, folded
    assert max(map(len, out.splitlines())) <= 80


# ---- demo


def _sip_starts(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("MESSAGE ")]


def test_demo_plays_the_scenario(tmp_path: Path) -> None:
    out = ok("demo")
    assert _sip_starts(out) == [
        "MESSAGE sip:bob@192.0.2.4:5060 SIP/2.0",  # the offline notice, to bob's Contact
        "MESSAGE sip:alice@192.0.2.7:5060 SIP/2.0",  # the two stored messages
        "MESSAGE sip:alice@192.0.2.7:5060 SIP/2.0",
        "MESSAGE sip:alice@example.com SIP/2.0",  # the reminder
    ]
    assert "[Offline message - " in out and "Hi Alice, are you there?" in out
    assert "[Reminder message - " in out and "From: <sip:reminder@example.com>" in out
    assert out.count("<- 200 OK: delivered") == 3
    assert "inbox is empty" in out
    stats = dict(re.findall(r"(\w+_\w+)\s*│\s*(\d+)", out))
    assert stats["stored_messages"] == "3"
    assert stats["dumped_messages"] == "2"
    assert stats["dumped_reminders"] == "1"
    assert not list(tmp_path.glob("*.db")), "the demo left a database behind"


def test_demo_on_a_given_database_leaves_it_as_it_was(url: str, tmp_path: Path) -> None:
    ok("init", "--db-url", url)
    before = tables(tmp_path / "store.db")
    assert before == {"silo", "msilo_version"}
    out = ok("demo", "--db-url", url)
    assert len(_sip_starts(out)) == 4
    assert tables(tmp_path / "store.db") == before


def test_demo_on_memory() -> None:
    assert "inbox is empty" in ok("demo", "--db-url", "memory://")


@pytest.mark.parametrize("command", ["demo", "init"])
def test_unreachable_database_when_creating_the_schema(command: str) -> None:
    line = fails(command, "--db-url", "postgresql+psycopg://root@127.0.0.1:1/x")
    assert "StorageUnavailable" in line and "127.0.0.1" in line
