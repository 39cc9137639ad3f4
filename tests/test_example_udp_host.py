"""examples/udp_host.py end to end over real UDP on loopback: offline store, notice, delivery on
REGISTER, 200 OK back to the silo."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
from pathlib import Path
from types import ModuleType

from libmsilo import MsiloSettings, Silo

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "udp_host.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("udp_host", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class UA:
    """A user agent: one UDP socket on loopback."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    @property
    def contact(self) -> str:
        return f"sip:{self.user}@127.0.0.1:{self.port}"

    async def recv(self, timeout: float = 5.0) -> bytes:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.sock_recv(self.sock, 65535), timeout)

    def send(self, data: str, port: int) -> None:
        self.sock.sendto(data.replace("\n", "\r\n").encode(), ("127.0.0.1", port))


def _header(data: bytes, name: str) -> str:
    for line in data.decode().split("\r\n"):
        if line.lower().startswith(name.lower() + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in {data!r}")


async def _scenario(tmp_path: Path) -> None:
    host_module = _load()
    settings = MsiloSettings(
        db_url=f"sqlite:///{tmp_path / 'host.db'}",
        from_address="sip:msilo@127.0.0.1",
        offline_message="$rU is offline",
        content_type_hdr="Content-Type: text/plain\r\n",
        timezone="UTC",
    )
    silo = Silo.from_settings(settings)
    transport, host = await host_module.serve(silo, 0)
    port = transport.get_extra_info("sockname")[1]
    bob, alice = UA("bob"), UA("alice")
    try:
        bob.send(
            "MESSAGE sip:alice@127.0.0.1 SIP/2.0\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{bob.port};branch=z9hG4bK1\n"
            "From: <sip:bob@127.0.0.1>;tag=b1\nTo: <sip:alice@127.0.0.1>\n"
            f"Call-ID: m1@bob\nCSeq: 1 MESSAGE\nContact: <{bob.contact}>\n"
            "Content-Type: text/plain\nContent-Length: 5\n\nhello",
            port,
        )
        reply = await bob.recv()
        assert reply.startswith(b"SIP/2.0 202 ")
        notice = await bob.recv()
        assert notice.startswith(f"MESSAGE {bob.contact} SIP/2.0".encode())
        assert notice.endswith(b"\r\n\r\nalice is offline")
        assert silo.count("sip:alice@127.0.0.1") == 1

        alice.send(
            "REGISTER sip:127.0.0.1 SIP/2.0\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{alice.port};branch=z9hG4bK2\n"
            "From: <sip:alice@127.0.0.1>;tag=a1\nTo: <sip:alice@127.0.0.1>\n"
            f"Call-ID: r1@alice\nCSeq: 1 REGISTER\nContact: <{alice.contact}>\n"
            "Expires: 3600\nContent-Length: 0\n\n",
            port,
        )
        assert (await alice.recv()).startswith(b"SIP/2.0 200 ")
        delivered = await alice.recv()
        assert delivered.startswith(f"MESSAGE {alice.contact} SIP/2.0".encode())
        assert delivered.endswith(b"] hello")
        assert _header(delivered, "Contact") == "<sip:bob@127.0.0.1>;msilo=yes"
        call_id = _header(delivered, "Call-ID")
        alice.send(
            f"SIP/2.0 200 OK\nCall-ID: {call_id}\nCSeq: 10 MESSAGE\nContent-Length: 0\n\n", port
        )
        for _ in range(50):  # the host handles the datagram asynchronously
            if silo.count("sip:alice@127.0.0.1") == 0:
                break
            await asyncio.sleep(0.02)
        assert silo.count("sip:alice@127.0.0.1") == 0
        assert silo.stats.dumped_messages == 1
        assert host.pending == {}
    finally:
        transport.close()
        silo.close()
        bob.sock.close()
        alice.sock.close()


def test_udp_host_end_to_end(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(_scenario(tmp_path), 30))
