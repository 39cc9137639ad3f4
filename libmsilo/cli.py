"""The ``msilo`` command: look into and manage a message store, run the demo and the benchmark.

Every command takes ``--db-url`` (default ``MSILO_DB_URL``, else ``sqlite:///msilo.db``) and the
settings options ``--table``, ``--profile`` and ``--timezone``. A libmsilo error ends the command
with exit status 1 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from . import cli_bench
from .core import split_owner_uri
from .drivers.plumbing import ping
from .drivers.schemes import SCHEMES
from .errors import InvalidURI, MsiloError, StorageError
from .masking import mask_url
from .message import OutgoingMessage, SipRequest
from .migration import migrate as migrate_store
from .settings import MsiloSettings
from .silo import Silo
from .uri import NameAddr, parse_name_addr

__all__ = ["app", "main"]

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    name="msilo",
    help="Offline SIP message store (the msilo module as a library): inspect, manage, demo.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# ---- common options ----------------------------------------------------------------------------

DbUrl = Annotated[
    str | None,
    typer.Option(
        "--db-url",
        help="Store URL (default: MSILO_DB_URL, else sqlite:///msilo.db).",
        show_default=False,
    ),
]
TableOpt = Annotated[str | None, typer.Option("--table", help="Table / collection / key prefix.")]
ProfileOpt = Annotated[
    str | None, typer.Option("--profile", help="libmsilo, opensips or kamailio (column presets).")
]
ZoneOpt = Annotated[str | None, typer.Option("--timezone", help="IANA zone for times shown.")]


class CliError(MsiloError):
    """A command cannot do what was asked (unknown id, bad option combination)."""


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"msilo: error: {' '.join(message.split())}", err=True)
    return typer.Exit(code)


def _errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a libmsilo (or file) error into one line on stderr and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except CliError as exc:
            raise _fail(str(exc), 2 if isinstance(exc, UsageError) else 1) from None
        except MsiloError as exc:
            raise _fail(f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None

    return wrapper


class UsageError(CliError):
    """Options that do not fit together (exit status 2, like other usage errors)."""


def _settings(
    db_url: str | None,
    table: str | None = None,
    profile: str | None = None,
    timezone: str | None = None,
    **extra: Any,
) -> MsiloSettings:
    """Settings from the environment, overridden by the options that were given."""
    given = {"db_url": db_url, "db_table": table, "profile": profile, "timezone": timezone}
    values = {k: v for k, v in given.items() if v is not None}
    values.update(extra)
    return MsiloSettings(**values)


# What SQLite, PostgreSQL and MariaDB say about a table that is not there.
_NO_TABLE = re.compile(r"no such table|relation \S+ does not exist|table \S+ doesn't exist", re.I)


@contextmanager
def _silo(settings: MsiloSettings, *, create: bool = False) -> Iterator[Silo]:
    """The store of ``settings``; unless ``create``, one that ``msilo init`` made before."""
    if not create:
        _require_sqlite_file(settings.db_url)
    silo = Silo.from_settings(settings, create_schema=create)
    try:
        yield silo
    except StorageError as exc:
        if create or _NO_TABLE.search(str(exc)) is None:
            raise
        raise CliError(
            f"StorageError: {exc} - the store is not initialised; run `msilo init` first"
        ) from exc
    finally:
        silo.close()


def _require_sqlite_file(url: str) -> None:
    """Refuse a SQLite file that does not exist (opening it would create an empty one)."""
    scheme, _, rest = url.partition("://")
    known = SCHEMES.get(scheme.partition("+")[0].lower())
    if known is None or known.backend != "sqlite":
        return
    path = rest[1:].partition("?")[0]  # sqlite:///relative.db, sqlite:////absolute.db
    if path in ("", ":memory:") or path.startswith("file:") or "mode=memory" in rest:
        return
    if not Path(path).exists():
        raise CliError(f"no message store at {path}: run `msilo init` to create it")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _console() -> Console:
    return Console(highlight=False)


def _when(epoch: int | None, zone: tzinfo) -> str:
    if not epoch:
        return "-"
    try:
        return datetime.fromtimestamp(epoch, zone).strftime("%Y-%m-%d %H:%M:%S %Z")
    except (OverflowError, OSError, ValueError):
        return str(epoch)


def _lease(token: str | None, until: int | None, zone: tzinfo, now: int) -> str:
    if token is None:
        return "-"
    state = "live" if (until or 0) > now else "expired"
    return f"{token[:8]} until {_when(until, zone)} ({state})"


def _sip_text(msg: OutgoingMessage) -> str:
    raw = msg.to_bytes(call_id=f"{uuid.uuid4().hex[:16]}@msilo", from_tag=uuid.uuid4().hex[:8])
    return raw.decode("utf-8", "replace").replace("\r\n", "\n").rstrip("\n")


# ---- schema ------------------------------------------------------------------------------------


@app.command()
@_errors
def init(
    db_url: DbUrl = None,
    table: TableOpt = None,
    profile: ProfileOpt = None,
    timezone: ZoneOpt = None,
    drop: Annotated[bool, typer.Option("--drop", help="Drop the table (all rows!) first.")] = False,
) -> None:
    """Create the table (collection, scripts) and its indexes."""
    settings = _settings(db_url, table, profile, timezone)
    with _silo(settings, create=True) as silo:
        if drop:
            silo.driver.drop_schema()
        silo.driver.create_schema()
    what = "dropped and created" if drop else "created"
    _console().print(f"{what}: table {settings.db_table!r} at {mask_url(settings.db_url)}")


@app.command()
@_errors
def migrate(
    db_url: DbUrl = None,
    table: TableOpt = None,
    profile: ProfileOpt = None,
    timezone: ZoneOpt = None,
) -> None:
    """Upgrade the store to this libmsilo's schema version, step by step, keeping its rows (also
    an OpenSIPS or Kamailio silo table, which gains the lease columns). Safe to run from several
    processes at once."""
    settings = _settings(db_url, table, profile, timezone)
    done = migrate_store(settings)
    where = (
        f"table {settings.db_table!r} (id column {settings.sc_mid!r}) "
        f"at {mask_url(settings.db_url)}"
    )
    if done.after is None:
        _console().print(f"migrated: {where}")
    elif done.changed:
        before = "none" if done.before is None else done.before
        _console().print(f"migrated: {where}: schema version {before} -> {done.after}")
    else:
        _console().print(f"migrated: {where} is at schema version {done.after} already")


# ---- inbox -------------------------------------------------------------------------------------


@app.command()
@_errors
def inbox(
    aor: Annotated[str, typer.Argument(help="Owner, e.g. sip:alice@example.com")],
    db_url: DbUrl = None,
    table: TableOpt = None,
    profile: ProfileOpt = None,
    timezone: ZoneOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Rows to show.")] = 50,
) -> None:
    """List the unexpired messages stored for AOR."""
    split_owner_uri(aor)  # a bad AOR is reported before the store is opened
    settings = _settings(db_url, table, profile, timezone)
    zone, now = settings.zone, int(time.time())
    with _silo(settings) as silo:
        total = silo.count(aor)
        rows = silo.list(aor, limit)
    out = Table(title=f"{aor}: {_plural(total, 'message')}")
    for name in ("mid", "from", "to", "ctype", "size", "received", "expires", "send at", "lease"):
        justify: Literal["left", "right"] = "right" if name in ("mid", "size") else "left"
        out.add_column(name, justify=justify, overflow="fold")  # wrapped in the cell, never cut
    for r in rows:
        out.add_row(
            str(r.mid),
            r.src_addr,
            r.dst_addr,
            r.ctype,
            str(len(r.body)),
            _when(r.inc_time, zone),
            _when(r.exp_time, zone),
            _when(r.snd_time, zone),
            _lease(r.lease_token, r.lease_until, zone, now),
        )
    console = _console()
    console.print(out)
    if total > len(rows):
        console.print(f"({total - len(rows)} more not shown; use --limit)")


@app.command()
@_errors
def show(
    mid: Annotated[int, typer.Argument(help="Message id")],
    db_url: DbUrl = None,
    table: TableOpt = None,
    profile: ProfileOpt = None,
    timezone: ZoneOpt = None,
) -> None:
    """Show every field of one stored message."""
    settings = _settings(db_url, table, profile, timezone)
    zone, now = settings.zone, int(time.time())
    with _silo(settings) as silo:
        row = silo.get(mid)
    if row is None:
        raise CliError(f"no message with mid {mid}")
    try:
        body, encoding = row.body.decode("utf-8"), "text"
    except UnicodeDecodeError:
        body, encoding = row.body.hex(), "hex"
    status = "expired" if row.exp_time <= now else "reminder" if row.snd_time else "waiting"
    out = Table(title=f"message {mid}", show_header=False)
    out.add_column("field", style="bold")
    out.add_column("value", overflow="fold")
    fields: list[tuple[str, str]] = [
        ("mid", str(row.mid)),
        ("status", status),
        ("from (src_addr)", row.src_addr),
        ("to (dst_addr)", row.dst_addr),
        ("owner", f"{row.username}@{row.domain}"),
        ("content type", row.ctype),
        ("received (inc_time)", f"{_when(row.inc_time, zone)}  [{row.inc_time}]"),
        ("expires (exp_time)", f"{_when(row.exp_time, zone)}  [{row.exp_time}]"),
        ("send at (snd_time)", f"{_when(row.snd_time, zone)}  [{row.snd_time}]"),
        ("lease", _lease(row.lease_token, row.lease_until, zone, now)),
        ("attempts", str(row.attempts)),
        ("size", f"{len(row.body)} bytes"),
        (f"body ({encoding})", body),
    ]
    for name, value in fields:
        out.add_row(name, value)
    _console().print(out)


@app.command()
@_errors
def delete(
    mid: Annotated[int, typer.Argument(help="Message id")],
    db_url: DbUrl = None,
    table: TableOpt = None,
    profile: ProfileOpt = None,
    timezone: ZoneOpt = None,
) -> None:
    """Delete one stored message."""
    with _silo(_settings(db_url, table, profile, timezone)) as silo:
        if not silo.delete(mid):
            raise CliError(f"no message with mid {mid}")
    _console().print(f"deleted message {mid}")


@app.command()
@_errors
def purge(
    aor: Annotated[str | None, typer.Argument(help="Owner whose messages to delete")] = None,
    expired: Annotated[
        bool, typer.Option("--expired", help="Delete expired rows instead.")
    ] = False,
    db_url: DbUrl = None,
    table: TableOpt = None,
    profile: ProfileOpt = None,
    timezone: ZoneOpt = None,
) -> None:
    """Delete every message of AOR, or (--expired) every expired message."""
    if (aor is None) == (not expired):
        raise UsageError("give either an AOR or --expired (exactly one)")
    if aor is not None:
        split_owner_uri(aor)
    with _silo(_settings(db_url, table, profile, timezone)) as silo:
        count = silo.purge_expired() if expired else silo.purge(aor or "")
    what = _plural(count, "expired message" if expired else "message")
    _console().print(f"deleted {what}" + ("" if expired else f" of {aor}"))


@app.command()
@_errors
def stats(
    aor: Annotated[str | None, typer.Argument(help="Owner to count messages for")] = None,
    db_url: DbUrl = None,
    table: TableOpt = None,
    profile: ProfileOpt = None,
    timezone: ZoneOpt = None,
) -> None:
    """What the store can tell: an owner's waiting, reminder and in-delivery messages.

    The delivery counters (stored, dumped, failed) live in the host process (``Silo.stats``);
    a store keeps no global count, so without AOR only that is said.
    """
    settings = _settings(db_url, table, profile, timezone)
    console = _console()
    if aor is None:
        with _silo(settings) as silo:
            ping(silo.driver)  # an unreachable store or a missing table is reported
        console.print(
            f"store {mask_url(settings.db_url)}, table {settings.db_table!r}: reachable.\n"
            "The store keeps no global counters: delivery statistics are counted per process "
            "by the host (Silo.stats). Give an AOR for its inbox counts."
        )
        return
    split_owner_uri(aor)
    zone, now = settings.zone, int(time.time())
    with _silo(settings) as silo:
        total = silo.count(aor)
        rows = silo.list(aor, 0)
    reminders = [r for r in rows if r.snd_time > 0]
    leased = [r for r in rows if r.lease_token is not None and (r.lease_until or 0) > now]
    out = Table(title=f"{aor}", show_header=False)
    out.add_column("what", style="bold")
    out.add_column("value", justify="right")
    out.add_row("unexpired messages", str(total))
    out.add_row("offline messages", str(len(rows) - len(reminders)))
    out.add_row("reminders pending", str(len(reminders)))
    out.add_row("in delivery (leased)", str(len(leased)))
    if rows:
        out.add_row("oldest received", _when(min(r.inc_time for r in rows), zone))
        out.add_row("next expiry", _when(min(r.exp_time for r in rows), zone))
    console.print(out)


# ---- store and config --------------------------------------------------------------------------


@app.command()
@_errors
def store(
    from_uri: Annotated[
        str | None,
        typer.Option(
            "--from", help="Sender: a URI or a name-addr such as '\"Bob\" <sip:bob@x.org>'"
        ),
    ] = None,
    to_uri: Annotated[
        str | None, typer.Option("--to", help="Recipient (the owner): a URI or a name-addr")
    ] = None,
    body: Annotated[str | None, typer.Option("--body", help="Message text")] = None,
    ctype: Annotated[str | None, typer.Option("--ctype", help="Content-Type [text/plain]")] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="A captured MESSAGE as sent on the wire ('-': stdin)"),
    ] = None,
    send_at: Annotated[
        str | None, typer.Option("--send-at", help="Make it a reminder: YYYYMMDDHHMMSS")
    ] = None,
    db_url: DbUrl = None,
    table: TableOpt = None,
    profile: ProfileOpt = None,
    timezone: ZoneOpt = None,
) -> None:
    """Store a MESSAGE as m_store would: from --from, --to and --body, or a raw one (--file)."""
    built = (from_uri, to_uri, body, ctype)
    if file is not None:
        if any(v is not None for v in built):
            raise UsageError(
                "--file takes the whole MESSAGE; leave out --from, --to, --body, --ctype"
            )
        request = _read_message(file)
    elif from_uri is None or to_uri is None or body is None:
        raise UsageError("give --from, --to and --body, or --file with a raw MESSAGE")
    else:
        request = _build_message(from_uri, to_uri, body, ctype or "text/plain")
    settings = _settings(db_url, table, profile, timezone)
    console = _console()
    with _silo(settings, create=True) as silo:
        result = silo.store(request, send_at=send_at)
    if not result.stored:
        raise CliError(f"not stored: {result.status.value.replace('_', ' ')}")
    kind = "reminder" if send_at else "message"
    console.print(f"stored {kind} as mid {result.mid}")
    if result.notice is not None:
        console.rule("offline notice to send")
        console.print(_sip_text(result.notice), markup=False, soft_wrap=True)


def _address(value: str, option: str) -> NameAddr:
    try:
        return parse_name_addr(value)
    except InvalidURI as exc:
        raise InvalidURI(f"{option} {value!r}: {exc}") from None


def _build_message(from_value: str, to_value: str, body: str, ctype: str) -> SipRequest:
    sender, recipient = _address(from_value, "--from"), _address(to_value, "--to")
    return SipRequest(
        "MESSAGE",
        str(recipient.uri),
        [
            ("From", f"{sender};tag={uuid.uuid4().hex[:8]}" if sender.tag is None else str(sender)),
            ("To", str(recipient)),
            ("Call-ID", f"{uuid.uuid4().hex}@msilo-cli"),
            ("CSeq", "1 MESSAGE"),
            ("Content-Type", ctype),
        ],
        body.encode("utf-8"),
    )


def _read_message(file: Path) -> SipRequest:
    """A MESSAGE from a capture file (CRLF or bare-LF lines; Content-Length bounds the body)."""
    raw = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    request = SipRequest.parse(raw)
    if request.method != "MESSAGE":
        raise CliError(f"{file} holds a {request.method} request, not a MESSAGE")
    return request


@app.command()
@_errors
def config(
    opensips: Annotated[
        Path | None, typer.Option("--opensips", help="opensips.cfg to read modparams from")
    ] = None,
    kamailio: Annotated[
        Path | None, typer.Option("--kamailio", help="kamailio.cfg to read modparams from")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    show_secrets: Annotated[
        bool, typer.Option("--show-secrets", help="Show db_url's password instead of ***.")
    ] = False,
    define: Annotated[
        list[str] | None,
        typer.Option("-A", "--define", help="Pre-define NAME or NAME=VALUE, as kamailio -A."),
    ] = None,
) -> None:
    """Show the settings a server config's modparam("msilo", ...) lines give."""
    if (opensips is None) == (kamailio is None):
        raise UsageError("give exactly one of --opensips FILE or --kamailio FILE")
    if opensips is not None:
        if define:
            raise UsageError("-A/--define is for Kamailio configs")
        settings = MsiloSettings.from_opensips_cfg(path=opensips)
    else:
        assert kamailio is not None
        settings = MsiloSettings.from_kamailio_cfg(path=kamailio, defines=define or ())
    values = settings.model_dump(mode="json")
    if not show_secrets:
        values["db_url"] = mask_url(values["db_url"])
    if as_json:
        typer.echo(json.dumps(values, indent=2))
        return
    out = Table(title=f"msilo settings from {opensips or kamailio}")
    out.add_column("setting", style="bold")
    out.add_column("value", overflow="fold")
    for name, value in values.items():
        out.add_row(name, "-" if value is None else str(value))
    _console().print(out)


