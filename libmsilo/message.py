"""SIP requests coming in (:class:`SipRequest`) and MESSAGE requests going out.

A ``SipRequest`` is either built from fields by the host's SIP stack or parsed from raw bytes
(RFC 3261 §7). Header values are kept as text; the few the library reads (From, To, Contact,
Expires, Allow, ...) are parsed on first use and cached, so a request costs only what is looked at.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from types import MappingProxyType
from typing import Any

from libmsilo.errors import InvalidRequest, InvalidURI
from libmsilo.uri import (
    URI,
    NameAddr,
    display_name_prefix,
    parse_contact_list,
    parse_name_addr,
    parse_uri,
)

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_LINE_LENGTH",
    "AvpValue",
    "MessageKind",
    "OutgoingMessage",
    "SipRequest",
]

AvpValue = str | int | Sequence[str | int]
"""An AVP value; a sequence is an AVP stack whose LAST element is the most recent value."""

MAX_HEADERS = 512
"""Most header lines (folded continuations included) a parsed request may have."""
MAX_LINE_LENGTH = 8192
"""Longest line of a parsed request's start line and header section."""
MAX_HEADER_BYTES = 65536
"""Longest header section; a UDP datagram cannot be larger anyway."""

# Compact header forms: RFC 3261 §7.3.3 (c e f i k l m s t v) and the IANA SIP parameter registry
# (a j d: RFC 3841, b: RFC 3892, o u: RFC 6665, r: RFC 3515, x: RFC 4028, y: RFC 8224).
_COMPACT = {
    "a": "accept-contact",
    "b": "referred-by",
    "c": "content-type",
    "d": "request-disposition",
    "e": "content-encoding",
    "f": "from",
    "i": "call-id",
    "j": "reject-contact",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "o": "event",
    "r": "refer-to",
    "s": "subject",
    "t": "to",
    "u": "allow-events",
    "v": "via",
    "x": "session-expires",
    "y": "identity",
}

# Header names as user agents usually spell them, mapped to the lookup key, so that the parser can
# skip the token check and case folding for them (a name found here is a valid token).
_COMMON_NAMES = (
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
    "Allow-Events", "Authorization", "Call-ID", "Call-Id", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
    "Content-Type", "CSeq", "Date", "Event", "Expires", "From", "History-Info", "Identity",
    "In-Reply-To", "Max-Forwards", "Min-Expires", "MIME-Version", "Organization", "Path",
    "P-Asserted-Identity", "P-Preferred-Identity", "Priority", "Privacy", "Proxy-Authorization",
    "Proxy-Require", "Reason", "Record-Route", "Refer-To", "Referred-By", "Reply-To", "Require",
    "Route", "Server", "Session-Expires", "Subject", "Supported", "Timestamp", "To",
    "Unsupported", "User-Agent", "Via", "Warning", "WWW-Authenticate",
)  # fmt: skip
_KNOWN_KEYS = {name: name.lower() for name in _COMMON_NAMES}
_KNOWN_KEYS.update({name.lower(): name.lower() for name in _COMMON_NAMES})
_KNOWN_KEYS.update(_COMPACT)
_KNOWN_KEYS.update({letter.upper(): key for letter, key in _COMPACT.items()})

# token = 1*( alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~" )
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# Request-URI = SIP-URI / SIPS-URI / absoluteURI
# scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
_RURI = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:[^\x00-\x20\x7f]*")
# Request-Line = Method SP Request-URI SP SIP-Version; SIP-Version = "SIP/2.0", case-insensitive
_REQUEST_LINE = re.compile(
    r"([A-Za-z0-9\-.!%*_+`'~]+) ([A-Za-z][A-Za-z0-9+\-.]*:[^\x00-\x20\x7f]*) [Ss][Ii][Pp]/2\.0"
)
_DIGITS = re.compile(r"0*[0-9]{1,10}")  # leading zeros do not count
_FORBIDDEN_IN_VALUE = re.compile(r"[\x00\r\n]")
# C atoi: optional white space, optional sign, then as many digits as there are.
_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?)([0-9]*)")
_INT_MAX = 2**31 - 1
_INT_MIN = -(2**31)


