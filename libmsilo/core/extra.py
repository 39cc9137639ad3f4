"""Kamailio's extra columns [BEHAVIOUR.md §2.2, §3.5]: the header lines a stored MESSAGE keeps
(``extra_hdrs``), its Call-ID (``use_mode`` 1), the bare Content-Type, and the ``extra_hdrs``
setting added to dumps."""

from __future__ import annotations

from ..errors import InvalidRequest
from ..message import SipRequest
from ..records import check_text
from .limits import CONTROL, HEADER_NAME
from .policy import Policy

__all__ = [
    "MAX_EXTRA_HDRS",
    "dump_extra_headers",
    "header_pairs",
    "kamailio_ctype",
    "stored_call_id",
    "stored_extra_headers",
]

#: Kamailio refuses to store a MESSAGE whose extra header lines reach 1024 bytes.
MAX_EXTRA_HDRS = 1024

# Headers Kamailio's parser knows (parser/hf.h), compact forms included: a MESSAGE's header of
# any other name is kept in extra_hdrs, as are the three identity headers below.
_PARSED = frozenset(
    (
        "via", "v", "to", "t", "from", "f", "cseq", "call-id", "i", "contact", "m", "max-forwards",
        "route", "record-route", "content-type", "c", "content-length", "l", "authorization",
        "expires", "min-expires", "proxy-authorization", "supported", "k", "require",
        "proxy-require", "unsupported", "allow", "event", "o", "accept", "accept-language",
        "organization", "priority", "subject", "s", "user-agent", "server", "content-disposition",
        "diversion", "remote-party-id", "refer-to", "r", "sip-if-match", "session-expires", "x",
        "min-se", "subscription-state", "accept-contact", "a", "allow-events", "u",
        "content-encoding", "e", "referred-by", "b", "reject-contact", "j", "request-disposition",
        "d", "www-authenticate", "proxy-authenticate", "date", "identity", "y", "identity-info",
        "n",
        "retry-after", "path", "reason", "call-info",
    )
)  # fmt: skip
_KEPT_ANYWAY = frozenset({"p-asserted-identity", "p-preferred-identity", "privacy"})


def _avp_text(request: SipRequest, name: str) -> str | None:
    value = request.avps.get(name)
    if isinstance(value, str):
        return value
    if isinstance(value, tuple) and value and isinstance(value[-1], str):
        return value[-1]  # the most recent value of the stack
    return None


def stored_extra_headers(request: SipRequest, policy: Policy) -> str:
    """The ``extra_hdrs`` of a stored MESSAGE: the ``extra_hdrs_avp`` value when it holds a
    string, else (``kamailio`` profile) its header lines Kamailio does not parse itself plus
    P-Asserted-Identity, P-Preferred-Identity and Privacy, each ending CRLF; else ""."""
    text = None
    if policy.extra_hdrs_avp is not None:
        text = _avp_text(request, policy.extra_hdrs_avp)
    if text is None:
        if not policy.kamailio_columns:
            return ""
        text = "".join(
            f"{name}: {value}\r\n"
            for name, value in request.headers
            if (key := name.lower()) in _KEPT_ANYWAY or key not in _PARSED
        )
    if len(text.encode("utf-8", "surrogatepass")) >= MAX_EXTRA_HDRS:
        raise InvalidRequest(f"extra header lines reach {MAX_EXTRA_HDRS} bytes (Kamailio's limit)")
    header_pairs(text)  # refuse now what could not be sent later
    return check_text("extra header lines", text)


def stored_call_id(request: SipRequest, policy: Policy) -> str:
    """The Call-ID kept for reuse on the dumped MESSAGE (``use_mode`` bit 1), else ""."""
    if not policy.keep_call_id or not request.call_id:
        return ""
    if len(request.call_id) > 128 or CONTROL.search(request.call_id):
        raise InvalidRequest("Call-ID is longer than 128 characters or holds control characters")
    return check_text("Call-ID", request.call_id)


def kamailio_ctype(value: str) -> str:
    """The Content-Type as Kamailio stores it: ``text/plain`` for text/plain and message/cpim
    (any parameters), else the type up to the first space, tab or ``;``."""
    bare = value.strip(" \t")
    for stop in (";", " ", "\t"):
        bare = bare.split(stop, 1)[0]
    if bare.lower() in ("text/plain", "message/cpim"):
        return "text/plain"
    return bare


def header_pairs(text: str) -> list[tuple[str, str]]:
    """Header lines (CRLF or LF endings, folded lines joined) as (name, value) pairs;
    ``InvalidRequest`` for a line that is no header."""
    pairs: list[tuple[str, str]] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip(" \t"):
            continue
        if line[0] in " \t" and pairs:
            name, value = pairs[-1]
            more = line.strip(" \t")
            pairs[-1] = (name, f"{value} {more}")
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not HEADER_NAME.fullmatch(name) or CONTROL.search(value):
            raise InvalidRequest(f"{line[:40]!r} is not a header line")
        pairs.append((name, value.strip(" \t")))
    return pairs


def dump_extra_headers(request: SipRequest | None, policy: Policy, now: int) -> str:
    """The ``extra_hdrs`` setting rendered against the request that triggered the dump
    (normally the REGISTER); "" when unset or without a request."""
    template = policy.template("extra_hdrs")
    if template is None or request is None:
        return ""
    return template.render(request, now=now, tz=policy.zone)
