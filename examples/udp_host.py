"""A tiny SIP host over UDP that uses libmsilo: registrar, MESSAGE relay, offline store.

Not a proxy for production (no transactions, no retransmissions, no authentication): it shows
where a SIP stack calls libmsilo. A MESSAGE for a registered user is relayed to its contact; for
an offline user it is stored (202 Accepted) and the sender gets the offline notice; a REGISTER
saves the binding (200 OK) and sends the stored messages; their final replies go back to
``Silo.on_reply``. Run: ``python examples/udp_host.py [PORT]`` (loopback only).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import cast

from libmsilo import MessageKind, MsiloError, MsiloSettings, OutgoingMessage, Silo, SipRequest
from libmsilo.uri import aor, parse_uri

Address = tuple[str, int]


def _reply(request: SipRequest, code: int, reason: str) -> bytes:
    """A response echoing the request's Via, From, To, Call-ID and CSeq."""
    lines = [f"SIP/2.0 {code} {reason}"]
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        lines += [f"{name}: {value}" for value in request.header_all(name)]
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status(data: bytes) -> tuple[int, str] | None:
    """(status code, Call-ID) of a response, or None when ``data`` is not one."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").split("\r\n")
    parts = head[0].split(" ", 2)
    if len(parts) < 2 or parts[0] != "SIP/2.0" or not parts[1].isdigit():
        return None
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() in ("call-id", "i"):
            return int(parts[1]), value.strip()
    return None


class SipHost(asyncio.DatagramProtocol):
    """Registrar + relay + offline store on one UDP socket."""

    def __init__(self, silo: Silo) -> None:
        self.silo = silo
        self.bindings: dict[tuple[str, str], str] = {}  # AOR key -> contact URI
        self.pending: dict[str, OutgoingMessage] = {}  # Call-ID -> message awaiting its reply
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        status = _status(data)
        if status is not None:
            self._on_response(*status)
            return
        try:
            request = SipRequest.parse(data, source=addr)
        except MsiloError:
            return  # not SIP: drop it
        if request.method == "REGISTER":
            self._on_register(request, addr)
        elif request.method == "MESSAGE":
            self._on_message(request, addr)

    def _on_register(self, request: SipRequest, addr: Address) -> None:
        key = aor(request.to_addr.uri)
        contacts = request.contacts
        if contacts and (request.expires or 1) > 0:
            self.bindings[key] = str(contacts[0].uri)
        else:
            self.bindings.pop(key, None)
        self._send_raw(_reply(request, 200, "OK"), addr)
        for msg in self.silo.dump(request):  # [] unless the REGISTER adds a MESSAGE-capable contact
            self.send(msg)

    def _on_message(self, request: SipRequest, addr: Address) -> None:
        contact = self.bindings.get(aor(request.ruri_uri))
        if contact is not None:
            self._send_raw(_reply(request, 200, "OK"), addr)
            self.send(
                OutgoingMessage(
                    kind=MessageKind.DUMP,
                    mid=None,  # relayed, never stored: no reply goes back to the silo
                    ruri=contact,
                    from_uri=str(request.from_addr.uri),
                    to_uri=str(request.to_addr.uri),
                    headers=(),
                    body=request.body,
                    content_type=request.content_type,
                )
            )
            return
        try:
            result = self.silo.store(request)
        except MsiloError as exc:
            self._send_raw(_reply(request, 400, f"Bad Request ({type(exc).__name__})"), addr)
            return
        if not result.stored:
            self._send_raw(_reply(request, 486, "Busy Here (mailbox full)"), addr)
            return
        self._send_raw(_reply(request, 202, "Accepted"), addr)
        if result.notice is not None:
            self.send(result.notice)

    def _on_response(self, code: int, call_id: str) -> None:
        msg = self.pending.get(call_id)
        if msg is None or msg.mid is None or code < 200:
            return
        del self.pending[call_id]
        self.silo.on_reply(msg.mid, code, token=msg.lease_token)

    def send(self, msg: OutgoingMessage) -> None:
        """Put an outgoing MESSAGE on the wire, to its next hop or its Request-URI."""
        call_id = f"{uuid.uuid4().hex}@msilo"
        target = parse_uri(msg.next_hop or msg.ruri)
        if msg.mid is not None:  # notices and relays are fire-and-forget
            self.pending[call_id] = msg
        wire = msg.to_bytes(
            call_id=call_id,
            from_tag=uuid.uuid4().hex[:8],
            via=f"SIP/2.0/UDP {self._local()};branch=z9hG4bK{uuid.uuid4().hex[:16]}",
        )
        self._send_raw(wire, (target.host, target.port or 5060))

    def _local(self) -> str:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return f"{host}:{port}"

    def _send_raw(self, data: bytes, addr: Address) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)


async def serve(silo: Silo, port: int = 5060) -> tuple[asyncio.DatagramTransport, SipHost]:
    """Listen on 127.0.0.1:``port`` (0 picks a free port)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: SipHost(silo), local_addr=("127.0.0.1", port)
    )
    return transport, protocol


async def main(port: int) -> None:
    settings = MsiloSettings(
        from_address="sip:msilo@127.0.0.1",
        offline_message="$rU is offline; the message will be delivered later",
        content_type_hdr="Content-Type: text/plain\r\n",
    )
    silo = Silo.from_settings(settings)
    transport, _ = await serve(silo, port)
    print(f"listening on udp 127.0.0.1:{port}; Ctrl-C stops")
    try:
        await asyncio.Event().wait()
    finally:
        transport.close()
        silo.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5060))
