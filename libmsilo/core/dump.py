"""m_dump: the REGISTER gate, the delivery target and the MESSAGE built for a row
[BEHAVIOUR.md §3, §5.2]."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote

from ..errors import InvalidRequest
from ..message import MessageKind, OutgoingMessage, SipRequest
from ..records import StoredMessage
from ..timefmt import ctime24, rfc1123
from ..uri import NameAddr, parse_uri
from .contacts import indirect_reason, sip_contacts
from .extra import header_pairs
from .limits import CONTROL, MIME
from .owner import parse_uri_argument, setting_address
from .policy import Policy

# unreserved marks and user-unreserved characters, plus '%' so existing escapes stay as they are
_USER_SAFE = "-_.!~*'()&=+$,;?/%"

__all__ = [
    "DumpPlan",
    "dump_message",
    "dump_target",
    "is_text_plain",
    "plan_dump",
    "reminder_message",
]


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


def _preference(contact: NameAddr) -> float:
    """Sort key: the higher a contact's ``q`` (default 1), the earlier; bad values count as 0."""
    value = contact.param("q")
    if value is None:
        return -1.0
    try:
        q = float(value)
    except ValueError:
        return 0.0
    return -q if 0.0 <= q <= 1.0 else 0.0


def plan_dump(request: SipRequest | None) -> DumpPlan:
    """The REGISTER gate [BEHAVIOUR.md §3.1]: no dump when the registration removes the
    binding, has no Contact, or shows that the UA does not accept MESSAGE. Other methods always
    pass."""
    if request is None or request.method.upper() != "REGISTER":
        return DumpPlan(True)
    if request.contact_star:
        return DumpPlan(False, "Contact: * removes every binding")
    if not request.header_list("Contact"):
        return DumpPlan(False, "no Contact (a registration query)")
    contacts = sip_contacts(request, "dump")
    if not contacts:
        return DumpPlan(False, "no Contact is a usable SIP URI")
    header_expires = request.expires
    live = [c for c in contacts if _contact_expires(c, header_expires) > 0]
    if not live:
        return DumpPlan(False, "the registration removes its bindings (expires 0)")
    allow = request.allow
    live.sort(key=_preference)  # the most preferred binding first (RFC 3261 §10.2.1.2)
    for contact in live:
        if _accepts_message(contact, allow):
            indirect = indirect_reason(contact, request)
            if indirect is not None:  # the registrar's routing reaches it: send to the AOR
                return DumpPlan(True, f"to the address of record: {indirect}")
            return DumpPlan(True, contact=contact)
    return DumpPlan(False, "the UA does not accept MESSAGE")


# A queue's messages were mostly stored in bursts, many in the same second: each second's Date
# value and body prefix time are formatted once.
_date = lru_cache(maxsize=1024)(rfc1123)
_ctime = lru_cache(maxsize=1024)(ctime24)


@lru_cache(maxsize=256)
def is_text_plain(ctype: str) -> bool:
    """Whether a stored Content-Type parses as ``text/plain`` (parameters allowed)
    [BEHAVIOUR.md §3.5]."""
    mime = ctype.split(";", 1)[0].strip()
    return bool(MIME.fullmatch(mime)) and mime.lower() == "text/plain"


def _prefixed(kind: str, when: int, msg: StoredMessage, policy: Policy) -> bytes:
    # Every body size gets the prefix: the modules silently skip it above 978 bytes
    # [BEHAVIOUR.md §3.5].
    if not policy.add_date or not is_text_plain(msg.ctype):
        return msg.body
    return f"[{kind} message - {_ctime(when, policy.zone)}] ".encode() + msg.body


def _stored_value(value: str, what: str, mid: int) -> str:
    if not value or CONTROL.search(value):
        raise InvalidRequest(f"message {mid}: stored {what} {value!r} cannot be sent")
    return value