def _canonical(name: str) -> str:
    key = name.lower()
    return _COMPACT.get(key, key)


def _split_list(value: str) -> list[str]:
    """Elements of a comma-separated header value, ignoring commas in quotes and <> (RFC 3261
    §7.3.1); empty elements are dropped."""
    if '"' not in value and "<" not in value:
        return [part for part in (p.strip(" \t") for p in value.split(",")) if part]
    out: list[str] = []
    start = 0
    quoted = False
    angle = False
    pos = 0
    n = len(value)
    while pos < n:
        char = value[pos]
        if quoted:
            if char == "\\":
                pos += 1  # quoted-pair: skip the escaped character
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "<":
            angle = True
        elif char == ">":
            angle = False
        elif char == "," and not angle:
            out.append(value[start:pos])
            start = pos + 1
        pos += 1
    out.append(value[start:])
    return [part for part in (p.strip(" \t") for p in out) if part]


def _atoi(text: str) -> int:
    """C ``atoi``: leading digits with an optional sign, 0 when there are none; saturated to the
    range of a C int instead of C's undefined overflow."""
    m = _ATOI.match(text)
    assert m is not None  # every part of the pattern may be empty
    sign, digits = m.groups()
    digits = digits.lstrip("0")
    if not digits:
        return 0
    if len(digits) > 10:
        return _INT_MIN if sign == "-" else _INT_MAX
    value = -int(digits) if sign == "-" else int(digits)
    return max(_INT_MIN, min(_INT_MAX, value))


_NO_VALUES: Mapping[str, Any] = MappingProxyType({})  # shared: a read-only view of nothing


def _freeze_avps(avps: Mapping[str, AvpValue] | None) -> Mapping[str, AvpValue]:
    if not avps:
        return _NO_VALUES
    frozen: dict[str, AvpValue] = {}
    for name, value in avps.items():
        frozen[name] = value if isinstance(value, str | int) else tuple(value)
    return MappingProxyType(frozen)


