"""Parity: the same sipp scenarios against Kamailio's own msilo module and against libmsilo (the
``kamailio`` profile) in the same Kamailio, each on a fresh SQLite database made from Kamailio's
own schema files (migrated for libmsilo's lease columns). The stored rows and the MESSAGEs that
reach the user agents must be the same, apart from the differences docs/kamailio.md lists."""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from libmsilo import MsiloSettings, Silo
from libmsilo.drivers.sql_ops import _text_column
from tests import kamailio_harness as harness
from tests.backends import backend_url

pytestmark = pytest.mark.timeout(150)

HERE = Path(__file__).resolve().parent
KAMAILIO_SQL = Path("/usr/share/kamailio/db_sqlite")
ROW_COLUMNS = (
    "src_addr", "dst_addr", "username", "domain", "ctype", "body", "snd_time", "extra_hdrs",
    "callid",
)  # fmt: skip
NOTICE = "$rU is offline; stored for later"
# Kamailio's msilo keeps these header lines of a stored MESSAGE (extra_hdrs) and puts them back on
# the dumped one: compared on their own (below), so a change of the scenario cannot hide them.
EXTRA = ("p-asserted-identity", "p-preferred-identity", "privacy")
# Headers of a received MESSAGE that differ per transaction (every other one is compared).
PER_TRANSACTION = ("via", "call-id", "cseq", "content-length", "max-forwards", "record-route")
_DATE_IN_BODY = re.compile(
    r"^\[(Offline|Reminder) message - [A-Z][a-z]{2} [A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d \d{4}\]"
)
_ADDRESS = re.compile(r"127\.0\.0\.1:(\d+)")


@dataclass(frozen=True)
class Store:
    """One database for both implementations: its SQLAlchemy URL and Kamailio's db_url."""

    url: str
    kamailio_url: str
    defines: dict[str, str]

    def reset(self) -> None:
        """Kamailio's own tables, as its tools create them: version and silo (version 8)."""
        if self.url.startswith("sqlite"):
            with sqlite3.connect(self.url.removeprefix("sqlite:///")) as db:
                for part in ("standard", "msilo"):
                    db.executescript((KAMAILIO_SQL / f"{part}-create.sql").read_text())
            return
        engine = sa.create_engine(self.url)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("DROP TABLE IF EXISTS silo, version, msilo_version"))
                for part in ("standard", "msilo"):
                    sql = (KAMAILIO_SQL.parent / "postgres" / f"{part}-create.sql").read_text()
                    conn.exec_driver_sql(sql)
        finally:
            engine.dispose()