def dump_target(plan: DumpPlan, policy: Policy, contact: str | None) -> str | None:
    """The Request-URI of dumped messages, or None for each row's stored To URI
    [BEHAVIOUR.md §3.3]."""
    if contact is not None:
        return str(parse_uri_argument(contact))
    if plan.contact is not None and policy.dump_to_contact:
        return str(plan.contact.uri)
    return None


def _type_and_contact(msg: StoredMessage, contact: str, policy: Policy) -> list[tuple[str, str]]:
    """The Content-Type and the ``;msilo=yes`` Contact marker of a sent row
    [BEHAVIOUR.md §3.5, §5.2]."""
    headers: list[tuple[str, str]] = []
    if msg.ctype:
        headers.append(("Content-Type", _stored_value(msg.ctype, "ctype", msg.mid)))
    if policy.add_contact:
        headers.append(("Contact", f"<{contact}>;msilo=yes"))
    return headers


def dump_message(
    msg: StoredMessage,
    policy: Policy,
    target: str | None,
    token: str | None,
    extra: tuple[tuple[str, str], ...] = (),
) -> OutgoingMessage:
    """The MESSAGE that delivers one stored row [BEHAVIOUR.md §3.5]; ``InvalidRequest`` if it
    cannot be built.

    ``extra`` is the rendered ``extra_hdrs`` setting; the row's own extra header lines follow it
    and its kept Call-ID becomes the MESSAGE's."""
    src = _stored_value(msg.src_addr, "src_addr", msg.mid)
    dst = _stored_value(msg.dst_addr, "dst_addr", msg.mid)
    headers = [("Date", _date(msg.inc_time))] if msg.inc_time > 0 else []
    headers += _type_and_contact(msg, src, policy)
    headers += extra
    if msg.extra_hdrs:
        headers += header_pairs(msg.extra_hdrs)
    return OutgoingMessage(
        kind=MessageKind.DUMP,
        mid=msg.mid,
        ruri=target or dst,
        from_uri=src,
        to_uri=dst,
        headers=tuple(headers),
        body=_prefixed("Offline", msg.inc_time, msg, policy),
        content_type=msg.ctype or None,
        next_hop=policy.outbound_proxy,
        lease_token=token,
        call_id=msg.callid or None,
    )


@lru_cache(maxsize=4096)
def _reminder_target(user: str, domain: str) -> str:
    if not domain:
        # A tel: owner without phone-context (the only owner without a host): its number,
        # routed by the outbound proxy, which store() made sure is set.
        return str(parse_uri(f"tel:{user}"))
    # Escape what a SIP user part may not hold (e.g. '#' of a tel: owner), RFC 3261 §25.1.
    return str(parse_uri(f"sip:{quote(user, safe=_USER_SAFE)}@{domain}"))


def reminder_message(msg: StoredMessage, policy: Policy, token: str | None) -> OutgoingMessage:
    """The MESSAGE that delivers a due reminder [BEHAVIOUR.md §5.2]: to ``sip:user@domain``
    (``tel:number`` for a ``tel:`` owner without phone-context), from ``reminder``, no Date
    header."""
    if policy.reminder is None:
        raise InvalidRequest("reminders are off (no reminder From URI)")
    user = _stored_value(msg.username, "username", msg.mid)
    # An empty domain is a tel: owner's (no phone-context); control characters are refused.
    domain = _stored_value(msg.domain, "domain", msg.mid) if msg.domain else ""
    target = _reminder_target(user, domain)
    sender = setting_address(policy.reminder)
    from_uri = str(sender.uri)
    headers = _type_and_contact(msg, from_uri, policy)
    return OutgoingMessage(
        kind=MessageKind.REMINDER,
        mid=msg.mid,
        ruri=target,
        from_uri=from_uri,
        from_name=sender.display_name,
        to_uri=target,
        headers=tuple(headers),
        body=_prefixed("Reminder", msg.snd_time, msg, policy),
        content_type=msg.ctype or None,
        next_hop=policy.outbound_proxy,
        lease_token=token,
    )