class SipRequest:
    """A SIP request: start line, headers in order (names as written), body bytes, and the
    script-side values (AVPs, variables, source address, destination URI) the templates read.

    Immutable; the parsed forms of headers are computed on first use and cached.
    """

    __slots__ = (
        "_by_name",
        "_cache",
        "avps",
        "body",
        "dst_uri",
        "headers",
        "method",
        "original_ruri",
        "ruri",
        "source",
        "vars",
    )

    method: str
    ruri: str
    original_ruri: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    avps: Mapping[str, AvpValue]
    vars: Mapping[str, str | int]
    source: tuple[str, int] | None
    dst_uri: str | None
    _by_name: dict[str, list[str]]  # canonical lower-case name -> values in order
    _cache: dict[str, Any]  # parsed header values, filled on first use

    def __init__(
        self,
        method: str,
        ruri: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        avps: Mapping[str, AvpValue] | None = None,
        vars: Mapping[str, str | int] | None = None,
        source: tuple[str, int] | None = None,
        dst_uri: str | None = None,
        original_ruri: str | None = None,
    ) -> None:
        if not isinstance(method, str) or _TOKEN.fullmatch(method) is None:
            raise InvalidRequest(f"method {method!r} is not a token")
        _check_ruri(ruri)
        fields: list[tuple[str, str]] = []
        for name, value in headers:
            if not isinstance(name, str) or _TOKEN.fullmatch(name) is None:
                raise InvalidRequest(f"header name {name!r} is not a token")
            if not isinstance(value, str) or _FORBIDDEN_IN_VALUE.search(value):
                raise InvalidRequest(f"value of header {name} holds CR, LF or NUL (or is no str)")
            fields.append((name, value))
        if not isinstance(body, bytes | bytearray | memoryview):
            raise InvalidRequest(f"body must be bytes, not {type(body).__name__}")
        if original_ruri is not None:
            _check_ruri(original_ruri)
        self._setup(
            method, ruri, tuple(fields), bytes(body), None,
            avps, vars, source, dst_uri, original_ruri,
        )  # fmt: skip

    def _setup(
        self,
        method: str,
        ruri: str,
        headers: tuple[tuple[str, str], ...],
        body: bytes,
        index: dict[str, list[str]] | None,
        avps: Mapping[str, AvpValue] | None = None,
        vars: Mapping[str, str | int] | None = None,
        source: tuple[str, int] | None = None,
        dst_uri: str | None = None,
        original_ruri: str | None = None,
    ) -> None:
        # Slot descriptors write past the __setattr__ guard that makes instances immutable.
        _SET_METHOD(self, method)
        _SET_RURI(self, ruri)
        _SET_ORIGINAL_RURI(self, ruri if original_ruri is None else original_ruri)
        _SET_HEADERS(self, headers)
        _SET_BODY(self, body)
        _SET_AVPS(self, _freeze_avps(avps) if avps else _NO_VALUES)
        _SET_VARS(self, MappingProxyType(dict(vars)) if vars else _NO_VALUES)
        _SET_SOURCE(self, source)
        _SET_DST_URI(self, dst_uri)
        if index is None:
            index = {}
            for name, value in headers:
                index.setdefault(_canonical(name), []).append(value)
        _SET_BY_NAME(self, index)
        _SET_CACHE(self, {})

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"SipRequest is immutable (cannot set {name})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"SipRequest is immutable (cannot delete {name})")

    def __repr__(self) -> str:
        return (
            f"<SipRequest {self.method} {self.ruri} "
            f"({len(self.headers)} headers, {len(self.body)} body bytes)>"
        )

    # ---- parsing ---------------------------------------------------------------------------

    @classmethod
    def parse(cls, raw: bytes | bytearray | memoryview, **extras: Any) -> SipRequest:
        """Parse a request from its wire form (RFC 3261 §7); ``extras`` are the keyword-only
        arguments of the constructor. Raise :class:`InvalidRequest` on anything else.

        The header section must be UTF-8. Folded lines are unfolded, Content-Length (when
        present) delimits the body, and bare-LF line endings are tolerated.
        """
        if type(raw) is not bytes:
            if not isinstance(raw, bytes | bytearray | memoryview):
                raise InvalidRequest(f"raw request must be bytes, not {type(raw).__name__}")
            raw = bytes(raw)
        if raw.startswith((b"\r", b"\n")):
            # RFC 3261 §7.5: CRLFs before the start line (stream keep-alives) are ignored.
            raw = raw.lstrip(b"\r\n")
        lines, body_start = _split_head(raw)
        method, ruri = _request_line(lines[0])
        fields: list[tuple[str, str]] = []
        index: dict[str, list[str]] = {}
        for line in islice(lines, 1, None):
            # message-header = field-name HCOLON field-value; HCOLON = *(SP / HTAB) ":" SWS
            name, colon, value = line.partition(":")
            key = _KNOWN_KEYS.get(name)
            if key is None or not colon:
                if line[:1] in (" ", "\t"):
                    _fold(line, fields, index)
                    continue
                name = _field_name(line)
                key = _canonical(name)
            value = value.strip(" \t")
            fields.append((name, value))
            values = index.get(key)
            if values is None:
                index[key] = [value]
            else:
                values.append(value)
        lengths = index.get("content-length")
        if lengths is None:
            body = raw[body_start:]
        else:
            size = _content_length(lengths)
            if len(raw) - body_start < size:
                raise InvalidRequest(
                    f"body has {len(raw) - body_start} bytes, Content-Length says {size}"
                )
            # RFC 3261 §18.3: bytes beyond Content-Length are not part of the message.
            body = raw[body_start : body_start + size]
        request: SipRequest = _new_object(cls)
        if extras:
            original = extras.get("original_ruri")
            if original is not None:
                _check_ruri(original)
            request._setup(method, ruri, tuple(fields), body, index, **extras)
        else:
            request._setup(method, ruri, tuple(fields), body, index)
        return request

    # ---- raw header access -----------------------------------------------------------------

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive, compact forms understood)."""
        values = self._by_name.get(_canonical(name))
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        """Every value of header ``name``, in order, as written (not split at commas)."""
        return list(self._by_name.get(_canonical(name), ()))

    def header_list(self, name: str) -> list[str]:
        """The comma-separated elements of every ``name`` header, in order (commas inside quotes
        and <> do not split)."""
        out: list[str] = []
        for value in self._by_name.get(_canonical(name), ()):
            out += _split_list(value)
        return out

    # ---- parsed headers --------------------------------------------------------------------

    @property
    def ruri_uri(self) -> URI:
        """The current Request-URI, parsed (InvalidURI when it does not parse)."""
        uri: URI | None = self._cache.get("ruri")
        if uri is None:
            uri = self._cache["ruri"] = parse_uri(self.ruri)
        return uri

    @property
    def from_addr(self) -> NameAddr:
        """The From header (InvalidRequest when missing, InvalidURI when it does not parse)."""
        return self._address("from", "From")

    @property
    def to_addr(self) -> NameAddr:
        """The To header (InvalidRequest when missing, InvalidURI when it does not parse)."""
        return self._address("to", "To")

    def _address(self, key: str, name: str) -> NameAddr:
        value: NameAddr | None = self._cache.get(key)
        if value is None:
            value = self._cache[key] = parse_name_addr(self._first(key, name))
        return value

    def _first(self, key: str, name: str) -> str:
        values = self._by_name.get(key)
        if values is None:
            raise InvalidRequest(f"no {name} header")
        if len(values) > 1:  # RFC 3261 §20: From and To appear exactly once
            raise InvalidRequest(f"{len(values)} {name} headers; a request has exactly one")
        return values[0]

    @property
    def contact_star(self) -> bool:
        """Whether a Contact header is ``*`` (remove every binding, RFC 3261 §10.2.2)."""
        return any(v.strip(" \t") == "*" for v in self._by_name.get("contact", ()))

    @property
    def contacts(self) -> tuple[NameAddr, ...]:
        """Every contact of every Contact header, in order; () when there is none or ``*``."""
        contacts: tuple[NameAddr, ...] | None = self._cache.get("contacts")
        if contacts is None:
            found: list[NameAddr] = []
            for value in self._by_name.get("contact", ()):
                parsed = parse_contact_list(value)
                if parsed is None:
                    found = []
                    break
                found += parsed
            contacts = self._cache["contacts"] = tuple(found)
        return contacts

    @property
    def usable_contacts(self) -> tuple[tuple[NameAddr, ...], tuple[tuple[str, str], ...]]:
        """The contacts that parse, and each element that does not with the reason, so that
        one odd contact (``<mailto:…>``, a bad host) does not hide the others."""
        found: tuple[tuple[NameAddr, ...], tuple[tuple[str, str], ...]] | None
        found = self._cache.get("usable_contacts")
        if found is None:
            try:
                found = (self.contacts, ())
            except InvalidURI:
                good: list[NameAddr] = []
                bad: list[tuple[str, str]] = []
                for value in self._by_name.get("contact", ()):
                    for element in _split_list(value):
                        try:
                            good.append(parse_name_addr(element))
                        except InvalidURI as exc:
                            bad.append((element, str(exc)))
                found = (tuple(good), tuple(bad))
            self._cache["usable_contacts"] = found
        return found

    @property
    def expires(self) -> int | None:
        """The Expires header read like the C modules' ``atoi``; None when absent or empty."""
        values = self._by_name.get("expires")
        value = None if values is None else values[0]
        if value is None or not value.strip():
            return None
        return _atoi(value)

    @property
    def allow(self) -> frozenset[str] | None:
        """Upper-cased methods of all Allow headers; None when there is no Allow header."""
        values = self._by_name.get("allow")
        if values is None:
            return None
        return frozenset(m.upper() for v in values for m in _split_list(v))

    @property
    def content_type(self) -> str | None:
        """The Content-Type value, trimmed, parameters kept; None when absent."""
        values = self._by_name.get("content-type")
        return None if values is None else values[0].strip(" \t")

    @property
    def call_id(self) -> str | None:
        """The Call-ID value, trimmed; None when absent."""
        values = self._by_name.get("call-id")
        return None if values is None else values[0].strip(" \t")


