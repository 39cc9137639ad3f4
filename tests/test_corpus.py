"""Real-world REGISTER and MESSAGE requests through store, notice and dump, on every backend.

Each directory of ``tests/corpus/`` holds a MESSAGE and a REGISTER as a kind of user agent or
server sends them (written for these tests after the products' documentation and the RFC
examples), ``case.json`` with the owner, the dump target and the notice target a SIP engineer
expects, and ``sent.sip``: the exact MESSAGE the dump hands to the host. Files are kept with LF
line ends for review; :func:`wire` turns them into the CRLF bytes of the wire.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from libmsilo import MessageKind, SipRequest
from libmsilo.silo import ReplyOutcome
from tests.helpers import T0, Clock, make_silo

pytestmark = pytest.mark.usefixtures("backend")  # every backend: tests/conftest.py

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "case.json").is_file())
NOTICES = {
    "from_address": '"Message Service" <sip:registrar@example.com>',
    "offline_message": "$rU is offline; the message will be delivered later",
    "content_type_hdr": "Content-Type: text/plain\r\n",
}


def wire(path: Path) -> bytes:
    """A corpus file as sent: CRLF line ends, body without the file's final newline."""
    text = path.read_text(encoding="utf-8")
    head, _, body = text.partition("\n\n")
    return (head + "\n\n" + body.removesuffix("\n")).replace("\n", "\r\n").encode("utf-8")


def load(case: str) -> tuple[dict[str, Any], SipRequest, SipRequest]:
    folder = CORPUS / case
    meta = json.loads((folder / "case.json").read_text(encoding="utf-8"))
    message = SipRequest.parse(wire(folder / "message.sip"))
    register = SipRequest.parse(wire(folder / "register.sip"))
    return meta, message, register


def test_the_corpus_covers_the_traffic_it_promises() -> None:
    names = " ".join(CASES)
    for kind in ("linphone", "zoiper", "microsip", "bria", "jssip", "sipjs", "asterisk",
                 "freeswitch", "kamailio", "opensips", "rfc5626", "gruu", "ipv6"):  # fmt: skip
        assert kind in names, kind
    for case in CASES:
        _, message, register = load(case)
        assert (message.method, register.method) == ("MESSAGE", "REGISTER"), case
        for request in (message, register):
            length = request.header("Content-Length")
            assert length is not None and int(length) == len(request.body), case


@pytest.mark.parametrize("case", CASES)
def test_store_notice_and_dump(case: str) -> None:
    meta, message, register = load(case)
    clock = Clock(T0)
    silo = make_silo(clock, **NOTICES)

    result = silo.store(message)
    assert result.stored, case
    (row,) = silo.list(meta["owner"])
    assert row.body == message.body and row.ctype == (message.content_type or "text/plain")
    assert row.src_addr == str(message.from_addr.uri)

    notice = result.notice
    assert notice is not None and notice.kind is MessageKind.NOTICE
    assert notice.ruri == meta["notice_target"]
    sent_notice = SipRequest.parse(notice.to_bytes(call_id="n@msilo", from_tag="n"))
    assert sent_notice.from_addr.display_name == "Message Service"
    assert str(sent_notice.to_addr.uri) == str(message.from_addr.uri)

    clock.advance(5)
    (out,) = silo.dump(register)
    assert out.kind is MessageKind.DUMP and out.mid == row.mid
    assert out.ruri == meta["dump_target"]
    raw = out.to_bytes(call_id="corpus@msilo", from_tag="corpus")
    assert raw == wire(CORPUS / case / "sent.sip")
    delivered = SipRequest.parse(raw)
    assert delivered.ruri == meta["dump_target"]
    assert delivered.body.endswith(message.body)
    assert silo.dump(register) == []  # leased
    assert silo.on_reply(out.mid or 0, 200, token=out.lease_token) is ReplyOutcome.DELIVERED
    assert silo.count(meta["owner"]) == 0
