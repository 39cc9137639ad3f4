"""A corpus of hostile requests through ``SipRequest.parse`` + ``Silo.store`` + ``Silo.dump`` on
every backend.

Each request must either be refused with a typed error (``InvalidRequest`` or its subclasses
``InvalidURI`` / ``InvalidSendTime``) or be stored and come back byte-exact, dumped under the
owner written down here by hand (never another exception, never another owner). Afterwards the
store must be intact: a canary message stored first is still there byte-exact, the table keeps
its columns, and nothing outside the test's table / key prefix / collections was created.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from libmsilo import InvalidRequest, MsiloSettings, SettingsError, Silo, SipRequest, StoreLayout
from libmsilo.drivers.mongo import MongoDriver, open_mongomock
from libmsilo.drivers.sql_migrate import VERSION_TABLE
from libmsilo.drivers.sql_schema import build_table
from libmsilo.testing import unique_table
from tests.backends import backend_url
from tests.faults import PrivateRedis, record

STORED = "stored"
ERROR = "error"

DOMAIN = "example.com"
CANARY = "sip:canary@example.com"
CANARY_BODY = b"canary\x00\xff'; DROP TABLE silo;--"
MB = 1024 * 1024


def raw(
    to: bytes | str = "<sip:alice@example.com>",
    *,
    ruri: bytes | str | None = None,
    frm: bytes | str = '"Bob" <sip:bob@example.org>;tag=49583',
    ctype: bytes | str | None = "text/plain",
    headers: bytes = b"",
    body: bytes = b"hello",
    length: bytes | None = None,
) -> bytes:
    """A MESSAGE on the wire; ``ruri`` defaults to the To URI (the owner is then the same)."""

    def b(value: bytes | str) -> bytes:
        return value.encode() if isinstance(value, str) else value

    to_b = b(to)
    if ruri is None:
        ruri = to_b.split(b">")[0].lstrip(b"<") if to_b.startswith(b"<") else to_b
    head = b"MESSAGE " + b(ruri) + b" SIP/2.0\r\n"
    head += b"Via: SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bK776sgdkse\r\n"
    head += b"From: " + b(frm) + b"\r\nTo: " + to_b + b"\r\n"
    head += b"Call-ID: hostile@192.0.2.4\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: 70\r\n"
    if ctype is not None:
        head += b"Content-Type: " + b(ctype) + b"\r\n"
    head += headers
    head += b"Content-Length: " + (length if length is not None else b"%d" % len(body)) + b"\r\n"
    return head + b"\r\n" + body


@dataclass(frozen=True)
class Case:
    """One hostile request and what must happen to it."""

    id: str
    make: Callable[[], SipRequest]
    expect: str  # STORED or ERROR
    user: str = ""  # the owner's username when stored, exactly as the store must file it
    domain: str = DOMAIN
    body: bytes = b"hello"  # the stored body when stored
    settings: dict[str, Any] = field(default_factory=dict)


def parsed(data: bytes, **extras: Any) -> Callable[[], SipRequest]:
    return lambda: SipRequest.parse(data, **extras)


def stored(cid: str, user: str, data: bytes, body: bytes = b"hello", **kw: Any) -> Case:
    return Case(cid, parsed(data), STORED, user=user, body=body, **kw)


def refused(cid: str, data: bytes, **kw: Any) -> Case:
    return Case(cid, parsed(data), ERROR, **kw)


def to(user: str, domain: str = DOMAIN) -> str:
    return f"<sip:{user}@{domain}>"


BIG = bytes(range(256)) * (10 * MB // 256)  # 10 MiB, every byte value
SND = {"snd_time_avp": "$avp(snd_time)"}
INJECTION = b'\'); DROP TABLE silo;-- {"$where": "sleep(1)"} * KEYS * %00 \x00\xff\xfe'


def cases() -> list[Case]:
    """The corpus."""
    c: list[Case] = []
    # ---- metacharacters of SQL, Redis, Mongo and globbing in user parts
    for cid, user_as_written, user in [
        ("sql-quote", "';DROP%20TABLE%20silo;--", "';DROP%20TABLE%20silo;--"),
        ("sql-escaped", "'%3B%20DROP%20TABLE%20silo%3B--", "';%20DROP%20TABLE%20silo;--"),
        ("sql-tautology", "1'OR'1'='1", "1'OR'1'='1"),
        ("brace-escaped", "%7Bx%7D", "%7Bx%7D"),
        ("brace-escaped-lower", "%7bx%7d", "%7Bx%7D"),
        ("redis-key-shape", "%7BP%3Ag1%7D%3Am%3A1", "%7BP%3Ag1%7D%3Am%3A1"),
        ("mongo-where", "$where", "$where"),
        ("mongo-where-escaped", "%24where", "$where"),
        ("mongo-ne", "$ne", "$ne"),
        ("mongo-id", "_id", "_id"),
        ("star", "*", "*"),
        ("star-escaped", "%2A", "*"),
        ("glob", "a*b?c", "a*b?c"),
        ("nul-escape", "%00", "%00"),
        ("percent-escape", "%2500", "%2500"),
        ("crlf-escape", "a%0D%0Ab", "a%0D%0Ab"),
        ("path", "..%2F..%2Fetc", "../../etc"),
        ("password", "a:b", "a"),
        ("long-user-64", "u" * 64, "u" * 64),
    ]:
        c.append(stored(f"user-{cid}", user, raw(to(user_as_written))))
    c.append(stored("domain-case", "alice", raw(to("alice", "EXAMPLE.COM"))))
    c.append(stored("uri-param-quote", "alice", raw("<sip:alice@example.com;x='drop>")))
    c.append(refused("user-brace-raw", raw(to("{x}"))))
    c.append(refused("user-space", raw("<sip:a b@example.com>", ruri="sip:example.com")))
    c.append(refused("user-65", raw(to("u" * 65))))
    c.append(refused("user-unicode", raw(to("jörg"))))
    c.append(refused("tel-owner", raw("<tel:+1-555-0100>", ruri="sip:example.com")))
    # ---- malformed URIs
    for cid, text in [
        ("no-gt", "<sip:alice@example.com"),
        ("space-host", "<sip:alice@exa mple.com>"),
        ("ipv6-open", "<sip:alice@[::1>"),
        ("port", "<sip:alice@example.com:99999>"),
        ("http", "<http://example.com/x>"),
        ("empty-user", "<sip:@example.com>"),
        ("no-host", "<sip:alice@>"),
        ("bad-escape", "<sip:al%ZZice@example.com>"),
        ("huge", "<sip:" + "a" * 5000 + "@example.com>"),
        ("nested", "<<sip:alice@example.com>>"),
    ]:
        c.append(refused(f"uri-{cid}", raw(text, ruri="sip:example.com")))
    # A broken Request-URI falls back to the To URI [BEHAVIOUR.md §2.1]
    c.append(stored("ruri-broken", "alice", raw(to("alice"), ruri="sip:al%ZZ@example.com")))
    c.append(stored("ruri-no-user", "alice", raw(to("alice"), ruri="sip:example.com")))
    c.append(refused("request-line-spaces", b"MESSAGE  sip:a@b SIP/2.0\r\n\r\n"))
    c.append(refused("response", b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"))
    c.append(refused("no-to", raw(to("alice")).replace(b"To: <sip:alice@example.com>\r\n", b"")))
    # ---- header injection with CR / LF, NUL
    c.append(refused("bare-cr", raw(to("alice"), headers=b"Subject: a\rX-Injected: 1\r\n")))
    c.append(refused("bare-lf", raw(to("alice"), headers=b"Subject: a\nX-Injected: 1\r\n")))
    c.append(refused("crlf-display", raw(to("alice"), frm=b'"Bob\r\nX-Evil: 1" <sip:b@x.org>')))
    c.append(refused("nul-header", raw(to("alice"), headers=b"Subject: a\x00b\r\n")))
    c.append(refused("nul-ctype", raw(to("alice"), ctype=b"text/plain\x00")))
    c.append(
        stored(
            "ctype-then-header",
            "alice",
            raw(to("alice"), ctype=b"text/plain\r\nX-Evil: yes"),
        )
    )
    c.append(stored("ctype-sql", "alice", raw(to("alice"), ctype="'; DROP TABLE silo;--")))
    c.append(refused("ctype-256", raw(to("alice"), ctype="text/" + "x" * 251)))
    c.append(
        Case(
            "built-crlf-value",
            lambda: SipRequest(
                "MESSAGE",
                "sip:alice@example.com",
                [("To", "<sip:alice@example.com>\r\nX-Evil: 1"), ("From", "<sip:b@x.org>")],
            ),
            ERROR,
        )
    )
    c.append(
        Case(
            "built-bad-name",
            lambda: SipRequest("MESSAGE", "sip:a@b.c", [("To:\r\nX", "<sip:a@b.c>")]),
            ERROR,
        )
    )
    # ---- bodies
    c.append(stored("body-injection", "alice", raw(to("alice"), body=INJECTION), INJECTION))
    smuggled = b"\r\n\r\nMESSAGE sip:alice@example.com SIP/2.0\r\nTo: <sip:x@y.z>\r\n\r\n"
    c.append(stored("body-smuggled-request", "alice", raw(to("alice"), body=smuggled), smuggled))
    c.append(stored("body-empty", "alice", raw(to("alice"), body=b""), b""))
    c.append(
        stored("body-short-length", "alice", raw(to("alice"), body=b"12345", length=b"3"), b"123")
    )
    c.append(refused("body-long-length", raw(to("alice"), body=b"12", length=b"3")))
    c.append(refused("length-negative", raw(to("alice"), length=b"-1")))
    c.append(refused("length-text", raw(to("alice"), length=b"5; DROP")))
    c.append(refused("body-10mb", raw(to("alice"), body=BIG)))
    # ---- encodings
    c.append(refused("utf8-invalid-display", raw(to("alice"), frm=b'"\xff\xfe" <sip:b@x.org>')))
    c.append(refused("utf8-overlong", raw(to("alice"), frm=b'"\xc0\xaf" <sip:b@x.org>')))
    c.append(refused("utf8-surrogate", raw(to("alice"), frm=b'"\xed\xa0\x80" <sip:b@x.org>')))
    c.append(stored("utf8-display", "alice", raw(to("alice"), frm='"Jörg ☃" <sip:j@x.org>')))
    c.append(stored("src-quote", "alice", raw(to("alice"), frm="<sip:'%22;--@x.org>;tag=1")))
    # ---- giant header counts and lines
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(490))
    c.append(stored("headers-490", "alice", raw(to("alice"), headers=many)))
    more = b"".join(b"X-H%d: v\r\n" % i for i in range(600))
    c.append(refused("headers-600", raw(to("alice"), headers=more)))
    c.append(refused("header-line-9000", raw(to("alice"), headers=b"X: " + b"a" * 9000 + b"\r\n")))
    wide = b"".join(b"X-%d: " % i + b"b" * 4000 + b"\r\n" for i in range(20))
    c.append(refused("header-section-80k", raw(to("alice"), headers=wide)))
    # ---- reminder times
    for cid, value in [
        ("sql", "'; DROP TABLE silo;--"),
        ("month-13", "20231301000000"),
        ("nul", "2023010100000\x00"),
        ("nines", "99999999999999"),
        ("sign", "+2023010100000"),
        ("short", "2023"),
        ("braces", "{x}"),
    ]:
        c.append(
            Case(
                f"snd-time-{cid}",
                parsed(raw(to("alice")), avps={"snd_time": value}),
                ERROR,
                settings=SND,
            )
        )
    return c


CASES = cases()


# ---- backends ---------------------------------------------------------------------------------


@dataclass
class Backend:
    """A Silo on a fresh table, and how to check the backend is intact afterwards."""

    silo: Silo
    audit: Callable[[], None]


def _settings(url: str, table: str) -> MsiloSettings:
    return MsiloSettings(db_url=url, db_table=table, timezone="UTC", add_date=False)


def _sql_audit(url: str, table: str, only_table: bool) -> Callable[[], None]:
    def audit() -> None:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            inspector = sa.inspect(engine)
            assert inspector.has_table(table)
            columns = {c["name"] for c in inspector.get_columns(table)}
            assert {"mid", "src_addr", "dst_addr", "username", "domain", "body"} <= columns
            built = build_table(StoreLayout(table=table), sa.MetaData())
            assert columns == {c.name for c in built.columns}, sorted(columns)
            if only_table:  # the silo table and the record of its schema version, nothing else
                assert sorted(inspector.get_table_names()) == sorted([table, VERSION_TABLE])
        finally:
            engine.dispose()

    return audit


@contextlib.contextmanager
def open_backend(kind: str, tmp_path: Path) -> Iterator[Backend]:
    table = unique_table()
    if kind == "memory":
        silo = Silo.from_settings(_settings("memory://", table))
        yield Backend(silo, lambda: None)
        return
    if kind == "mongomock":
        driver = open_mongomock(unique_table("db"), ttl_delay=None)
        driver.create_schema()
        names = {"silo", "silo_counters", "silo_owners"}

        def mongo_audit(d: MongoDriver = driver) -> None:
            assert set(d.database.list_collection_names()) <= names

        yield Backend(Silo(driver, _settings("memory://", table)), mongo_audit)
        driver.drop_schema()
        driver.close()
        return
    if kind == "redis":
        with PrivateRedis(tmp_path) as server:
            silo = Silo.from_settings(_settings(server.url, table))

            def redis_audit() -> None:
                client = redis.Redis.from_url(server.url)
                try:
                    keys = list(client.scan_iter(count=1000))
                    prefix = b"{" + table.encode() + b":"
                    strangers = [k for k in keys if not k.startswith(prefix)]
                    assert not strangers, strangers[:5]
                finally:
                    client.close()

            yield Backend(silo, redis_audit)
            silo.close()
        return
    url = f"sqlite:///{tmp_path / 'hostile.db'}" if kind == "sqlite" else backend_url(kind)
    silo = Silo.from_settings(_settings(url, table))
    try:
        yield Backend(silo, _sql_audit(url, table, only_table=kind == "sqlite"))
    finally:
        silo.driver.drop_schema()
        silo.close()


# ---- the run ----------------------------------------------------------------------------------


def _store_all(backend: Backend, failures: list[str]) -> dict[int, Case]:
    """Parse and store every case; returns mid -> case of what was stored."""
    base = backend.silo
    silos: dict[str, Silo] = {}
    done: dict[int, Case] = {}
    for case in CASES:
        key = repr(sorted(case.settings.items()))
        silo = silos.get(key)
        if silo is None:
            values = {**base.settings.model_dump(), **case.settings}
            silo = silos[key] = Silo(base.driver, MsiloSettings(**values))
        try:
            mid = silo.store(case.make()).mid
        except InvalidRequest:
            if case.expect == STORED:
                failures.append(f"{case.id}: refused, expected stored")
            continue
        except Exception as exc:  # anything else is the failure this test looks for
            failures.append(f"{case.id}: {type(exc).__name__}: {exc}"[:300])
            continue
        if case.expect == ERROR:
            failures.append(f"{case.id}: stored as {mid}, expected a typed error")
        elif mid is None:
            failures.append(f"{case.id}: not stored (quota?)")
        else:
            done[mid] = case
    return done


def _check_dumps(silo: Silo, done: dict[int, Case], failures: list[str]) -> None:
    """Each owner's dump holds exactly its cases, byte-exact, and re-parses cleanly."""
    by_owner: dict[tuple[str, str], set[int]] = defaultdict(set)
    for mid, case in done.items():
        row = silo.get(mid)
        if row is None or (row.username, row.domain) != (case.user, case.domain):
            got = None if row is None else (row.username, row.domain)
            failures.append(f"{case.id}: filed under {got}, expected {(case.user, case.domain)}")
            continue
        by_owner[(case.user, case.domain)].add(mid)
    for (user, domain), mids in by_owner.items():
        out = silo.dump(owner=f"<sip:{user}@{domain}>")
        if {m.mid for m in out} != mids:
            failures.append(f"owner {user!r}: dumped {sorted(m.mid or 0 for m in out)} != {mids}")
        for msg in out:
            found = done.get(msg.mid or 0)
            if found is None:
                continue
            case = found
            if msg.body != case.body:
                failures.append(f"{case.id}: body not byte-exact ({len(msg.body)} bytes)")
            try:
                wire = msg.to_bytes(call_id="c1", from_tag="t1")
                back = SipRequest.parse(wire)
            except InvalidRequest as exc:
                failures.append(f"{case.id}: dumped MESSAGE does not re-parse: {exc}")
                continue
            names = {n.lower() for n, _ in back.headers}
            allowed = {"max-forwards", "from", "to", "call-id", "cseq", "content-length"}
            allowed |= {"date", "content-type", "contact"}
            if back.body != case.body or not names <= allowed:
                failures.append(f"{case.id}: dumped MESSAGE altered: {sorted(names - allowed)}")
            silo.on_reply(msg.mid or 0, 200)
    for decoy in ["sip:silo@example.com", "sip:x@example.com", "sip:%25@example.com"]:
        if silo.dump(owner=decoy):
            failures.append(f"decoy owner {decoy} got messages")


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgresql", "mysql", "redis", "mongomock"])
def test_hostile_corpus(kind: str, tmp_path: Path) -> None:
    with open_backend(kind, tmp_path) as backend:
        silo = backend.silo
        canary = silo.store(SipRequest.parse(raw(CANARY, body=CANARY_BODY))).mid
        failures: list[str] = []
        done = _store_all(backend, failures)
        _check_dumps(silo, done, failures)
        assert not failures, "\n".join(failures)
        # Intact afterwards: the canary, the table / keys, and nothing left of the corpus.
        out = silo.dump(owner=CANARY)
        assert [(m.mid, m.body) for m in out] == [(canary, CANARY_BODY)]
        backend.audit()
        leftovers = {case.user for case in done.values()}
        assert all(silo.count(f"<sip:{u}@{DOMAIN}>") == 0 for u in leftovers)
        record("hostile", backend=kind, cases=len(CASES), stored=len(done))