_new_object = object.__new__
_slot = SipRequest.__dict__
_SET_METHOD = _slot["method"].__set__
_SET_RURI = _slot["ruri"].__set__
_SET_ORIGINAL_RURI = _slot["original_ruri"].__set__
_SET_HEADERS = _slot["headers"].__set__
_SET_BODY = _slot["body"].__set__
_SET_AVPS = _slot["avps"].__set__
_SET_VARS = _slot["vars"].__set__
_SET_SOURCE = _slot["source"].__set__
_SET_DST_URI = _slot["dst_uri"].__set__
_SET_CACHE = _slot["_cache"].__set__
_SET_BY_NAME = _slot["_by_name"].__set__
del _slot


def _check_ruri(ruri: object) -> None:
    if not isinstance(ruri, str) or _RURI.fullmatch(ruri) is None:
        raise InvalidRequest(f"Request-URI {ruri!r} is not an absolute URI")


def _split_head(raw: bytes) -> tuple[list[str], int]:
    """The decoded lines of the start line and header section, and the body offset."""
    limit = MAX_HEADER_BYTES + 4
    end = raw.find(b"\r\n\r\n", 0, limit)
    lines: list[str] | None = None
    if end >= 0:
        head = _decode(raw, end)
        lines = head.split("\r\n")
        breaks = len(lines) - 1
        # Every CR and LF must belong to a line ending (RFC 3261 §7.3.1).
        if head.count("\n") != breaks or head.count("\r") != breaks:
            lines = None
        body_start = end + 4
    if lines is None:
        # Deviation: RFC 3261 §7 requires CRLF, but bare-LF messages (hand-written, or passed
        # through text tools) are accepted when every line ends that way.
        crlf, end = end, raw.find(b"\n\n", 0, limit if end < 0 else end)
        if end < 0:
            if crlf >= 0:
                raise InvalidRequest("stray CR or LF in the header section")
            if len(raw) > MAX_HEADER_BYTES:
                raise InvalidRequest(f"header section longer than {MAX_HEADER_BYTES} bytes")
            raise InvalidRequest("no empty line ends the header section")
        head = _decode(raw, end)
        if "\r" in head:
            raise InvalidRequest("stray CR or LF in the header section")
        lines = head.split("\n")
        body_start = end + 2
    breaks = len(lines) - 1
    if breaks > MAX_HEADERS:
        raise InvalidRequest(f"more than {MAX_HEADERS} header lines")
    if end > MAX_LINE_LENGTH and max(map(len, lines)) > MAX_LINE_LENGTH:
        raise InvalidRequest(f"line longer than {MAX_LINE_LENGTH} characters")
    return lines, body_start


