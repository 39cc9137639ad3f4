"""Kamailio's extra columns through the Silo: extra_hdrs kept and put back, the extra_hdrs
setting, use_mode Call-ID reuse, the bare Content-Type, and their limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from libmsilo import InvalidRequest, MsiloSettings, Silo, SipRequest
from libmsilo.core import header_pairs, kamailio_ctype

NOW = 1_700_000_000


def _message(*extra: tuple[str, str], ctype: str = "text/plain", **kw: Any) -> SipRequest:
    headers = [
        ("Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1"),
        ("From", "<sip:alice@example.org>;tag=a"),
        ("To", "<sip:bob@example.org>"),
        ("Call-ID", "orig-call@example.org"),
        ("CSeq", "1 MESSAGE"),
        ("Subject", "known to Kamailio"),
        ("Content-Type", ctype),
        *extra,
    ]
    return SipRequest("MESSAGE", "sip:bob@example.org", headers, b"hi", **kw)


REGISTER = SipRequest(
    "REGISTER",
    "sip:example.org",
    [
        ("From", "<sip:bob@example.org>;tag=b"),
        ("To", "<sip:bob@example.org>"),
        ("Call-ID", "reg-1"),
        ("Contact", "<sip:bob@192.0.2.2>"),
        ("User-Agent", "phone/1.0"),
    ],
)


def _silo(tmp_path: Path, **settings: Any) -> Silo:
    values: dict[str, Any] = {"db_url": f"sqlite:///{tmp_path / 'k.db'}", **settings}
    return Silo.from_settings(MsiloSettings(**values), clock=lambda: NOW)


def test_kamailio_profile_keeps_unparsed_and_identity_headers_and_sends_them_back(
    tmp_path: Path,
) -> None:
    with _silo(tmp_path, profile="kamailio") as silo:
        request = _message(
            ("X-Tag", "one"),
            ("P-Asserted-Identity", "<sip:alice@example.org>"),
            ("Privacy", "id"),
            ("User-Agent", "ua/2"),
            ("x-lower", "two"),
        )
        mid = silo.store(request, notify=False).mid
        assert mid is not None
        row = silo.get(mid)
        assert row is not None
        assert row.extra_hdrs == (
            "X-Tag: one\r\nP-Asserted-Identity: <sip:alice@example.org>\r\n"
            "Privacy: id\r\nx-lower: two\r\n"
        )
        assert row.callid == ""  # use_mode 0
        (msg,) = silo.dump(REGISTER)
    assert msg.call_id is None
    names = [name for name, _ in msg.headers]
    assert names == ["Date", "Content-Type", "X-Tag", "P-Asserted-Identity", "Privacy", "x-lower"]


def test_libmsilo_profile_keeps_no_header_lines(tmp_path: Path) -> None:
    with _silo(tmp_path) as silo:
        mid = silo.store(_message(("X-Tag", "one")), notify=False).mid
        assert mid is not None
        row = silo.get(mid)
        assert row is not None and row.extra_hdrs == ""


def test_the_avp_replaces_the_kept_lines_in_any_profile(tmp_path: Path) -> None:
    with _silo(tmp_path, extra_hdrs_avp="$avp(xh)") as silo:
        request = _message(("X-Tag", "one"), avps={"xh": ["old: 1\r\n", "X-From-Avp: yes\r\n"]})
        mid = silo.store(request, notify=False).mid
        assert mid is not None
        row = silo.get(mid)
        assert row is not None and row.extra_hdrs == "X-From-Avp: yes\r\n"


def test_lines_reaching_1024_bytes_are_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    with _silo(tmp_path, profile="kamailio") as silo:
        # "X-Big: " + value + CRLF: 1024 bytes with 1015 characters of value
        with pytest.raises(InvalidRequest, match="1024"):
            silo.store(_message(("X-Big", "x" * 1015)), notify=False)
        assert silo.count("sip:bob@example.org") == 0
        assert silo.store(_message(("X-Big", "x" * 1014)), notify=False).stored


def test_an_avp_value_that_is_no_header_line_is_refused(tmp_path: Path) -> None:
    with _silo(tmp_path, extra_hdrs_avp="xh") as silo:
        with pytest.raises(InvalidRequest, match="not a header line"):
            silo.store(_message(avps={"xh": "no colon here\r\n"}), notify=False)
        assert silo.count("sip:bob@example.org") == 0


def test_use_mode_1_keeps_the_call_id_for_the_dump(tmp_path: Path) -> None:
    with _silo(tmp_path, profile="kamailio", use_mode=1) as silo:
        mid = silo.store(_message(), notify=False).mid
        assert mid is not None
        row = silo.get(mid)
        assert row is not None and row.callid == "orig-call@example.org"
        (msg,) = silo.dump(REGISTER)
    assert msg.call_id == "orig-call@example.org"


def test_the_extra_hdrs_setting_is_rendered_against_the_register(tmp_path: Path) -> None:
    template = "X-Dumped-For: $tu\r\nX-UA: $hdr(User-Agent)\r\n"
    with _silo(tmp_path, profile="kamailio", extra_hdrs=template) as silo:
        silo.store(_message(("X-Tag", "one")), notify=False)
        (msg,) = silo.dump(REGISTER)
    assert msg.headers[2:] == (
        ("X-Dumped-For", "sip:bob@example.org"),
        ("X-UA", "phone/1.0"),
        ("X-Tag", "one"),
    )


def test_reminders_carry_no_extra_lines(tmp_path: Path) -> None:
    settings = {"profile": "kamailio", "reminder": "sip:r@example.org", "send_time": 1}
    with _silo(tmp_path, **settings, extra_hdrs="X-Dump: 1\r\n") as silo:
        silo.store(_message(("X-Tag", "one")), notify=False, send_at=NOW - 5)
        (msg,) = silo.tick(NOW + 1)
    assert [n for n, _ in msg.headers] == ["Content-Type"]


@pytest.mark.parametrize(
    ("header", "stored"),
    [
        ("text/plain", "text/plain"),
        ("text/plain; charset=UTF-8", "text/plain"),
        ("Text/Plain;charset=utf-8", "text/plain"),
        ("message/CPIM", "text/plain"),
        ("text/html; charset=utf-8", "text/html"),
        ("application/im-iscomposing+xml", "application/im-iscomposing+xml"),
    ],
)
def test_kamailio_stores_the_bare_content_type(header: str, stored: str, tmp_path: Path) -> None:
    assert kamailio_ctype(header) == stored
    with _silo(tmp_path, profile="kamailio") as silo:
        mid = silo.store(_message(ctype=header), notify=False).mid
        assert mid is not None
        row = silo.get(mid)
        assert row is not None and row.ctype == stored
    with _silo(tmp_path / "..", db_url=f"sqlite:///{tmp_path / 'l.db'}") as silo:
        mid = silo.store(_message(ctype=header), notify=False).mid
        assert mid is not None
        row = silo.get(mid)
        assert row is not None and row.ctype == header  # libmsilo keeps it whole


def test_header_pairs_unfold_and_accept_bare_lf() -> None:
    assert header_pairs("A: 1\r\n  more\nB:2\r\n\r\n") == [("A", "1 more"), ("B", "2")]


def test_settings_read_kamailio_parameters() -> None:
    cfg = """
    modparam("msilo", "extra_hdrs", "X-Reg: $tu\\r\\n")
    modparam("msilo", "extra_hdrs_avp", "$avp(xh)")
    modparam("msilo", "use_mode", 1)
    modparam("msilo", "skip_notification_flag", 7)
    modparam("msilo", "sc_stored_hdrs", "hdrs")
    modparam("msilo", "sc_callid", "cid")
    """
    settings = MsiloSettings.from_kamailio_cfg(cfg)
    assert settings.extra_hdrs == "X-Reg: $tu\r\n"
    assert settings.extra_hdrs_avp == "xh"
    assert (settings.use_mode, settings.skip_notification_flag) == (1, 7)
    layout = settings.layout()
    assert (layout.extra_hdrs, layout.callid) == ("hdrs", "cid")


@pytest.mark.parametrize("flag", [-2, 32])
def test_skip_notification_flag_is_a_flag_index(flag: int) -> None:
    with pytest.raises(Exception, match="skip_notification_flag"):
        MsiloSettings(skip_notification_flag=flag)


def test_the_sql_driver_reads_extra_headers_kamailio_wrote(tmp_path: Path) -> None:
    # Kamailio's msilo writes extra_hdrs as a BLOB (SQLite) or, on PostgreSQL, as the bytea hex
    # form of the bytes in a text column; libmsilo reads both back as the header text.
    lines = "P-Asserted-Identity: <sip:alice@example.org>\r\n"
    with _silo(tmp_path, profile="kamailio") as silo:
        blob = silo.store(_message(), notify=False).mid
        hexed = silo.store(_message(), notify=False).mid
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'k.db'}")
        with engine.begin() as conn:
            update = sa.text("UPDATE silo SET extra_hdrs = :v WHERE id = :id")
            conn.execute(update, {"v": lines.encode(), "id": blob})
            conn.execute(update, {"v": "\\x" + lines.encode().hex(), "id": hexed})
        engine.dispose()
        for mid in (blob, hexed):
            row = silo.get(mid)  # type: ignore[arg-type]
            assert row is not None and row.extra_hdrs == lines
        (first, second) = silo.dump(REGISTER)
    assert ("P-Asserted-Identity", "<sip:alice@example.org>") in first.headers
    assert ("P-Asserted-Identity", "<sip:alice@example.org>") in second.headers