def test_corpus_has_both_outcomes() -> None:
    """Guards the corpus itself: it must hold both stored and refused cases, uniquely named."""
    kinds = {c.expect for c in CASES}
    assert kinds == {STORED, ERROR}
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgresql", "mysql", "redis", "mongomock"])
def test_ten_megabyte_body_under_a_raised_limit(kind: str, tmp_path: Path) -> None:
    """With max_body_size raised to 12 MiB, a 10 MiB body is stored and dumped byte-exact, or
    refused with InvalidRequest where the backend cannot hold it; nothing else."""
    with open_backend(kind, tmp_path) as backend:
        values = {**backend.silo.settings.model_dump(), "max_body_size": 12 * MB}
        silo = Silo(backend.silo.driver, MsiloSettings(**values))
        request = SipRequest.parse(raw(to("bigbody"), body=BIG, ctype="application/octet-stream"))
        try:
            mid = silo.store(request).mid
        except InvalidRequest:
            mid = None
        if mid is not None:
            out = silo.dump(owner="sip:bigbody@example.com")
            assert [(m.mid, m.body == BIG) for m in out] == [(mid, True)]
        small = silo.store(SipRequest.parse(raw(to("bigbody")))).mid  # the store still works
        assert small is not None and silo.get(small) is not None
        backend.audit()