def _decode(raw: bytes, end: int) -> str:
    try:
        head = raw[:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"header section is not UTF-8 (byte {exc.start})") from None
    if "\x00" in head:  # RFC 3261 §25.1: no rule admits NUL in a header
        raise InvalidRequest("NUL in the header section")
    return head


def _fold(line: str, fields: list[tuple[str, str]], index: dict[str, list[str]]) -> None:
    # obs-fold: a line starting with white space continues the previous value, and the fold is
    # equivalent to one SP (RFC 3261 §7.3.1).
    if not fields:
        raise InvalidRequest("folded line before the first header")
    more = line.strip(" \t")
    if more:
        name, value = fields[-1]
        value = f"{value} {more}" if value else more
        fields[-1] = (name, value)
        index[_canonical(name)][-1] = value


def _field_name(line: str) -> str:
    """The field name of a header line whose text before ":" is no bare token (slow path)."""
    name, colon, _ = line.partition(":")
    name = name.rstrip(" \t")  # HCOLON allows white space before the colon
    if not colon or _TOKEN.fullmatch(name) is None:
        raise InvalidRequest(f"malformed header line {line[:40]!r}")
    return name


def _request_line(line: str) -> tuple[str, str]:
    # Request-Line = Method SP Request-URI SP SIP-Version CRLF (RFC 3261 §7.1, §25.1)
    m = _REQUEST_LINE.fullmatch(line)
    if m is not None:
        return m.group(1, 2)  # type: ignore[return-value]
    # The rest only words the error.
    if line[:4].upper() == "SIP/":
        raise InvalidRequest("a SIP response, not a request")
    parts = line.split(" ")
    if len(parts) != 3:
        raise InvalidRequest(f"malformed request line {line[:60]!r}")
    method, ruri, version = parts
    if _TOKEN.fullmatch(method) is None:
        raise InvalidRequest(f"method {method[:40]!r} is not a token")
    if version.upper() != "SIP/2.0":
        raise InvalidRequest(f"unsupported protocol version {version[:40]!r}")
    _check_ruri(ruri)
    return method, ruri


