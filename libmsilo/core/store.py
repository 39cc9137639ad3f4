"""The row ``m_store`` writes: columns, expiry and the reminder time [§2.4-§2.6]."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from ..errors import InvalidRequest
from ..message import OutgoingMessage, SipRequest
from ..records import NewMessage
from ..timefmt import send_time_to_epoch
from .limits import DEFAULT_CTYPE, MAX_ADDR, MAX_CTYPE, checked
from .policy import Policy

__all__ = ["StoreResult", "StoreStatus", "build_row", "reminder_time"]


class StoreStatus(enum.Enum):
    """Outcome of :meth:`Silo.store`."""

    STORED = "stored"
    QUOTA_EXCEEDED = "quota_exceeded"


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What ``store`` did: the status, the new id, and the offline notice to send, if any."""

    status: StoreStatus
    mid: int | None = None
    notice: OutgoingMessage | None = None

    @property
    def stored(self) -> bool:
        """True when the message was stored."""
        return self.status is StoreStatus.STORED


def _avp_value(request: SipRequest, name: str) -> str | None:
    value = request.avps.get(name)
    if value is None:
        return None
    if isinstance(value, str | int):
        return str(value)
    if not value:
        return None
    return str(value[-1])  # AVPs are a stack: the last one added is the current value


def reminder_time(
    request: SipRequest, policy: Policy, send_at: datetime | int | float | str | None
) -> int:
    """The reminder send time of a stored request, 0 for an ordinary message [§2.6].

    ``send_at`` wins over the ``snd_time_avp`` AVP; a bad value raises ``InvalidSendTime``
    instead of silently storing an ordinary message as the modules do.
    """
    if send_at is not None:
        return send_time_to_epoch(send_at, policy.zone)
    if policy.snd_time_avp is None:
        return 0
    value = _avp_value(request, policy.snd_time_avp)
    if value is None:
        return 0
    return send_time_to_epoch(value, policy.zone)


def build_row(
    request: SipRequest,
    policy: Policy,
    now: int,
    owner: tuple[str, str],
    snd_time: int = 0,
) -> NewMessage:
    """The row ``m_store`` writes for ``request`` [§2.4]."""
    if len(request.body) > policy.max_body_size:
        raise InvalidRequest(
            f"body of {len(request.body)} bytes is over max_body_size ({policy.max_body_size})"
        )
    src = checked(str(request.from_addr.uri), "From URI", MAX_ADDR)
    dst = checked(str(request.to_addr.uri), "To URI", MAX_ADDR)
    ctype = checked(request.content_type or DEFAULT_CTYPE, "Content-Type", MAX_CTYPE)
    lifetime = policy.expire_time
    expires = request.expires
    if expires is not None and expires > 0:
        lifetime = min(lifetime, expires)  # the request may shorten the lifetime, never extend
    # A reminder lives from its send time, so it cannot be purged before it fires [§9.8].
    start = max(now, snd_time)
    return NewMessage(
        src_addr=src,
        dst_addr=dst,
        username=owner[0],
        domain=owner[1],
        body=request.body,
        ctype=ctype,
        inc_time=now,
        exp_time=start + lifetime,
        snd_time=snd_time,
    )
