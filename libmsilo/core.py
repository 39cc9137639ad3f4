"""The msilo logic, sans I/O: pure functions over plain values, the clock passed in.

Who owns a message, which row to write, whether a REGISTER may trigger a dump, what MESSAGE to
send, what a reply means and when the timers are due are all decided here; :mod:`libmsilo.silo`
only wires these decisions to a driver. Section numbers ``[§x]`` point into the msilo reference.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime

from .drivers.base import NewMessage, StoredMessage
from .errors import InvalidRequest, InvalidURI
from .message import MessageKind, OutgoingMessage, SipRequest
from .settings import MsiloSettings, Profile
from .templating import Template
from .timefmt import ctime24, rfc1123, send_time_to_epoch
from .uri import URI, NameAddr, aor, parse_name_addr, parse_uri

__all__ = [
    "DumpPlan",
    "ReplyClass",
    "StoreResult",
    "StoreStatus",
    "TimerSchedule",
    "build_notice",
    "build_row",
    "choose_owner",
    "classify_reply",
    "dump_message",
    "dump_owner",
    "plan_dump",
    "reminder_message",
    "split_owner_uri",
]

# Column sizes of the C modules' silo table [§7]: longer values are refused, never truncated.
MAX_ADDR = 255
MAX_OWNER_PART = 64
MAX_CTYPE = 255
DEFAULT_CTYPE = "text/plain"

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_MIME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


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


# ---- owner


def _owner_of(uri: URI, what: str, *, need_host: bool) -> tuple[str, str]:
    user, host = aor(uri)
    if not user:
        raise InvalidRequest(f"{what} {uri} has no user part")
    if need_host and not host:
        raise InvalidRequest(f"{what} {uri} has no host part")
    if len(user) > MAX_OWNER_PART or len(host) > MAX_OWNER_PART:
        raise InvalidRequest(f"{what} {uri}: user and host must be at most {MAX_OWNER_PART} chars")
    return user, host


def _parse_owner(owner: str) -> URI:
    try:
        uri = parse_name_addr(owner).uri
    except InvalidURI as exc:
        raise InvalidURI(f"owner is not a SIP, SIPS or TEL URI: {exc}") from exc
    return uri


def choose_owner(request: SipRequest, owner: str | None = None) -> tuple[str, str]:
    """The (username, domain) a stored message is filed under [§2.3].

    ``owner`` when given; else the current Request-URI when it is a complete address of record
    (non-empty user and host); else the To URI, as the module documentation promises.
    """
    if owner is not None:
        uri = _parse_owner(owner)
        return _owner_of(uri, "owner", need_host=uri.scheme != "tel")
    try:
        ruri: URI | None = request.ruri_uri
    except InvalidURI:
        ruri = None
    if ruri is not None and ruri.scheme != "tel":
        user, host = aor(ruri)
        if user and host:
            return _owner_of(ruri, "Request-URI", need_host=True)
    return _owner_of(request.to_addr.uri, "To URI", need_host=True)


def dump_owner(request: SipRequest | None, owner: str | None) -> tuple[str, str]:
    """The owner whose messages a dump sends: ``owner``, else the To URI [§3.2]."""
    if owner is not None:
        uri = _parse_owner(owner)
        return _owner_of(uri, "owner", need_host=uri.scheme != "tel")
    if request is None:
        raise InvalidRequest("dump needs a request or an owner")
    return _owner_of(request.to_addr.uri, "To URI", need_host=True)


# ---- store


def _checked(value: str, what: str, limit: int) -> str:
    if _CONTROL.search(value):
        raise InvalidRequest(f"{what} contains control characters")
    if len(value) > limit:
        raise InvalidRequest(f"{what} is longer than {limit} characters")
    return value


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
    request: SipRequest, settings: MsiloSettings, send_at: datetime | int | float | str | None
) -> int:
    """The reminder send time of a stored request, 0 for an ordinary message [§2.6].

    ``send_at`` wins over the ``snd_time_avp`` AVP; a bad value raises ``InvalidSendTime``
    instead of silently storing an ordinary message as the modules do.
    """
    if send_at is not None:
        return send_time_to_epoch(send_at, settings.zone)
    if settings.snd_time_avp is None:
        return 0
    value = _avp_value(request, settings.snd_time_avp)
    if value is None:
        return 0
    return send_time_to_epoch(value, settings.zone)


def build_row(
    request: SipRequest,
    settings: MsiloSettings,
    now: int,
    owner: tuple[str, str],
    snd_time: int = 0,
) -> NewMessage:
    """The row ``m_store`` writes for ``request`` [§2.4]."""
    if len(request.body) > settings.max_body_size:
        raise InvalidRequest(
            f"body of {len(request.body)} bytes is over max_body_size ({settings.max_body_size})"
        )
    src = _checked(str(request.from_addr.uri), "From URI", MAX_ADDR)
    dst = _checked(str(request.to_addr.uri), "To URI", MAX_ADDR)
    ctype = _checked(request.content_type or DEFAULT_CTYPE, "Content-Type", MAX_CTYPE)
    lifetime = settings.expire_time
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


# ---- offline notice


def _render_header_lines(
    template: Template, request: SipRequest, settings: MsiloSettings, now: int, default: str
) -> list[tuple[str, str]] | None:
    """Header lines from a ``contact_hdr`` / ``content_type_hdr`` template (None if unsafe)."""
    text = template.render(request, now=now, tz=settings.zone)
    # A value from the request must not add header lines of its own (CRLF injection).
    if text.count("\n") > template.source.count("\n") or "\r" in text.replace("\r\n", ""):
        return None
    headers: list[tuple[str, str]] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if colon and _HEADER_NAME.fullmatch(name.strip()):
            headers.append((name.strip(), value.strip()))
        else:
            headers.append((default, line.strip()))
    if any(_CONTROL.search(v.replace("\t", " ")) for _, v in headers):
        return None
    return headers


def _is_loop(request: SipRequest, notice_from: str) -> bool:
    """The loop guard: the request came from msilo itself (Kamailio #61)."""
    if any(c.param("msilo") is not None for c in request.contacts):
        return True
    try:
        ours = parse_name_addr(notice_from).uri
    except InvalidURI:
        return False
    theirs = request.from_addr.uri
    return ours.scheme == theirs.scheme and aor(ours) == aor(theirs)


def notice_target(request: SipRequest, use_contact: bool) -> str:
    """Where the offline notice goes [§2.9]: the sender's Contact when usable, else its From."""
    if use_contact:
        for contact in request.contacts[:1]:
            if contact.uri.scheme in ("sip", "sips") and contact.uri.host:
                return str(contact.uri)
    return str(request.from_addr.uri)


def build_notice(request: SipRequest, settings: MsiloSettings, now: int) -> OutgoingMessage | None:
    """The "recipient is offline" notice for a stored request, or None [§2.9]."""
    from_t = settings.template("from_address")
    body_t = settings.template("offline_message")
    ctype_t = settings.template("content_type_hdr")
    if from_t is None or body_t is None or ctype_t is None:
        return None
    notice_from = from_t.render(request, now=now, tz=settings.zone).strip()
    if not notice_from or _CONTROL.search(notice_from):
        return None
    if settings.notify_loop_guard and _is_loop(request, notice_from):
        return None
    headers: list[tuple[str, str]] = []
    contact_t = settings.template("contact_hdr")
    if contact_t is not None:
        contact_lines = _render_header_lines(contact_t, request, settings, now, "Contact")
        if contact_lines is None:
            return None
        headers += contact_lines
    ctype_lines = _render_header_lines(ctype_t, request, settings, now, "Content-Type")
    if not ctype_lines:
        return None
    headers += ctype_lines
    content_type = next(
        (v for n, v in ctype_lines if n.lower() in ("content-type", "c")), ctype_lines[0][1]
    )
    body = body_t.render(request, now=now, tz=settings.zone).encode("utf-8")
    return OutgoingMessage(
        kind=MessageKind.NOTICE,
        mid=None,
        ruri=notice_target(request, settings.use_contact),
        from_uri=notice_from,
        to_uri=str(request.from_addr.uri),
        headers=tuple(headers),
        body=body,
        content_type=content_type,
        next_hop=settings.outbound_proxy,
    )


# ---- dump


@dataclass(frozen=True, slots=True)
class DumpPlan:
    """Whether a dump may run for a request, and the REGISTER contact to deliver to."""

    allowed: bool
    reason: str = ""
    contact: NameAddr | None = None


def _contact_expires(contact: NameAddr, header_expires: int | None) -> int:
    value = contact.param("expires")
    if value is not None and value.strip().isdigit():
        return int(value)
    if header_expires is not None:
        return header_expires
    return 1  # no expiry given: the registrar's default, which is positive


def _accepts_message(contact: NameAddr, allow: frozenset[str] | None) -> bool:
    methods = contact.param("methods")
    if methods is not None:
        listed = {m.strip().upper() for m in methods.strip('"').split(",")}
        return "MESSAGE" in listed
    return allow is None or "MESSAGE" in allow


def plan_dump(request: SipRequest | None) -> DumpPlan:
    """The REGISTER gate [§3.3]: no dump when the registration removes the binding, has no
    Contact, or shows that the UA does not accept MESSAGE. Other methods always pass."""
    if request is None or request.method.upper() != "REGISTER":
        return DumpPlan(True)
    if request.contact_star:
        return DumpPlan(False, "Contact: * removes every binding")
    contacts = request.contacts
    if not contacts:
        return DumpPlan(False, "no Contact (a registration query)")
    header_expires = request.expires
    live = [c for c in contacts if _contact_expires(c, header_expires) > 0]
    if not live:
        return DumpPlan(False, "the registration removes its bindings (expires 0)")
    allow = request.allow
    for contact in live:
        if _accepts_message(contact, allow):
            return DumpPlan(True, contact=contact)
    return DumpPlan(False, "the UA does not accept MESSAGE")


def is_text_plain(ctype: str) -> bool:
    """Whether a stored Content-Type parses as ``text/plain`` (parameters allowed) [§3.6]."""
    mime = ctype.split(";", 1)[0].strip()
    return bool(_MIME.fullmatch(mime)) and mime.lower() == "text/plain"


def _prefixed(kind: str, when: int, msg: StoredMessage, settings: MsiloSettings) -> bytes:
    # Every body size gets the prefix: the modules silently skip it above 978 bytes [§9.17].
    if not settings.add_date or not is_text_plain(msg.ctype):
        return msg.body
    return f"[{kind} message - {ctime24(when, settings.zone)}] ".encode() + msg.body


def _stored_value(value: str, what: str, mid: int) -> str:
    if not value or _CONTROL.search(value):
        raise InvalidRequest(f"message {mid}: stored {what} {value!r} cannot be sent")
    return value


def dump_target(plan: DumpPlan, settings: MsiloSettings, contact: str | None) -> str | None:
    """The Request-URI of dumped messages, or None for each row's stored To URI [§3.6]."""
    if contact is not None:
        # A bare URI keeps its ;params (RFC 3261 §20.10 would read them as header params).
        text = contact.strip()
        uri = parse_name_addr(text).uri if "<" in text else parse_uri(text)
        return str(uri)
    if plan.contact is not None and settings.profile is Profile.LIBMSILO:
        return str(plan.contact.uri)
    return None


def dump_message(
    msg: StoredMessage, settings: MsiloSettings, target: str | None, token: str | None
) -> OutgoingMessage:
    """The MESSAGE that delivers one stored row [§3.6]; ``InvalidRequest`` if it cannot be built."""
    src = _stored_value(msg.src_addr, "src_addr", msg.mid)
    dst = _stored_value(msg.dst_addr, "dst_addr", msg.mid)
    headers: list[tuple[str, str]] = []
    if msg.inc_time > 0:
        headers.append(("Date", rfc1123(msg.inc_time)))
    if msg.ctype:
        headers.append(("Content-Type", _stored_value(msg.ctype, "ctype", msg.mid)))
    if settings.add_contact:
        headers.append(("Contact", f"<{src}>;msilo=yes"))
    return OutgoingMessage(
        kind=MessageKind.DUMP,
        mid=msg.mid,
        ruri=target or dst,
        from_uri=src,
        to_uri=dst,
        headers=tuple(headers),
        body=_prefixed("Offline", msg.inc_time, msg, settings),
        content_type=msg.ctype or None,
        next_hop=settings.outbound_proxy,
        lease_token=token,
    )


def reminder_message(
    msg: StoredMessage, settings: MsiloSettings, token: str | None
) -> OutgoingMessage:
    """The MESSAGE that delivers a due reminder [§5]: to ``sip:user@domain``, from ``reminder``,
    no Date header."""
    if settings.reminder is None:
        raise InvalidRequest("reminders are off (no reminder From URI)")
    user = _stored_value(msg.username, "username", msg.mid)
    domain = _stored_value(msg.domain, "domain", msg.mid)
    target = str(parse_uri(f"sip:{user}@{domain}"))
    headers: list[tuple[str, str]] = []
    if msg.ctype:
        headers.append(("Content-Type", _stored_value(msg.ctype, "ctype", msg.mid)))
    if settings.add_contact:
        headers.append(("Contact", f"<{settings.reminder}>;msilo=yes"))
    return OutgoingMessage(
        kind=MessageKind.REMINDER,
        mid=msg.mid,
        ruri=target,
        from_uri=settings.reminder,
        to_uri=target,
        headers=tuple(headers),
        body=_prefixed("Reminder", msg.snd_time, msg, settings),
        content_type=msg.ctype or None,
        next_hop=settings.outbound_proxy,
        lease_token=token,
    )


# ---- replies and timers


class ReplyClass(enum.Enum):
    """What a final or provisional reply means for a delivery."""

    PROVISIONAL = "provisional"  # 1xx: no decision yet
    DELIVERED = "delivered"  # 2xx: delete the row now
    FAILED = "failed"  # >= 300 (a local timeout counts as 408): release the lease


def classify_reply(status_code: int) -> ReplyClass:
    """Map a SIP status code to its meaning for the stored message [§4]."""
    if isinstance(status_code, bool) or not 100 <= status_code <= 699:
        raise InvalidRequest(f"{status_code!r} is not a SIP status code (100-699)")
    if status_code < 200:
        return ReplyClass.PROVISIONAL
    if status_code < 300:
        return ReplyClass.DELIVERED
    return ReplyClass.FAILED


@dataclass(slots=True)
class TimerSchedule:
    """When the purge and the reminder sweep are next due (epoch seconds, None = at once)."""

    next_purge: float | None = None
    next_reminders: float | None = None

    def due(self, now: float, settings: MsiloSettings) -> tuple[bool, bool]:
        """Whether the purge and the reminder sweep run at ``now``; advances the schedule."""
        purge = self.next_purge is None or now >= self.next_purge
        if purge:
            self.next_purge = now + settings.check_time * settings.clean_period
        remind = settings.reminders_enabled and (
            self.next_reminders is None or now >= self.next_reminders
        )
        if remind:
            self.next_reminders = now + settings.send_time
        return purge, remind

    def seconds_to_next(self, now: float, settings: MsiloSettings) -> float:
        """How long a timer thread may sleep before something is due."""
        times = [t for t in (self.next_purge, self.next_reminders) if t is not None]
        if settings.reminders_enabled and self.next_reminders is None:
            return 0.0
        return max(0.0, min(times) - now) if times else 0.0


def split_owner_uri(uri: str) -> tuple[str, str]:
    """(username, domain) of an inbox AOR given as a URI, for the inbox API."""
    parsed = _parse_owner(uri)
    return _owner_of(parsed, "AOR", need_host=parsed.scheme != "tel")