# ---- demo --------------------------------------------------------------------------------------

_DEMO_MESSAGE = (
    "MESSAGE sip:alice@example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bK776sgdkse{n}\r\n"
    "Max-Forwards: 70\r\n"
    'From: "Bob" <sip:bob@example.org>;tag=49583{n}\r\n'
    "To: <sip:alice@example.com>\r\n"
    "Call-ID: asd88asd77a{n}@192.0.2.4\r\n"
    "CSeq: 1 MESSAGE\r\n"
    "Contact: <sip:bob@192.0.2.4:5060>\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Length: {length}\r\n"
    "\r\n"
    "{body}"
)
_DEMO_REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKnashds7\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@example.com>;tag=456248\r\n"
    b"To: <sip:alice@example.com>\r\n"
    b"Call-ID: 843817637684230@998sdasdh09\r\n"
    b"CSeq: 1826 REGISTER\r\n"
    b"Contact: <sip:alice@192.0.2.7:5060>\r\n"
    b"Expires: 3600\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def _demo_request(n: int, body: str) -> SipRequest:
    data = body.encode("utf-8")
    raw = _DEMO_MESSAGE.format(n=n, length=len(data), body=body)
    return SipRequest.parse(raw.encode("utf-8"))


@app.command()
@_errors
def demo(
    db_url: Annotated[
        str | None,
        typer.Option(
            "--db-url", help="Store URL (default: a temporary SQLite file, removed afterwards)."
        ),
    ] = None,
    timezone: ZoneOpt = None,
) -> None:
    """Play a short scenario: bob writes to alice while she is offline, then she registers."""
    with tempfile.TemporaryDirectory(prefix="msilo-demo-") as tmp:
        url = db_url or f"sqlite:///{Path(tmp) / 'demo.db'}"
        # A table of its own, dropped at the end, so a given --db-url is left as it was.
        table = f"msilo_demo_{uuid.uuid4().hex[:8]}"
        settings = MsiloSettings(
            db_url=url,
            db_table=table,
            profile="libmsilo",
            timezone=timezone or "UTC",
            from_address="sip:registrar@example.com",
            contact_hdr="Contact: <sip:registrar@example.com>",
            offline_message="$tU is offline; your message will be delivered when $tU registers.",
            content_type_hdr="Content-Type: text/plain",
            reminder="sip:reminder@example.com",
            send_time=1,
            max_messages=0,
        )
        with _silo(settings, create=True) as silo:
            try:
                _play(silo, settings, _console(), db_url is None)
            finally:
                silo.driver.drop_schema()


