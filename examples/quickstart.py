"""The README tour as a runnable script: store, dump on REGISTER, replies, timers.

Run it with ``python examples/quickstart.py [DB_URL]`` (default: an in-memory store).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

from libmsilo import MsiloSettings, OutgoingMessage, Silo, SipRequest

MESSAGE = (
    b"MESSAGE sip:alice@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bK776sgdkse\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Bob" <sip:bob@example.org>;tag=49583\r\n'
    b"To: <sip:alice@example.com>\r\n"
    b"Contact: <sip:bob@192.0.2.4:5060>\r\n"
    b"Call-ID: asd88asd77a@192.0.2.4\r\n"
    b"CSeq: 1 MESSAGE\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 18\r\n"
    b"\r\n"
    b"Watson, come here."
)

REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKnashds7\r\n"
    b"From: <sip:alice@example.com>;tag=456248\r\n"
    b"To: <sip:alice@example.com>\r\n"
    b"Call-ID: 843817637684230@998sdasdh09\r\n"
    b"CSeq: 1826 REGISTER\r\n"
    b"Contact: <sip:alice@192.0.2.7:5060>\r\n"
    b"Expires: 3600\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)


def main(db_url: str = "memory://") -> list[OutgoingMessage]:
    """Play the tour; return every message the host would have sent."""
    settings = MsiloSettings(
        db_url=db_url,
        from_address="sip:registrar@example.com",
        offline_message="$rU is offline, your message will be delivered later",
        content_type_hdr="Content-Type: text/plain\r\n",
        reminder="sip:reminder@example.com",
        send_time=60,
    )
    sent: list[OutgoingMessage] = []
    with Silo.from_settings(settings) as silo:
        result = silo.store(SipRequest.parse(MESSAGE))
        if result.notice is not None:
            sent.append(result.notice)
        silo.store(SipRequest.parse(MESSAGE), send_at=datetime.now(UTC) - timedelta(seconds=1))
        for msg in silo.dump(SipRequest.parse(REGISTER)):
            sent.append(msg)
            assert msg.mid is not None
            silo.on_reply(msg.mid, 200, token=msg.lease_token)
        for msg in silo.tick():  # the reminder is due
            sent.append(msg)
            assert msg.mid is not None
            silo.on_reply(msg.mid, 200, token=msg.lease_token)
        print(f"sent {len(sent)} messages; {silo.count('sip:alice@example.com')} left stored")
        print(silo.stats)
    return sent


if __name__ == "__main__":
    for message in main(*sys.argv[1:2]):
        print(
            f"--- {message.kind.value}\n{message.to_bytes(call_id='demo', from_tag='1').decode()}"
        )
