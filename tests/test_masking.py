"""Credentials never shown: one URL with a known password through every path that prints it.

Each command and API call that can print, log or raise with the store's URL is run with a
URL holding ``SECRET``; its stdout, stderr, log records (with tracebacks) and exception chains
must not contain it. Real servers answer where one is reachable (trust authentication ignores
the password), closed loopback ports where the failure path is the point.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from libmsilo import AsyncSilo, MsiloSettings, Silo
from libmsilo.bench import BenchConfig, run_bench
from libmsilo.cli import app
from libmsilo.errors import MsiloError, SettingsError, StorageError
from libmsilo.masking import mask_text, mask_url
from tests.backends import backend_url
from tests.helpers import isolate_cli

SECRET = "S3cretPW-9f4e"
runner = CliRunner()


# ---- the helper -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg://app:pw@h:5432/db", "postgresql+psycopg://app:***@h:5432/db"),
        ("mysql://opensips:S3cret@localhost/opensips", "mysql://opensips:***@localhost/opensips"),
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://u:pw@h:6380/1?ssl_cert_reqs=none", "rediss://u:***@h:6380/1?ssl_cert_reqs=none"),
        ("redis+cluster://:pw@h1:7000,h2:7001", "redis+cluster://:***@h1:7000,h2:7001"),
        ("mongodb://u:pw@h1,h2/db?tls=true", "mongodb://u:***@h1,h2/db?tls=true"),
        ("mongodb+srv://u:p%40w@c.example.net/db", "mongodb+srv://u:***@c.example.net/db"),
        ("postgresql://u:a@b/c?d@h/db", "postgresql://u:***@h/db"),  # unescaped @ / ?
        (
            "postgresql://u@h/db?sslmode=require&password=pw",
            "postgresql://u@h/db?sslmode=require&password=***",
        ),
        (
            "postgresql://h/db?sslpassword=pw&sslmode=verify-full",
            "postgresql://h/db?sslpassword=***&sslmode=verify-full",
        ),
        ("mysql+pymysql://root@127.0.0.1/test", "mysql+pymysql://root@127.0.0.1/test"),
        ("sqlite:////var/lib/msilo/msilo.db", "sqlite:////var/lib/msilo/msilo.db"),
        ("memory://", "memory://"),
        ("user:pw@host/db", "user:***@host/db"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_mask_text_masks_every_url_it_quotes() -> None:
    text = "db_url: 'postgresql://app:p@ss@h/db' failed; also mysql://u:x@h2?password=y&a=1"
    assert mask_text(text) == (
        "db_url: 'postgresql://app:***@h/db' failed; also mysql://u:***@h2?password=***&a=1"
    )
    assert mask_text("sip:alice:pw@example.com has no //") == "sip:alice:pw@example.com has no //"


def test_errors_mask_their_own_message() -> None:
    exc = StorageError(f"could not reach redis://:{SECRET}@h:1/0")
    assert SECRET not in str(exc) and "redis://:***@h:1/0" in str(exc)


def test_settings_repr_and_str_mask_the_password() -> None:
    settings = MsiloSettings(db_url=f"postgresql+psycopg://app:{SECRET}@h/db")
    for shown in (repr(settings), str(settings), f"{settings}", f"{settings!r}"):
        assert SECRET not in shown
        assert "postgresql+psycopg://app:***@h/db" in shown
    assert settings.db_url.endswith(f":{SECRET}@h/db")  # the value itself is unchanged


# ---- every path -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_cli(tmp_path, monkeypatch)
    monkeypatch.setenv("MSILO_DB_TIMEOUT", "1")


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    yield caplog
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for record in caplog.records:
        assert SECRET not in formatter.format(record), record.getMessage()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _with_password(url: str) -> str:
    """``url`` (a test server's) with user info holding SECRET."""
    scheme, _, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    user = creds.split(":", 1)[0] if at else ""
    return f"{scheme}://{user}:{SECRET}@{host}"


def _unreachable() -> list[str]:
    port = _closed_port()
    return [
        f"postgresql+psycopg://app:{SECRET}@127.0.0.1:{port}/db",
        f"mysql+pymysql://app:{SECRET}@127.0.0.1:{port}/db",
        f"redis://app:{SECRET}@127.0.0.1:{port}/0",
        f"redis+cluster://:{SECRET}@127.0.0.1:{port}",
        f"mongodb://app:{SECRET}@127.0.0.1:{port}/db?serverSelectionTimeoutMS=300",
    ]


_MALFORMED = [
    f"postgresql+psycopg://app:{SECRET}@h:9x/db",
    f"mysql+pymysql://app:{SECRET}@[::1/db",
    f"redis://app:{SECRET}@h:99999/0",
    f"redis+cluster://:{SECRET}@h:1/3",
    f"mongodb://app:{SECRET}@h:99999/db",
    f"mongodb://app:{SECRET}@h/db?authSource=",
    f"gopher://app:{SECRET}@h/",
    f"app:{SECRET}@h/db",
]


def _shown(result: object) -> str:
    out = getattr(result, "stdout", "") + getattr(result, "stderr", "")
    exc = getattr(result, "exception", None)
    if exc is not None and not isinstance(exc, SystemExit):
        out += "".join(traceback.format_exception(exc))
    return out


_CLI_COMMANDS = [
    ["init"],
    ["migrate"],
    ["inbox", "sip:alice@example.com"],
    ["show", "1"],
    ["delete", "1"],
    ["purge", "sip:alice@example.com"],
    ["stats"],
    ["stats", "sip:alice@example.com"],
    ["store", "--from", "sip:b@example.org", "--to", "sip:alice@example.com", "--body", "x"],
    ["demo"],
]


@pytest.mark.parametrize("command", _CLI_COMMANDS, ids=lambda c: c[0] + str(len(c)))
def test_cli_commands_on_bad_and_unreachable_urls(
    command: list[str], logs: pytest.LogCaptureFixture
) -> None:
    for url in [*_MALFORMED, *_unreachable()]:
        result = runner.invoke(app, [*command, "--db-url", url])
        shown = _shown(result)
        assert SECRET not in shown, (url, shown)
        # Failed with one line, or (Redis migrate: nothing to do) said where, masked.
        assert "msilo: error:" in result.stderr or ":***@" in result.stdout, shown


@pytest.mark.parametrize("kind", ["postgresql", "mysql", "redis"])
def test_cli_commands_on_a_real_server(kind: str, logs: pytest.LogCaptureFixture) -> None:
    """Every command against a real server given a URL with a password: whatever the server
    says (trust authentication accepts it; Redis and MariaDB refuse it), nothing shows it."""
    url = _with_password(backend_url(kind))
    table = f"msilo_mask_{os.getpid()}"
    for command in [*_CLI_COMMANDS, ["init", "--drop"], ["purge", "--expired"]]:
        extra = [] if command[0] == "demo" else ["--table", table]
        result = runner.invoke(app, [*command, "--db-url", url, *extra])
        shown = _shown(result)
        assert SECRET not in shown, (command, shown)
    if kind == "postgresql":  # trust authentication: the commands really ran
        result = runner.invoke(app, ["init", "--db-url", url, "--table", table])
        assert result.exit_code == 0 and "root:***@" in result.stdout
        with Silo.from_settings(MsiloSettings(db_url=url, db_table=table)) as silo:
            silo.driver.drop_schema()


def test_api_errors_and_their_causes(logs: pytest.LogCaptureFixture) -> None:
    for url in [*_MALFORMED, *_unreachable()]:
        with pytest.raises(MsiloError) as info:
            silo = Silo.from_settings(MsiloSettings(db_url=url, db_timeout=1))
            try:
                silo.count("sip:alice@example.com")
            finally:
                silo.close()
        shown = "".join(traceback.format_exception(info.value))
        assert SECRET not in shown, (url, shown)


def test_async_api_errors(logs: pytest.LogCaptureFixture) -> None:
    async def open_and_count(url: str) -> None:
        silo = await AsyncSilo.from_settings(MsiloSettings(db_url=url, db_timeout=1))
        try:
            await silo.count("sip:alice@example.com")
        finally:
            await silo.close()

    for url in [*_MALFORMED[:2], *_unreachable()[:3]]:
        with pytest.raises(MsiloError) as info:
            asyncio.run(open_and_count(url))
        assert SECRET not in "".join(traceback.format_exception(info.value)), url


def test_settings_errors_do_not_echo_the_input(logs: pytest.LogCaptureFixture) -> None:
    with pytest.raises(SettingsError) as info:
        MsiloSettings(db_url=f"postgresql://app:{SECRET}@h/db", expire_time=0, db_timeout="x")
    assert SECRET not in "".join(traceback.format_exception(info.value))


# ---- msilo config -----------------------------------------------------------------------------


def test_config_masks_db_url_unless_asked(tmp_path: Path) -> None:
    cfg = tmp_path / "opensips.cfg"
    cfg.write_text(f'modparam("msilo", "db_url", "mysql://opensips:{SECRET}@localhost/opensips")\n')
    for extra in ([], ["--json"]):
        result = runner.invoke(app, ["config", "--opensips", str(cfg), *extra])
        assert result.exit_code == 0, result.output
        assert SECRET not in result.output
        assert "mysql://opensips:***@localhost/opensips" in result.output
    result = runner.invoke(app, ["config", "--opensips", str(cfg), "--json", "--show-secrets"])
    assert json.loads(result.stdout)["db_url"] == f"mysql://opensips:{SECRET}@localhost/opensips"


def test_config_masks_a_kamailio_define(tmp_path: Path) -> None:
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text(
        f'#!define DBURL "mysql://kamailio:{SECRET}@localhost/kamailio"\n'
        'modparam("msilo", "db_url", DBURL)\n'
    )
    result = runner.invoke(app, ["config", "--kamailio", str(cfg)])
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output and "mysql://kamailio:***@localhost" in result.output
    bad = tmp_path / "bad.cfg"  # an error about the config must not quote the URL either
    bad.write_text(f'modparam("msilo", "db_url", "mysql://k:{SECRET}@h/k")\nmodparam("msilo",\n')
    result = runner.invoke(app, ["config", "--kamailio", str(bad)])
    assert SECRET not in _shown(result)


# ---- msilo bench ------------------------------------------------------------------------------


def test_bench_report_names_backends_not_urls(
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    url = _with_password(backend_url("postgresql"))
    bad = _unreachable()[0]
    out = tmp_path / "bench.json"
    args = ["bench", "--db-url", url, "--db-url", bad, "--json", str(out)]
    sizes = ["--messages", "4", "--owners", "2", "--queued", "2", "--reminders", "1"]
    result = runner.invoke(app, [*args, *sizes, "--scale", "0", "--repeat", "1"])
    assert result.exit_code == 1  # the unreachable one failed, the other was measured
    assert SECRET not in _shown(result)
    text = out.read_text()
    assert SECRET not in text and "://" not in text  # no URL at all
    report = json.loads(text)
    (backend,) = report["backends"]
    assert backend["backend"] == "postgresql" and backend["server"].startswith("PostgreSQL")
    assert report["failures"][0]["backend"] == "postgresql (--db-url #2)"


def test_bench_api_failures_are_masked() -> None:
    report = run_bench(BenchConfig(urls=tuple(_unreachable()[:3]), repeat=1, scales=(0,)))
    assert len(report.failures) == 3
    assert SECRET not in json.dumps(report.to_dict())


def test_recorded_benchmark_results_hold_no_store_url() -> None:
    store_url = re.compile(r"\b(sqlite|postgres\w*|mysql|mariadb|redis\w*|mongo\w*)(\+\w+)?://")
    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    recorded = [
        *folder.glob("results*.json"),
        *folder.glob("concurrency*.json"),
        folder / "RESULTS.md",
    ]
    assert len(recorded) >= 2
    for path in recorded:
        found = store_url.search(path.read_text(encoding="utf-8"))
        assert found is None, f"{path.name}: {found and found.group(0)}"