def _play(silo: Silo, settings: MsiloSettings, console: Console, temporary: bool) -> None:
    where = "a temporary SQLite file" if temporary else mask_url(settings.db_url)
    console.rule(f"libmsilo demo (store: {where})")
    console.print("1. bob sends alice a MESSAGE while she is offline; m_store keeps it")
    first = silo.store(_demo_request(1, "Hi Alice, are you there?"))
    console.print(f"   stored as mid {first.mid}; m_store also returns an offline notice for bob:")
    if first.notice is not None:
        console.rule("offline notice", style="dim")
        console.print(_sip_text(first.notice), markup=False, soft_wrap=True)
        console.rule(style="dim")
    second = silo.store(_demo_request(2, "Call me when you are back."))
    console.print(f"2. a second MESSAGE: stored as mid {second.mid}")
    reminder = silo.store(
        _demo_request(3, "Reminder: team meeting at 15:00."),
        notify=False,
        send_at=int(time.time()) - 5,
    )
    console.print(f"3. a reminder for alice, due 5 s ago: stored as mid {reminder.mid}")
    console.print(f"   alice's inbox now holds {silo.count('sip:alice@example.com')} messages")

    console.print("4. alice REGISTERs; m_dump hands back the MESSAGEs to send:")
    for msg in silo.dump(SipRequest.parse(_DEMO_REGISTER)):
        console.rule(f"MESSAGE for stored mid {msg.mid}", style="dim")
        console.print(_sip_text(msg), markup=False, soft_wrap=True)
        outcome = silo.on_reply(msg.mid or 0, 200)
        console.print(f"   <- 200 OK: {outcome.value}")

    console.print("5. the timer ticks; the due reminder goes out:")
    for msg in silo.tick():
        console.rule(f"reminder MESSAGE for stored mid {msg.mid}", style="dim")
        console.print(_sip_text(msg), markup=False, soft_wrap=True)
        outcome = silo.on_reply(msg.mid or 0, 200)
        console.print(f"   <- 200 OK: {outcome.value}")

    left = silo.count("sip:alice@example.com")
    console.print(f"6. alice's inbox is {'empty' if left == 0 else f'holding {left}'}")
    out = Table(title="statistics (Silo.stats)")
    out.add_column("counter")
    out.add_column("value", justify="right")
    counters = silo.stats
    for f in dataclasses.fields(counters):
        out.add_row(f.name, str(getattr(counters, f.name)))
    console.print(out)


# ---- bench -------------------------------------------------------------------------------------

app.command("bench")(_errors(cli_bench.bench))


def main() -> None:
    """Entry point of the ``msilo`` console script."""
    app()