def test_owner_uri_with_semicolon_in_user_part() -> None:
    """``owner=`` is a SIP URI: one with ';' in the user part (RFC 3261 user-unreserved) names
    the same owner as its <>-enclosed form (a regression found by this corpus)."""
    silo = Silo.from_settings(_settings("memory://", "silo"))
    uri = "sip:';DROP%20TABLE%20silo;--@example.com"
    mid = silo.store(SipRequest.parse(raw(f"<{uri}>"))).mid
    assert silo.count(f"<{uri}>") == silo.count(uri) == 1
    assert [m.mid for m in silo.dump(owner=uri)] == [mid]
    assert silo.purge(uri) == 1


# ---- hostile settings -------------------------------------------------------------------------

IDENTIFIER_FIELDS = [
    "db_table",
    "sc_mid",
    "sc_from",
    "sc_to",
    "sc_uri_user",
    "sc_uri_host",
    "sc_body",
    "sc_ctype",
    "sc_exp_time",
    "sc_inc_time",
    "sc_snd_time",
]
HOSTILE_NAMES = [
    "silo; DROP TABLE x",
    'a"b',
    "a`b",
    "a'b",
    "{x}",
    "$where",
    "a*",
    "a.b",
    "a-b",
    "a b",
    " silo",
    "silo\n",
    "silo\x00",
    "%00",
    "1abc",
    "",
    "a" * 64,
    "a" * 200,
    "sïlo",
    "t\u0430ble",  # a Cyrillic a
    "\uff53\uff49\uff4c\uff4f",  # fullwidth "silo"
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
@pytest.mark.parametrize("setting", IDENTIFIER_FIELDS)
def test_hostile_identifier_settings_are_refused(setting: str, name: str) -> None:
    with pytest.raises(SettingsError, match=setting):
        MsiloSettings(db_url="memory://", **{setting: name})


@pytest.mark.parametrize("setting", IDENTIFIER_FIELDS)
def test_longest_plain_identifier_is_accepted(setting: str) -> None:
    """The boundary: 63 characters is a plain identifier (PostgreSQL's limit), 64 is not."""
    assert getattr(MsiloSettings(db_url="memory://", **{setting: "a" * 63}), setting) == "a" * 63


def test_hostile_identifiers_from_the_environment_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MSILO_DB_TABLE", "silo; DROP TABLE x")
    with pytest.raises(SettingsError, match="db_table"):
        MsiloSettings(db_url="memory://")


def test_hostile_identifiers_from_a_server_config_are_refused() -> None:
    cfg = 'modparam("msilo", "db_table", "silo; DROP TABLE x")\n'
    with pytest.raises(SettingsError, match="db_table"):
        MsiloSettings.from_opensips_cfg(cfg, db_url="memory://")
    cfg = 'modparam("msilo", "sc_body", "body`, `x")\n'
    with pytest.raises(SettingsError, match="sc_body"):
        MsiloSettings.from_kamailio_cfg(cfg, db_url="memory://")


def test_colliding_column_names_are_refused() -> None:
    with pytest.raises(SettingsError):
        MsiloSettings(db_url="memory://", sc_from="body")
    with pytest.raises(SettingsError):
        MsiloSettings(db_url="memory://", sc_to="DST_ADDR", sc_from="dst_addr")
