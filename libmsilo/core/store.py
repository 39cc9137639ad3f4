"""The row ``m_store`` writes: columns, expiry and the reminder time [BEHAVIOUR.md §2.2-§2.3]."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from ..errors import InvalidRequest, InvalidSendTime
from ..message import OutgoingMessage, SipRequest
from ..records import MAX_INT64, MESSAGE_FIELDS, NewMessage, check_ints
from ..timefmt import send_time_to_epoch
from .extra import kamailio_ctype, stored_call_id, stored_extra_headers
from .limits import DEFAULT_CTYPE, MAX_ADDR, MAX_CTYPE, checked
from .policy import Policy

__all__ = [
    "StoreLimits",
    "StoreResult",
    "StoreStatus",
    "build_row",
    "reminder_time",
    "store_limits",
]


class StoreStatus(enum.Enum):
    """Outcome of :meth:`Silo.store`."""

    STORED = "stored"
    QUOTA_EXCEEDED = "quota_exceeded"


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What ``store`` did: the status, the new id, and the offline notice to send, if any.

    ``notice_error`` says why no notice was built although one was asked for and configured
    (the message is stored all the same)."""

    status: StoreStatus
    mid: int | None = None
    notice: OutgoingMessage | None = None
    notice_error: str | None = None

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
    """The reminder send time of a stored request, 0 for an ordinary message [BEHAVIOUR.md §2.3].

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


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """The lifetime and the quota of one store call."""

    lifetime: int  # seconds, before the request's Expires shortens it
    quota: int  # most unexpired messages the owner may hold, 0 = no limit


def store_limits(policy: Policy, expire_time: int | None, max_messages: int | None) -> StoreLimits:
    """The limits of one store: the settings' unless the call gives its own (per-domain
    lifetimes and quotas); ``max_messages <= 0`` means no limit, as in the settings."""
    lifetime = policy.expire_time if expire_time is None else expire_time
    quota = policy.max_messages if max_messages is None else max_messages
    check_ints(1, expire_time=lifetime)
    check_ints(max_messages=quota)
    return StoreLimits(lifetime, max(quota, 0))


def build_row(
    request: SipRequest,
    policy: Policy,
    now: int,
    owner: tuple[str, str],
    snd_time: int = 0,
    *,
    lifetime: int | None = None,
) -> NewMessage:
    """The row ``m_store`` writes for ``request`` [BEHAVIOUR.md §2.2]; ``lifetime`` replaces the
    ``expire_time`` setting. Every value is checked here, so no driver sees one it cannot
    store."""
    if len(request.body) > policy.max_body_size:
        raise InvalidRequest(
            f"body of {len(request.body)} bytes is over max_body_size ({policy.max_body_size})"
        )
    src = checked(str(request.from_addr.uri), "From URI", MAX_ADDR)
    dst = checked(str(request.to_addr.uri), "To URI", MAX_ADDR)
    ctype = request.content_type or DEFAULT_CTYPE
    if policy.kamailio_columns:
        ctype = kamailio_ctype(ctype)
    ctype = checked(ctype, "Content-Type", MAX_CTYPE)
    lifetime = policy.expire_time if lifetime is None else lifetime
    expires = request.expires
    if expires is not None and expires > 0:
        lifetime = min(lifetime, expires)  # the request may shorten the lifetime, never extend
    if snd_time and not owner[1] and policy.outbound_proxy is None:
        raise InvalidRequest(
            f"a reminder for tel:{owner[0]} needs outbound_proxy: it is sent to that tel: URI, "
            "which has no host, so only a proxy can route it"
        )
    # A reminder lives from its send time, so it cannot be purged before it fires
    # [BEHAVIOUR.md §2.3].
    start = max(now, snd_time)
    if start + lifetime > MAX_INT64:
        raise InvalidSendTime(f"send time {snd_time}: the message would expire past 2**63-1")
    return _new_row(
        src,
        dst,
        owner[0],
        owner[1],
        request.body,
        ctype,
        now,
        start + lifetime,
        snd_time,
        stored_extra_headers(request, policy),
        stored_call_id(request, policy),
    )


# The row's slots are filled directly: the generated __init__ of a frozen dataclass routes each
# field through object.__setattr__, which makes it the costliest step of a row, and build_row
# has checked every value already.
(_SRC, _DST, _USER, _DOMAIN, _BODY, _CTYPE, _INC, _EXP, _SND, _EXTRA, _CALLID) = (
    NewMessage.__dict__[name].__set__ for name in MESSAGE_FIELDS
)


def _new_row(
    src: str, dst: str, user: str, domain: str, body: bytes, ctype: str,
    inc: int, exp: int, snd: int, extra: str, callid: str,
) -> NewMessage:  # fmt: skip
    """``NewMessage(src, dst, ...)``, fields in :data:`MESSAGE_FIELDS` order."""
    row: NewMessage = object.__new__(NewMessage)
    _SRC(row, src)
    _DST(row, dst)
    _USER(row, user)
    _DOMAIN(row, domain)
    _BODY(row, body)
    _CTYPE(row, ctype)
    _INC(row, inc)
    _EXP(row, exp)
    _SND(row, snd)
    _EXTRA(row, extra)
    _CALLID(row, callid)
    return row