def _content_length(values: list[str]) -> int:
    # Content-Length = ( "Content-Length" / "l" ) HCOLON 1*DIGIT (RFC 3261 §20.14). Several
    # different values make the body boundary ambiguous, so they are refused; "05" equals "5".
    sizes = set()
    for value in values:
        if _DIGITS.fullmatch(value) is None:
            raise InvalidRequest(f"invalid Content-Length {value[:20]!r}")
        sizes.add(int(value))
    if len(sizes) > 1:
        raise InvalidRequest(f"conflicting Content-Length values {sorted(sizes)}")
    return sizes.pop()


class MessageKind(enum.Enum):
    """Why the library asks the host to send a MESSAGE."""

    DUMP = "dump"
    REMINDER = "reminder"
    NOTICE = "notice"


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A MESSAGE request the host's SIP stack should send, then report back with ``on_reply``."""

    kind: MessageKind
    mid: int | None
    ruri: str
    from_uri: str
    to_uri: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    content_type: str | None
    next_hop: str | None = None
    lease_token: str | None = None
    #: The Call-ID to send with (Kamailio ``use_mode`` 1 keeps the stored MESSAGE's); hosts that
    #: can choose the Call-ID use it when set.
    call_id: str | None = None
    from_name: str | None = None  # display name of the From header, if the setting has one

    @property
    def from_header(self) -> str:
        """The From header value without its tag: ``"Name" <uri>`` or ``<uri>``."""
        return f"{display_name_prefix(self.from_name)}<{self.from_uri}>"

    def to_bytes(
        self, *, call_id: str, from_tag: str, cseq: int = 10, via: str | None = None
    ) -> bytes:
        """The whole request on the wire (CRLF line endings), for hosts that send raw bytes.

        Raises :class:`InvalidRequest` when a value would break the framing (CR, LF or NUL in a
        header, a Request-URI that is no absolute URI)."""
        _check_ruri(self.ruri)
        lines = [f"MESSAGE {self.ruri} SIP/2.0"]
        if via is not None:
            lines.append(f"Via: {via}")
        lines += [
            "Max-Forwards: 70",
            f"From: {self.from_header};tag={from_tag}",
            f"To: <{self.to_uri}>",
            f"Call-ID: {call_id}",
            f"CSeq: {int(cseq)} MESSAGE",
        ]
        has_ctype = False
        for name, value in self.headers:
            key = _canonical(name)
            if key == "content-length":
                continue  # computed below from the body
            has_ctype = has_ctype or key == "content-type"
            lines.append(f"{name}: {value}")
        if not has_ctype and self.content_type:
            lines.append(f"Content-Type: {self.content_type}")
        lines.append(f"Content-Length: {len(self.body)}")
        if _FORBIDDEN_IN_VALUE.search("".join(lines)):
            raise InvalidRequest("CR, LF or NUL inside a header of the outgoing MESSAGE")
        return "\r\n".join(lines).encode("utf-8") + b"\r\n\r\n" + self.body