def _own_database(url: str) -> str:
    """A database of the parity test's own beside the test database: Kamailio's tables are
    named ``silo`` and ``version``, which no other test may find there."""
    parsed = sa.engine.make_url(url)
    name = f"{parsed.database}_kamailio_parity"
    engine = sa.create_engine(parsed, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first()
            if found is None:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        engine.dispose()
    return parsed.set(database=name).render_as_string(hide_password=False)


def _store(kind: str, workdir: Path) -> Store:
    if kind == "sqlite":
        db = workdir / "silo.db"  # db_sqlite: sqlite:// + absolute path
        return Store(f"sqlite:///{db}", f"sqlite:///{db}", {})
    url = _own_database(backend_url("postgresql"))
    kamailio_url = re.sub(r"^postgresql(\+psycopg)?://", "postgres://", url)
    return Store(url, kamailio_url, {"WITH_POSTGRES": "1"})


def _ports(text: str, proxy: str) -> str:
    """Loopback addresses as roles: the proxy's port and any user agent's port."""
    return _ADDRESS.sub(lambda m: "PROXY" if m.group(0) == proxy else "127.0.0.1:UA", text)


def _normalized(message: str, proxy: str) -> dict[str, Any]:
    """What of a received MESSAGE must match: Request-URI, the compared headers (tags and the
    Date value left out), and the body with the date of its prefix masked; ports as roles."""
    head, _, body = _ports(message, proxy).partition("\n\n")
    lines = head.splitlines()
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        if key not in PER_TRANSACTION and key not in EXTRA:
            value = re.sub(r";tag=[^;>]*", "", value.strip())
            headers[key] = "<present>" if key == "date" else value
    masked = _DATE_IN_BODY.sub(r"[\1 message - DATE]", body.strip())
    extra = [line for line in lines[1:] if line.partition(":")[0].strip().lower() in EXTRA]
    return {"ruri": lines[0].split()[1], "headers": headers, "body": masked, "extra": extra}


@dataclass
class Observed:
    """What one implementation did with the scenarios."""

    codes: list[str] = field(default_factory=list)
    notice: dict[str, Any] = field(default_factory=dict)
    row: dict[str, Any] = field(default_factory=dict)
    delivered: dict[str, Any] = field(default_factory=dict)
    rows_left: dict[str, int] = field(default_factory=dict)
    retried: dict[str, Any] = field(default_factory=dict)


def _rows(store: Store, user: str, proxy: str = "") -> list[dict[str, Any]]:
    query = sa.text(
        f"SELECT {', '.join(ROW_COLUMNS)}, exp_time - inc_time AS lifetime "
        "FROM silo WHERE username = :user"
    )
    engine = sa.create_engine(store.url)
    try:
        with engine.connect() as conn:
            found = [dict(r._mapping) for r in conn.execute(query, {"user": user})]
    finally:
        engine.dispose()
    for r in found:
        r["body"] = bytes(r["body"])
        # Kamailio writes extra_hdrs as a BLOB (SQLite) or in bytea hex form (PostgreSQL, a text
        # column), libmsilo as text; libmsilo's driver reads all three (docs/kamailio.md).
        r["extra_hdrs"] = _text_column(r["extra_hdrs"])
    return [{k: _ports(v, proxy) if isinstance(v, str) else v for k, v in r.items()} for r in found]


def _run(net: harness.Net, workdir: Path, implementation: str, store: Store) -> Observed:
    store.reset()
    port = net.port()
    env = dict(os.environ)
    if implementation == "msilo":
        cfg = HERE / "kamailio" / "msilo_native.cfg"
        defines = {"DB_URL": f'"{store.kamailio_url}"', **store.defines}
    else:
        url = store.url
        settings = MsiloSettings(db_url=url, profile="kamailio")
        with Silo.from_settings(settings, create_schema=False) as silo:
            silo.driver.migrate()
        cfg = harness.EXAMPLE / "kamailio.cfg"
        defines = {"KEMI_SCRIPT": f'"{harness.EXAMPLE / "msilo_kemi.py"}"'}
        env.update(
            **harness.embedded_env(),
            MSILO_DB_URL=url,
            MSILO_PROFILE="kamailio",
            MSILO_FROM_ADDRESS="sip:msilo@127.0.0.1",
            MSILO_OFFLINE_MESSAGE=NOTICE,
            MSILO_CONTENT_TYPE_HDR="Content-Type: text/plain\r\n",
            MSILO_CHECK_TIME="1",
            MSILO_CLEAN_PERIOD="1",
        )
    kamailio = harness.Kamailio(net, workdir, cfg, env, defines=defines, port=port)
    kamailio.start()
    try:
        return _scenarios(harness.Sipp(net, workdir, kamailio.address), kamailio.address, store)
    finally:
        kamailio.stop()
        errors = kamailio.errors()
        assert not errors, errors


def _gone(store: Store, user: str) -> bool | None:
    return True if not _rows(store, user) else None


def _scenarios(sipp: harness.Sipp, domain: str, db: Store) -> Observed:
    seen = Observed()
    with sipp.server("uas_200.xml", calls=1) as alice:
        seen.codes.append(sipp.message("bob", domain, "hello bob", alice.contact("alice")))
        (notice,) = alice.wait(1)
    seen.notice = _normalized(notice, domain)
    (seen.row,) = _rows(db, "bob", domain)
    with sipp.server("uas_200.xml", calls=1) as bob:
        sipp.register("bob", domain, bob.contact("bob"))
        (delivered,) = bob.wait(1)
    seen.delivered = _normalized(delivered, domain)
    harness.wait_for(lambda: _gone(db, "bob"))
    seen.rows_left["bob"] = 0

    with sipp.server("uas_200.xml", calls=1) as sink:
        seen.codes.append(sipp.message("carol", domain, "for carol", sink.contact("x")))
    with sipp.server("uas_480.xml", calls=1) as carol:
        sipp.register("carol", domain, carol.contact("carol"))
        carol.wait(1)
        time.sleep(2.5)  # two clean ticks (check_time 1 s): the failed row must stay
    seen.rows_left["carol"] = len(_rows(db, "carol"))
    with sipp.server("uas_200.xml", calls=1) as carol:
        sipp.register("carol", domain, carol.contact("carol"))
        (retried,) = carol.wait(1)
    seen.retried = _normalized(retried, domain)
    harness.wait_for(lambda: _gone(db, "carol"))
    return seen


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def observed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Observed]]:
    kind: str = request.param
    module = "db_sqlite" if kind == "sqlite" else "db_postgres"
    harness.require_tools("app_python3", "msilo", module, "tm", "uac", "rtimer", "registrar")
    schema = KAMAILIO_SQL.parent / ("db_sqlite" if kind == "sqlite" else "postgres")
    if not (schema / "msilo-create.sql").exists():
        pytest.fail(f"{schema} has no msilo-create.sql (kamailio-{kind}-modules)")
    results = {}
    for implementation in ("msilo", "libmsilo"):
        workdir = tmp_path_factory.mktemp(f"{implementation}-{kind}")
        store = _store(kind, workdir)
        # PostgreSQL listens on the host's loopback, which a private namespace does not reach.
        place = harness.network() if kind == "sqlite" else nullcontext(harness.Net())
        with place as net:
            results[implementation] = _run(net, workdir, implementation, store)
    yield results
    if kind == "postgresql":
        engine = sa.create_engine(store.url)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE IF EXISTS silo, version, msilo_version"))
        engine.dispose()


def test_both_answer_202_and_keep_a_failed_delivery(observed: dict[str, Observed]) -> None:
    for seen in observed.values():
        assert seen.codes == ["202", "202"]
        assert seen.rows_left == {"bob": 0, "carol": 1}


def test_stored_rows_match(observed: dict[str, Observed]) -> None:
    assert observed["libmsilo"].row == observed["msilo"].row


def test_notices_match(observed: dict[str, Observed]) -> None:
    assert observed["libmsilo"].notice == observed["msilo"].notice


def test_delivered_messages_match(observed: dict[str, Observed]) -> None:
    assert observed["libmsilo"].delivered == observed["msilo"].delivered
    assert observed["libmsilo"].retried == observed["msilo"].retried


def test_extra_headers_are_kept_and_sent_back(observed: dict[str, Observed]) -> None:
    c_seen, py_seen = observed["msilo"], observed["libmsilo"]
    assert c_seen.delivered["extra"], "msilo sent no P-Asserted-Identity: the scenario changed"
    assert py_seen.row["extra_hdrs"] == c_seen.row["extra_hdrs"]
    assert py_seen.delivered["extra"] == c_seen.delivered["extra"]
