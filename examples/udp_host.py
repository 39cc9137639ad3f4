"""A small SIP registrar and MESSAGE relay over UDP; libmsilo stores what it cannot deliver.

REGISTER saves bindings with expiry, then ``dump`` hands back the stored MESSAGEs; each is sent
in a client transaction whose final reply (or timeout) goes to ``on_reply``. A MESSAGE to a
registered user is relayed statefully; a failure reply or Timer F stores it and answers 202 (like
the failure_route of Kamailio's msilo sample); with no binding it is stored, answered 202, and the
sender gets the offline notice. The silo's timers run in the same loop. Not a production proxy:
UDP only, no authentication, no DNS, no forking. Settings not on the command line: ``MSILO_*``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import re
import signal
import time
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from typing import Any, NamedTuple, cast

from libmsilo import AsyncSilo, InvalidRequest, MsiloSettings, SipRequest, StorageError
from libmsilo.message import OutgoingMessage
from libmsilo.uri import URI, aor, parse_uri

Address = tuple[str, int]
Headers = Sequence[tuple[str, str]]
Sent = tuple[bytes, Address]  # a response and where it went
T1, T2 = 0.5, 4.0  # RFC 3261 §17.1.1.1, seconds
ECHOED = {"via", "v", "from", "f", "to", "t", "call-id", "i", "cseq"}  # copied into responses
TAG = re.compile(r";\s*tag\s*=", re.IGNORECASE)


class Answer(NamedTuple):
    """The final response to a request, and the MESSAGEs to send once it is out."""

    code: int
    reason: str
    headers: Sequence[str] = ()
    note: str = ""  # for the log line
    then: Sequence[OutgoingMessage] = ()


def _head(data: bytes) -> tuple[str, list[tuple[str, str]]]:
    """The start line and header fields of a datagram, read leniently."""
    lines = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").split("\r\n")
    pairs = [line.partition(":") for line in lines[1:]]
    return lines[0], [(name.strip(), value.strip()) for name, colon, value in pairs if colon]


def _stamp_via(value: str, source: Address) -> tuple[str, Address]:
    """The top Via with ``received`` and a filled ``rport`` (RFC 3581), and where to answer."""
    top, *rest = value.split(",", 1)  # "SIP/2.0/UDP host:port;branch=...;rport", others
    fields = [f.strip() for f in top.split(";") if not f.strip().lower().startswith("received=")]
    port = re.search(r":(\d+)$", fields[0])  # of "SIP/2.0/UDP host:port"
    reply_to = (source[0], int(port.group(1)) if port else 5060)  # RFC 3261 §18.2.2
    for i, field in enumerate(fields):
        if field.lower() in ("rport", "rport="):  # RFC 3581 §4: answer the source port, say so
            fields[i], reply_to = f"rport={source[1]}", source
    fields.append(f"received={source[0]}")
    return ";".join(fields) + "".join("," + r for r in rest), reply_to


def _response(headers: Headers, answer: Answer, source: Address) -> Sent:
    """The response to a request (RFC 3261 §8.2.6): Via, From, To (tagged), Call-ID, CSeq."""
    lines, reply_to, top = [f"SIP/2.0 {answer.code} {answer.reason}"], source, True
    for name, value in headers:
        key = name.lower()
        if key in ("via", "v") and top:
            value, reply_to, top = (*_stamp_via(value, source), False)
        elif key in ("to", "t") and not TAG.search(value.rpartition(">")[2]):
            value += ";tag=" + hashlib.sha1(repr(headers).encode()).hexdigest()[:10]
        if key in ECHOED:
            lines.append(f"{name}: {value}")
    lines += [*answer.headers, "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode(), reply_to


def _address(uri: URI) -> Address:  # no DNS: the host part is an address
    return uri.host.strip("[]"), uri.port or 5060


class SipHost(asyncio.DatagramProtocol):
    """Registrar, stateful MESSAGE relay and offline store on one UDP socket."""

    transport: asyncio.DatagramTransport
    via: str  # "SIP/2.0/UDP host:port" of this socket

    def __init__(self, silo: AsyncSilo, domain: str, timer_f: float, max_expires: int) -> None:
        self.silo, self.domain, self.timer_f, self.max_expires = silo, domain, timer_f, max_expires
        self.bindings: dict[tuple[str, str], dict[str, float]] = {}  # AOR -> contact -> expiry
        self.clients: dict[str, asyncio.Future[tuple[int, str]]] = {}  # branch -> final reply
        self.servers: dict[str, Sent | None] = {}  # request -> its response (None: pending)
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        host, port = self.transport.get_extra_info("sockname")[:2]
        self.via = f"SIP/2.0/UDP [{host}]:{port}" if ":" in host else f"SIP/2.0/UDP {host}:{port}"

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:  # asyncio logs a failure
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def send_later(self, msg: OutgoingMessage) -> None:
        """Start delivering ``msg`` without waiting for its reply (the timers' sender)."""
        self.spawn(self.deliver(msg))

    def datagram_received(self, data: bytes, addr: Address) -> None:
        start, headers, addr = *_head(data), addr[:2]  # IPv6 adds flow and scope: dropped
        via = next((v for n, v in headers if n.lower() in ("via", "v")), "")
        if start.startswith("SIP/2.0 "):  # a response: to one of our client transactions?
            code, _, reason = start[8:].partition(" ")
            branch = re.search(r";\s*branch=([^;,\s]+)", via)
            future = self.clients.get(branch.group(1) if branch else "")
            if code.isdigit() and int(code) >= 200 and future is not None and not future.done():
                future.set_result((int(code), reason))
            return
        try:
            request = SipRequest.parse(data, source=addr)
        except InvalidRequest as exc:  # answerable when it looks like a request with a Via
            if via and len(start.split(" ")) == 3:
                what = start.rsplit(" ", 1)[0]
                self._answer(headers, Answer(400, "Bad Request", note=str(exc)), addr, what)
            return
        if request.method == "ACK" or not via:
            return
        key = f"{via}|{request.call_id}|{request.header('CSeq')}"
        if key in self.servers:  # a retransmission: repeat the answer, or let it be on its way
            if (sent := self.servers[key]) is not None:
                self.transport.sendto(*sent)
            return
        self.servers[key] = None
        self.spawn(self._serve(request, key))

    async def _serve(self, request: SipRequest, key: str) -> None:
        assert request.source is not None
        handler = {"REGISTER": self._register, "MESSAGE": self._message}.get(request.method)
        try:
            answer = Answer(405, "Method Not Allowed", ["Allow: REGISTER, MESSAGE"])
            answer = await handler(request) if handler else answer
        except (InvalidRequest, ValueError) as exc:
            answer = Answer(400, "Bad Request", note=str(exc))
        except StorageError as exc:
            answer = Answer(503, "Service Unavailable", note=str(exc))
        what = f"{request.method} {request.ruri}"
        self.servers[key] = self._answer(request.headers, answer, request.source, what)
        asyncio.get_running_loop().call_later(64 * T1, self.servers.pop, key, None)  # Timer J
        for msg in answer.then:
            self.spawn(self.deliver(msg))
        if request.method == "REGISTER" and answer.code == 200:
            for msg in await self.silo.dump(request):  # [] unless a contact accepts MESSAGE
                self.spawn(self.deliver(msg))

    def _answer(self, headers: Headers, answer: Answer, source: Address, what: str) -> Sent:
        """Send the response, log the request in one line, return what was sent where."""
        sent = _response(headers, answer, source)
        self.transport.sendto(*sent)
        note = f" ({answer.note})" if answer.note else ""
        logging.info("%s from %s:%d -> %d %s%s", what, *source, answer.code, answer.reason, note)
        return sent

    def contacts(self, key: tuple[str, str]) -> list[tuple[str, int]]:
        """The live bindings of an AOR as (contact, seconds left), newest last."""
        now = time.monotonic()
        live = {uri: until for uri, until in self.bindings.pop(key, {}).items() if until > now}
        if live:
            self.bindings[key] = live
        return [(uri, round(until - now)) for uri, until in live.items()]

    async def _register(self, request: SipRequest) -> Answer:
        key, header = aor(request.to_addr.uri), request.expires
        default = min(self.max_expires, 3600 if header is None else max(header, 0))
        binding = self.bindings.setdefault(key, {})
        if request.contact_star:  # RFC 3261 §10.3 step 6
            if header != 0 or len(request.header_list("Contact")) > 1:
                raise InvalidRequest("Contact: * needs Expires: 0 and no other contact")
            binding.clear()
        for contact in request.contacts:
            given = (contact.param("expires") or "").strip()
            seconds = min(int(given), self.max_expires) if given.isdigit() else default
            binding.pop(str(contact.uri), None)  # re-added last: the newest contact is used
            if seconds > 0:
                binding[str(contact.uri)] = time.monotonic() + seconds
        live = self.contacts(key)
        bound = [f"Contact: <{uri}>;expires={left}" for uri, left in live]
        return Answer(200, "OK", [*bound, f"Expires: {default}"], f"{len(live)} binding(s)")

    async def _message(self, request: SipRequest) -> Answer:
        """Relay to the newest binding (RFC 3261 §16.6); store on no binding, failure or timeout."""
        assert request.source is not None
        contacts, hops = self.contacts(aor(request.ruri_uri)), request.header("Max-Forwards")
        if not contacts:
            return await self._store(request, "offline")
        if int(hops or 70) <= 0:  # a ValueError is answered 400
            return Answer(483, "Too Many Hops")
        branch, top = f"z9hG4bK{uuid.uuid4().hex}", True
        lines = [f"MESSAGE {contacts[-1][0]} SIP/2.0", f"Via: {self.via};branch={branch}"]
        for name, value in request.headers:
            key = name.lower()
            if key in ("via", "v") and top:
                value, top = _stamp_via(value, request.source)[0], False
            elif key in ("max-forwards", "content-length", "l"):
                continue
            lines.append(f"{name}: {value}")
        lines += [f"Max-Forwards: {int(hops or 70) - 1}", f"Content-Length: {len(request.body)}"]
        wire = "\r\n".join([*lines, "", ""]).encode() + request.body
        code, reason = await self._transaction(wire, branch, _address(parse_uri(contacts[-1][0])))
        if code < 300:
            return Answer(code, reason, note=f"relayed to {contacts[-1][0]}")
        return await self._store(request, f"relay answered {code} {reason}")

    async def _store(self, request: SipRequest, why: str) -> Answer:
        result = await self.silo.store(request)
        if not result.stored:
            return Answer(486, "Busy Here", note=f"{why}; mailbox full")
        notice = () if result.notice is None else (result.notice,)
        return Answer(202, "Accepted", note=f"{why}; stored as {result.mid}", then=notice)

    async def deliver(self, msg: OutgoingMessage) -> None:
        """Send a MESSAGE the silo returned; its final reply (or timeout) goes to ``on_reply``."""
        code, reason = 480, "Temporarily Unavailable (no binding)"
        try:
            if (ruri := self.lookup(msg.ruri)) is not None:
                branch, out = f"z9hG4bK{uuid.uuid4().hex}", replace(msg, ruri=ruri)
                via = f"{self.via};branch={branch}"
                wire = out.to_bytes(call_id=f"{branch}@msilo", from_tag=branch[-8:], via=via)
                hop = _address(parse_uri(msg.next_hop or ruri))
                code, reason = await self._transaction(wire, branch, hop)
        except InvalidRequest as exc:
            code, reason = 500, f"not sent: {exc}"
        outcome = ""
        if msg.mid is not None:
            outcome = (await self.silo.on_reply(msg.mid, code, token=msg.lease_token)).value
        what = msg.kind.value + ("" if msg.mid is None else f" {msg.mid}")
        logging.info("%s to %s -> %d %s %s", what, msg.ruri, code, reason, outcome)

    def lookup(self, uri_text: str) -> str | None:
        """The newest contact of an AOR of our domain (None: offline); other URIs as they are."""
        uri = parse_uri(uri_text)
        if uri.port is None and uri.host.strip("[]").lower() == self.domain.strip("[]").lower():
            contacts = self.contacts(aor(uri))
            return contacts[-1][0] if contacts else None
        return uri_text

    async def _transaction(self, wire: bytes, branch: str, dest: Address) -> tuple[int, str]:
        """A non-INVITE client transaction (RFC 3261 §17.1.2); no final reply in Timer F: 408."""
        loop = asyncio.get_running_loop()
        future = self.clients[branch] = loop.create_future()
        deadline, interval = loop.time() + self.timer_f, T1
        try:
            while (left := deadline - loop.time()) > 0:
                self.transport.sendto(wire, dest)
                try:
                    return await asyncio.wait_for(asyncio.shield(future), min(interval, left))
                except TimeoutError:
                    interval = min(2 * interval, T2)
            return 408, "Request Timeout"
        finally:
            del self.clients[branch]


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGINT or SIGTERM."""
    given = {k: v for k, v in vars(args).items() if k in MsiloSettings.model_fields and v}
    silo, loop = await AsyncSilo.from_settings(MsiloSettings(**given)), asyncio.get_running_loop()
    host = SipHost(silo, args.domain or args.host, args.timer_f, args.max_expires)
    transport, _ = await loop.create_datagram_endpoint(lambda: host, (args.host, args.port))
    timers, stop = loop.create_task(silo.run_forever(host.send_later)), asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    logging.info("listening on udp %s", host.via.split()[-1])
    try:
        await stop.wait()
    finally:
        timers.cancel()
        transport.close()
        await silo.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    add("--port", type=int, default=5060, help="UDP port, 0: any free one (default %(default)s)")
    add("--domain", help="AOR domain served here, IPv6 with or without [] (default: --host)")
    add("--db-url", help="message store URL (default: MSILO_DB_URL, else sqlite:///msilo.db)")
    add("--from-address", default="sip:msilo@127.0.0.1", help="From of notices, dumps")
    add("--offline-message", default="$rU is offline", help="notice text ('' sends none)")
    add("--content-type-hdr", default="Content-Type: text/plain", help="the notice's type")
    add("--timer-f", type=float, default=30.0, help="relay timeout (s), below the sender's 32 s")
    add("--max-expires", type=int, default=3600, help="longest binding, s (default %(default)s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(serve(args))
