"""SIP, SIPS and TEL URIs and name-addr values (RFC 3261 §19.1, §20.10, §25.1; RFC 3966).

A small scanner, not one big regular expression: the text is cut into its parts with ``str``
methods, and each part is checked against the RFC rule it implements, cited beside the branch.
Regular expressions appear only for single rules (a character set, ``hostname``, ``port``, a
quoted string without escapes). Any ``str`` input either parses or raises
:class:`~libmsilo.errors.InvalidURI` with the offset of the offending character; nothing else
escapes, and the work per call is bounded by a length limit and linear-time matching.

Deliberate deviations from the grammar, each to accept traffic that real user agents send:

* white space just inside ``<`` and ``>`` is ignored (RFC 3261 has none there; some user agents
  send it, and dropping it loses nothing);
* an unquoted display name may hold non-ASCII letters (``Jörg <sip:j@example.com>``) and need not
  be followed by whitespace before ``<``;
* a header parameter value may be ``<…>`` unquoted (RFC 5626 ``+sip.instance=<urn:uuid:…>``
  must be quoted, but many user agents leave the quotes out); it is kept as written;
* a TEL local number without ``phone-context`` is accepted (RFC 3966 §5.1.5 says MUST; short codes
  are commonly sent without it), and TEL parameter values use the ``paramchar`` set throughout.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from libmsilo.errors import InvalidURI

__all__ = [
    "MAX_ADDRESS_LENGTH",
    "MAX_URI_LENGTH",
    "URI",
    "NameAddr",
    "aor",
    "display_name_prefix",
    "parse_address",
    "parse_contact_list",
    "parse_name_addr",
    "parse_uri",
]

MAX_URI_LENGTH = 4096
"""Longest URI text accepted; far above any real URI, low enough to bound the work per call."""
MAX_ADDRESS_LENGTH = 8192
"""Longest name-addr or Contact list text accepted (one header line)."""
# The URIs and name-addrs parsed lately are kept by their text (at most this many of each, each
# this long at most): the same From, To and Request-URI URIs come again and again, and a parsed
# value is immutable.
_CACHE_SIZE = 2048
_CACHED_LENGTH = 256

# ---- rules, RFC 3261 §25.1 -------------------------------------------------------------------
# Every set includes "%": an escape is "%" HEXDIG HEXDIG, checked once for the whole URI.
_ALPHANUM = "A-Za-z0-9"
_MARK = r"\-_.!~*'()"  # mark = "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"
_UNRESERVED = _ALPHANUM + _MARK  # unreserved = alphanum / mark
# user = 1*( unreserved / escaped / user-unreserved ); user-unreserved = & = + $ , ; ? /
_USER = re.compile(rf"[{_UNRESERVED}&=+$,;?/%]+")
# password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
_PASSWORD = re.compile(rf"[{_UNRESERVED}&=+$,%]*")
# paramchar = param-unreserved / unreserved / escaped; param-unreserved = [ ] / : & + $
# The section between the host and "?" is checked in one go, ";" and "=" included; its structure
# (non-empty names, at most one "=") is checked while splitting.
_PARAM_SECTION = re.compile(rf"[{_UNRESERVED}\[\]/:&+$%;=]*")
# hname = 1*( hnv-unreserved / unreserved / escaped ); hvalue = *( same );
# hnv-unreserved = [ ] / ? : + $ -- the section after "?" additionally holds "&" and "=".
_HEADER_SECTION = re.compile(rf"[{_UNRESERVED}\[\]/?:+$%&=]*")
# escaped = "%" HEXDIG HEXDIG
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# hostname = *( domainlabel "." ) toplabel [ "." ]
# domainlabel = alphanum / alphanum *( alphanum / "-" ) alphanum
# toplabel = ALPHA / ALPHA *( alphanum / "-" ) alphanum
# Written as alphanum runs joined by "-" runs, with possessive quantifiers, so that no input makes
# the match backtrack more than once per label.
_HOSTNAME = re.compile(
    r"(?:[A-Za-z0-9]++(?:-++[A-Za-z0-9]++)*+\.)*[A-Za-z][A-Za-z0-9]*+(?:-++[A-Za-z0-9]++)*+\.?"
)
_IPV4 = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")
_HEX4 = re.compile(r"[0-9A-Fa-f]{1,4}")  # hex4 = 1*4HEXDIG
_PORT = re.compile(r"[0-9]{1,5}")  # port = 1*DIGIT (five are enough for 65535)
# token = 1*( alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~" )
_TOKEN_CHARS = rf"{_ALPHANUM}\-.!%*_+`'~"
_TOKEN = re.compile(rf"[{_TOKEN_CHARS}]+")
# A display-name word: a token, or (deviation, see the module docstring) non-ASCII letters too.
_DISPLAY_WORD = re.compile(rf"[{_TOKEN_CHARS}\xa0-\U0010ffff]+")  # not the C1 controls
_DISPLAY_PLAIN = re.compile(rf"[{_TOKEN_CHARS}]+(?: [{_TOKEN_CHARS}]+)*")
# The usual shape of header params: SEMI generic-param with no LWS, quoted string or IPv6 value.
_PLAIN_PARAMS = re.compile(rf"(?:;[{_TOKEN_CHARS}]++(?:=[{_TOKEN_CHARS}]++)?+)*+")
_ONE_PARAM = re.compile(rf";([{_TOKEN_CHARS}]++)(?:=([{_TOKEN_CHARS}]++))?+")
# RFC 3966 §3: phonedigit = DIGIT / visual-separator; phonedigit-hex adds HEXDIG "*" "#".
_GLOBAL_DIGITS = re.compile(r"\+[0-9\-.()]*")
_LOCAL_DIGITS = re.compile(r"[0-9A-Fa-f*#\-.()]+")
_PHONEDIGITS = re.compile(r"[0-9\-.()]+")
_TEL_PNAME = re.compile(rf"[{_ALPHANUM}\-]+")  # RFC 3966: pname = 1*( alphanum / "-" )
# A quoted string without quoted-pair or control character: the common case, one match.
_PLAIN_QUOTED = re.compile(r'"([^"\\\x00-\x08\x0a-\x1f\x7f]*)"')
_QUOTE_OR_BACKSLASH = re.compile(r'["\\]')
# qdtext = LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII: no control character but HTAB, which
# is LWS (a quoted-pair may escape some, but a header line cannot carry CR, LF or NUL anyway).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 3261 §20.10: an addr-spec outside <> ends at the first ";" (header params follow), "," (the
# next contact) or white space.
_ADDR_SPEC_END = re.compile(r"[;, \t]")

_UNRESERVED_SET = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()"
)
# Characters a user part may carry unescaped: %XX of these is decoded for comparison.
_USER_PLAIN = _UNRESERVED_SET | frozenset("&=+$,;?/")
_HEX = frozenset("0123456789abcdefABCDEF")
_TEL_SEPARATORS = str.maketrans("", "", "-.()")  # RFC 3966 §5.1.1 visual-separator
_WS = " \t"


class _Fail(Exception):
    """Internal parse failure; the public functions turn it into InvalidURI for the whole text."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


def _params_str(params: tuple[tuple[str, str | None], ...]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def _lookup(params: tuple[tuple[str, str | None], ...], name: str) -> str | None:
    key = name.lower()
    for k, v in params:
        if k.lower() == key:
            return "" if v is None else v
    return None


@dataclass(frozen=True, slots=True)
class URI:
    """A parsed SIP/SIPS/TEL URI; every part as written, except the lower-cased scheme."""

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        if self.scheme == "tel":
            return f"tel:{self.user or ''}{_params_str(self.params)}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += (":", self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out += (":", str(self.port))
        if self.params:
            out.append(_params_str(self.params))
        if self.headers:
            out.append("?" + "&".join(f"{k}={v}" for k, v in self.headers))
        return "".join(out)

    def param(self, name: str) -> str | None:
        """Value of URI parameter ``name`` (case-insensitive); "" when present without value."""
        return _lookup(self.params, name)

    def has_param(self, name: str) -> bool:
        """Whether URI parameter ``name`` (case-insensitive) is present."""
        return _lookup(self.params, name) is not None

    @property
    def user_key(self) -> str:
        """The user part normalised for comparison (RFC 3261 §19.1.4, RFC 3966 §4)."""
        user = self.user
        if not user:
            return ""
        if self.scheme == "tel":
            # RFC 3966 §4: visual separators are ignored and hex digits compare case-insensitively.
            return user.translate(_TEL_SEPARATORS).upper()
        return _normalise_escapes(user)

    @property
    def host_key(self) -> str:
        """The host lower-cased (RFC 3261 §19.1.4); for TEL the lower-cased phone-context."""
        if self.scheme == "tel":
            return (self.param("phone-context") or "").lower()
        return self.host.lower()

    @property
    def aor_string(self) -> str:
        """``scheme:user@host`` without port, parameters or headers."""
        if self.scheme == "tel":
            return f"tel:{self.user or ''}"
        if self.user is None:
            return f"{self.scheme}:{self.host}"
        return f"{self.scheme}:{self.user}@{self.host}"


def _normalise_escapes(user: str) -> str:
    """Decode %XX of characters a user part may hold unescaped; upper-case the other escapes."""
    if "%" not in user:
        return user
    pieces = user.split("%")
    out = [pieces[0]]
    for piece in pieces[1:]:
        hx = piece[:2]
        if len(hx) == 2 and hx[0] in _HEX and hx[1] in _HEX:
            char = chr(int(hx, 16))
            out.append((char if char in _USER_PLAIN else "%" + hx.upper()) + piece[2:])
        else:  # not an escape (only possible in a hand-built URI): keep as written
            out.append("%" + piece)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class NameAddr:
    """A name-addr or addr-spec header value: URI, display name and header parameters."""

    uri: URI
    display_name: str | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    def __str__(self) -> str:
        # Always the <> form: it is the only one that keeps URI and header params apart.
        return f"{display_name_prefix(self.display_name)}<{self.uri}>{_params_str(self.params)}"

    def param(self, name: str) -> str | None:
        """Value of header parameter ``name`` (case-insensitive); "" when present without value."""
        return _lookup(self.params, name)

    @property
    def tag(self) -> str | None:
        """The ``tag`` header parameter, if any."""
        return _lookup(self.params, "tag")


def display_name_prefix(name: str | None) -> str:
    """What goes before ``<uri>`` in a name-addr: the name and a space, quoted when it is not
    plain tokens; "" for no name."""
    if name is None:
        return ""
    if name and _DISPLAY_PLAIN.fullmatch(name):
        return name + " "
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '" '


# ---- public entry points ---------------------------------------------------------------------


def parse_uri(text: str) -> URI:
    """Parse a SIP, SIPS or TEL URI; raise :class:`InvalidURI` on any error."""
    if type(text) is not str or len(text) > MAX_URI_LENGTH:
        _check_text(text, MAX_URI_LENGTH, "URI")
    # No control-character scan: no rule of the URI grammar admits one, so every part's
    # character check refuses them.
    try:
        return _uri_at(text, 0, len(text))
    except _Fail as exc:
        raise InvalidURI(exc.message, text, exc.position) from None


def parse_name_addr(text: str) -> NameAddr:
    """Parse one name-addr or addr-spec with header params (From, To, P-Asserted-Identity, Contact).

    Without ``<>`` the parameters after the URI are header parameters (RFC 3261 §20.10).
    """
    if type(text) is not str or len(text) > MAX_ADDRESS_LENGTH:
        _check_text(text, MAX_ADDRESS_LENGTH, "address")
    try:
        if text.endswith(">") and len(text) <= _CACHED_LENGTH and type(text) is str:
            # No header parameters (no tag, as in the To of most requests): it comes again.
            return _recent_name_addr(text)
        # Outside a list, _name_addr consumes the whole text or fails.
        return _name_addr(text, 0, len(text), False)[0]
    except _Fail as exc:
        raise InvalidURI(exc.message, text, exc.position) from None


@lru_cache(maxsize=_CACHE_SIZE)
def _recent_name_addr(text: str) -> NameAddr:
    return _name_addr(text, 0, len(text), False)[0]


def parse_address(text: str) -> NameAddr:
    """Parse an address given by configuration or by the host: a bare URI keeps its ``;params``
    as URI parameters (RFC 3261 §20.10 would read them as header parameters of an addr-spec);
    a name-addr ``"Name" <sip:…>`` keeps its display name."""
    if type(text) is not str:
        _check_text(text, MAX_ADDRESS_LENGTH, "address")
    text = text.strip(_WS)
    if "<" in text:
        return parse_name_addr(text)
    return NameAddr(parse_uri(text))


def parse_contact_list(text: str) -> tuple[NameAddr, ...] | None:
    """Parse a Contact header value: comma-separated contacts, or ``None`` for ``*``."""
    _check_text(text, MAX_ADDRESS_LENGTH, "Contact list")
    n = len(text)
    # Contact = ( STAR / (contact-param *(COMMA contact-param)) ); STAR = SWS "*" SWS
    if text.strip(_WS) == "*":
        return None
    contacts: list[NameAddr] = []
    pos = 0
    try:
        while True:
            value, pos = _name_addr(text, pos, n, True)
            contacts.append(value)
            if pos >= n:
                break
            pos += 1  # the "," that stopped _header_params; COMMA = SWS "," SWS
    except _Fail as exc:
        raise InvalidURI(exc.message, text, exc.position) from None
    return tuple(contacts)


def aor(uri: URI) -> tuple[str, str]:
    """The address-of-record key of a URI: ``(user_key, host_key)``."""
    return uri.user_key, uri.host_key


# ---- scanner ---------------------------------------------------------------------------------


def _check_text(text: object, limit: int, what: str) -> None:
    """Refuse what is no str or too long (str subclasses are fine)."""
    if not isinstance(text, str):
        raise InvalidURI(f"{what} must be a str, not {type(text).__name__}")
    if len(text) > limit:
        raise InvalidURI(f"{what} longer than {limit} characters", text[:64] + "...")
    # No control-character scan here: the URI character sets, tokens and white space (SP/HTAB)
    # exclude them, and _quoted_string checks the one free-text part.


def _bad_char(text: str, start: int, end: int, allowed: re.Pattern[str], what: str) -> _Fail:
    """Failure naming the first character in text[start:end] that ``allowed`` does not cover."""
    pos = start
    while pos < end:
        m = allowed.match(text, pos, end)
        if m is None or m.end() == pos:
            break
        pos = m.end()
    return _Fail(f"invalid character in {what}", pos)


# On the hot paths the parser fills the slots of the values it builds directly: the generated
# __init__ of a frozen dataclass routes each field through object.__setattr__, which doubles the
# cost of building the value, and the parser has validated every part already.
def _slot_setters(
    cls: type, names: tuple[str, ...]
) -> tuple[Callable[[object, object], None], ...]:
    return tuple(cls.__dict__[name].__set__ for name in names)


_new_object = object.__new__
_U_SCHEME, _U_USER, _U_PASSWORD, _U_HOST, _U_PORT, _U_PARAMS, _U_HEADERS = _slot_setters(
    URI, ("scheme", "user", "password", "host", "port", "params", "headers")
)
_N_URI, _N_DISPLAY, _N_PARAMS = _slot_setters(NameAddr, ("uri", "display_name", "params"))


def _uri_at(text: str, start: int, end: int) -> URI:
    """:func:`_uri`, from the cache of recent URIs when this one was parsed lately."""
    if end - start > _CACHED_LENGTH or type(text) is not str:
        return _uri(text, start, end)
    try:
        return _recent_uri(text[start:end])
    except _Fail as exc:  # failures are not cached; the position is made one into ``text``
        exc.position += start
        raise


@lru_cache(maxsize=_CACHE_SIZE)
def _recent_uri(text: str) -> URI:
    return _uri(text, 0, len(text))


def _uri(text: str, start: int, end: int) -> URI:
    """URI in text[start:end]; positions in failures are offsets into ``text``."""
    # RFC 3261 §19.1.1 / RFC 3986 §3.1: the scheme is case-insensitive; the lower-case spellings
    # are by far the most common, so they are tested first.
    if text.startswith("sip:", start, end):
        scheme, pos = "sip", start + 4
    elif text.startswith("sips:", start, end):
        scheme, pos = "sips", start + 5
    else:
        colon = text.find(":", start, end)
        if colon <= start:
            raise _Fail("missing URI scheme", start)
        scheme, pos = text[start:colon].lower(), colon + 1
    if text.find("%", pos, end) >= 0:
        bad = _BAD_ESCAPE.search(text, pos, end)
        if bad is not None:  # escaped = "%" HEXDIG HEXDIG (RFC 3261 §25.1)
            raise _Fail("malformed %-escape", bad.start())
    if scheme != "sip" and scheme != "sips":
        if scheme == "tel":
            return _tel_uri(text, pos, end)
        raise _Fail(f"unsupported URI scheme {text[start : pos - 1]!r}", start)

    # SIP-URI = "sip:" [ userinfo ] hostport uri-parameters [ headers ]   (RFC 3261 §25.1)
    user: str | None = None
    password: str | None = None
    # "@" is in no character set after the userinfo, so the first one ends it; a user may hold
    # ";" and "?" (sip:alice;day=tuesday@atlanta.com), which is why "@" is looked for first.
    at = text.find("@", pos, end)
    if at >= 0:
        # userinfo = ( user / telephone-subscriber ) [ ":" password ] "@"
        colon = text.find(":", pos, at)
        uend = at if colon < 0 else colon
        if _USER.fullmatch(text, pos, uend) is None:
            if uend == pos:
                raise _Fail("empty user part", pos)
            raise _bad_char(text, pos, uend, _USER, "user part")
        user = text[pos:uend]
        if colon >= 0:
            if _PASSWORD.fullmatch(text, colon + 1, at) is None:
                raise _bad_char(text, colon + 1, at, _PASSWORD, "password")
            password = text[colon + 1 : at]
        pos = at + 1

    # hostport = host [ ":" port ]; host = hostname / IPv4address / IPv6reference. The host is
    # matched from its start; the character after it tells what follows (":", ";", "?", end).
    if pos < end and text[pos] == "[":
        host, pos = _ipv6_reference(text, pos, end)
    else:
        m = _HOSTNAME.match(text, pos, end)
        if m is None:
            m = _IPV4.match(text, pos, end)
            if m is None or not _octets_ok(m.group()):
                missing = pos == end or text[pos] in ":;?"
                raise _Fail("missing host" if missing else "invalid host", pos)
        host, pos = m.group(), m.end()
    port: int | None = None
    if pos < end and text[pos] == ":":
        m = _PORT.match(text, pos + 1, end)
        if m is None:
            raise _Fail("invalid port", pos + 1)
        port = int(m.group())
        if not 0 < port <= 65535:
            raise _Fail("port out of range 1..65535", pos + 1)
        pos = m.end()
    params: tuple[tuple[str, str | None], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    if pos < end:
        if text[pos] == ";":
            # headers = "?" header *( "&" header ): "?" is in no set of uri-parameters.
            qmark = text.find("?", pos, end)
            pend = end if qmark < 0 else qmark
            params = _uri_params(text, pos + 1, pend)
            pos = pend
        if pos < end:
            if text[pos] != "?":
                raise _Fail("invalid character after the host", pos)
            headers = _uri_headers(text, pos + 1, end)

    uri: URI = _new_object(URI)  # see _slot_setters
    _U_SCHEME(uri, scheme)
    _U_USER(uri, user)
    _U_PASSWORD(uri, password)
    _U_HOST(uri, host)
    _U_PORT(uri, port)
    _U_PARAMS(uri, params)
    _U_HEADERS(uri, headers)
    return uri


def _ipv6_reference(text: str, start: int, end: int) -> tuple[str, int]:
    # IPv6reference = "[" IPv6address "]"
    close = text.find("]", start, end)
    if close < 0:
        raise _Fail("unterminated IPv6 reference", start)
    if not _is_ipv6(text[start + 1 : close]):
        raise _Fail("invalid IPv6 address", start + 1)
    return text[start : close + 1], close + 1


def _octets_ok(text: str) -> bool:
    return all(int(octet) <= 255 for octet in text.split("."))


def _is_ipv4(text: str) -> bool:
    # IPv4address = 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT, each octet at most 255
    return _IPV4.fullmatch(text) is not None and _octets_ok(text)


def _is_ipv6(text: str) -> bool:
    """IPv6address = hexpart [ ":" IPv4address ], with the group counts of RFC 4291 §2.2."""
    groups_max = 8
    if "." in text:
        cut = text.rfind(":")
        if cut < 0 or not _is_ipv4(text[cut + 1 :]):
            return False
        # Keep "::" visible when the IPv4 part follows it directly ("::1.2.3.4").
        text = text[: cut + 1] if text[: cut + 1].endswith("::") else text[:cut]
        groups_max = 6
    if "::" in text:
        # hexpart = hexseq "::" [ hexseq ] / "::" [ hexseq ]; "::" stands for >= 1 zero group.
        if text.count("::") > 1:
            return False
        left, right = text.split("::")
        groups = (left.split(":") if left else []) + (right.split(":") if right else [])
        if len(groups) > groups_max - 1:
            return False
    else:
        groups = text.split(":")
        if len(groups) != groups_max:
            return False
    # hex4 = 1*4HEXDIG
    return all(_HEX4.fullmatch(group) is not None for group in groups)


def _uri_params(text: str, start: int, end: int) -> tuple[tuple[str, str | None], ...]:
    # uri-parameters = *( ";" uri-parameter ); other-param = pname [ "=" pvalue ];
    # pname = 1*paramchar; pvalue = 1*paramchar (RFC 3261 §19.1.1, §25.1)
    if _PARAM_SECTION.fullmatch(text, start, end) is None:
        raise _bad_char(text, start, end, _PARAM_SECTION, "URI parameters")
    out: list[tuple[str, str | None]] = []
    for piece in text[start:end].split(";"):
        name, eq, value = piece.partition("=")
        if not name or (eq and (not value or "=" in value)):
            raise _param_failure(text, start, end)
        out.append((name, value if eq else None))
    return tuple(out)


def _param_failure(text: str, start: int, end: int) -> _Fail:
    """Locate the malformed parameter of a section that _uri_params refused (error path only)."""
    pos = start
    for piece in text[start:end].split(";"):
        name, eq, value = piece.partition("=")
        if not name:
            return _Fail("empty URI parameter name", pos)
        if eq and (not value or "=" in value):
            return _Fail("invalid URI parameter value", pos + len(name) + 1)
        pos += len(piece) + 1
    return _Fail("invalid URI parameter", start)  # pragma: no cover - called on failures only


def _uri_headers(text: str, start: int, end: int) -> tuple[tuple[str, str], ...]:
    # headers = "?" header *( "&" header ); header = hname "=" hvalue (RFC 3261 §25.1)
    if _HEADER_SECTION.fullmatch(text, start, end) is None:
        raise _bad_char(text, start, end, _HEADER_SECTION, "URI headers")
    out: list[tuple[str, str]] = []
    pos = start
    for piece in text[start:end].split("&"):
        name, eq, value = piece.partition("=")
        if not name or not eq or "=" in value:
            raise _Fail("URI header must be name=value", pos)
        out.append((name, value))
        pos += len(piece) + 1
    return tuple(out)


def _tel_uri(text: str, start: int, end: int) -> URI:
    # telephone-uri = "tel:" telephone-subscriber   (RFC 3966 §3)
    semi = text.find(";", start, end)
    nend = end if semi < 0 else semi
    if nend == start:
        raise _Fail("empty telephone number", start)
    if text[start] == "+":
        # global-number-digits = "+" *phonedigit DIGIT *phonedigit
        if _GLOBAL_DIGITS.fullmatch(text, start, nend) is None:
            raise _bad_char(text, start + 1, nend, _PHONEDIGITS, "global number")
    elif _LOCAL_DIGITS.fullmatch(text, start, nend) is None:
        # local-number-digits = *phonedigit-hex (HEXDIG / "*" / "#") *phonedigit-hex
        raise _bad_char(text, start, nend, _LOCAL_DIGITS, "local number")
    if text[start:nend].translate(_TEL_SEPARATORS) in ("", "+"):
        raise _Fail("telephone number without digits", start)
    params = () if semi < 0 else _uri_params(text, semi + 1, end)
    pos = semi + 1
    for name, value in params:
        # parameter = ";" pname ["=" pvalue ]; pname = 1*( alphanum / "-" )
        if _TEL_PNAME.fullmatch(name) is None:
            raise _Fail("invalid TEL parameter name", pos)
        pos += len(name) + 1 + (0 if value is None else len(value) + 1)
    return URI("tel", text[start:nend], None, "", None, params)


# ---- name-addr (RFC 3261 §20.10, §25.1) ------------------------------------------------------


def _skip_ws(text: str, pos: int, end: int) -> int:
    # LWS after unfolding is SP / HTAB runs; SWS = [LWS]
    while pos < end and text[pos] in _WS:
        pos += 1
    return pos


def _quoted_string(text: str, pos: int, end: int) -> tuple[str, int]:
    """quoted-string = SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE; returns (unescaped, after)."""
    plain = _PLAIN_QUOTED.match(text, pos, end)
    if plain is not None:
        return plain.group(1), plain.end()
    start = pos + 1
    # quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F): the next character stands for itself.
    # Jumping from one quote or backslash to the next keeps this linear in the length.
    parts: list[str] = []
    pos = start
    while True:
        special = _QUOTE_OR_BACKSLASH.search(text, pos, end)
        if special is None:
            raise _Fail("unterminated quoted string", start - 1)
        at = special.start()
        parts.append(text[pos:at])
        if text[at] == '"':
            quote = at
            break
        if at + 1 == end:
            raise _Fail("unterminated quoted string", start - 1)
        parts.append(text[at + 1])
        pos = at + 2
    bad = _CONTROL.search(text, start, quote)
    if bad is not None:
        raise _Fail("control character in quoted string", bad.start())
    return "".join(parts), quote + 1


def _name_addr(text: str, pos: int, end: int, in_list: bool) -> tuple[NameAddr, int]:
    """One (name-addr / addr-spec) *(SEMI generic-param) from ``pos``; returns it and the offset
    of the end of the text or, in a list, of the separating comma."""
    if pos < end and text[pos] in _WS:
        pos = _skip_ws(text, pos, end)
    if pos >= end:
        raise _Fail("empty address", pos)
    first = text[pos]
    display: str | None = None
    if first == '"':
        # display-name = quoted-string
        display, pos = _quoted_string(text, pos, end)
        if pos < end and text[pos] in _WS:
            pos = _skip_ws(text, pos, end)
        if pos >= end or text[pos] != "<":
            raise _Fail("expected '<' after the display name", pos)
    elif first != "<":
        word = _DISPLAY_WORD.match(text, pos)
        if word is None:
            raise _Fail("unexpected character", pos)
        after = word.end()
        if after < end and text[after] == ":":
            return _addr_spec(text, pos, end, in_list)
        if text.startswith(" <", after, end):  # the usual one-word name
            display, pos = word.group(), after + 1
        else:
            display, pos = _display_words(text, word, end)
    # name-addr = [ display-name ] LAQUOT addr-spec RAQUOT; a URI never holds ">".
    close = text.find(">", pos + 1, end)
    if close < 0:
        raise _Fail("missing '>'", pos)
    ustart = pos + 1
    uend = close
    if text[ustart] in _WS or text[uend - 1] in _WS:  # deviation: LWS inside <>
        ustart = _skip_ws(text, ustart, close)
        while uend > ustart and text[uend - 1] in _WS:
            uend -= 1
    uri = _uri_at(text, ustart, uend)
    params, pos = _header_params(text, close + 1, end, in_list)
    value: NameAddr = _new_object(NameAddr)  # see _slot_setters
    _N_URI(value, uri)
    _N_DISPLAY(value, display)
    _N_PARAMS(value, params)
    return value, pos


def _display_words(text: str, word: re.Match[str], end: int) -> tuple[str, int]:
    # display-name = *(token LWS): words up to "<", joined by single spaces (LWS == SP).
    words = [word.group()]
    pos = word.end()
    while True:
        pos = _skip_ws(text, pos, end)
        if pos < end and text[pos] == "<":
            return " ".join(words), pos
        next_word = _DISPLAY_WORD.match(text, pos)
        if next_word is None or text[pos - 1] not in _WS:
            raise _Fail("expected '<' after the display name", pos)
        words.append(next_word.group())
        pos = next_word.end()


def _addr_spec(text: str, pos: int, end: int, in_list: bool) -> tuple[NameAddr, int]:
    # RFC 3261 §20.10: without <> the URI stops at ";" and must not contain "," or "?".
    stop = _ADDR_SPEC_END.search(text, pos, end)
    uend = end if stop is None else stop.start()
    qmark = text.find("?", pos, uend)
    if qmark >= 0:
        raise _Fail("a URI with headers must be enclosed in <>", qmark)
    uri = _uri_at(text, pos, uend)
    params, pos = _header_params(text, uend, end, in_list)
    return NameAddr(uri, None, params), pos


def _header_params(
    text: str, pos: int, end: int, in_list: bool
) -> tuple[tuple[tuple[str, str | None], ...], int]:
    # *( SEMI generic-param ) up to the end of the text, or of the contact in a list.
    if pos >= end:
        return (), pos
    one = _ONE_PARAM.fullmatch(text, pos, end)
    if one is not None:  # the most common case of all: ";tag=..." alone
        return ((one[1], one[2]),), end
    stop = _PLAIN_PARAMS.match(text, pos, end).end()  # type: ignore[union-attr]  # matches ""
    if stop == end or (in_list and text[stop] == ","):
        if stop == pos:
            return (), pos
        out: list[tuple[str, str | None]] = []
        for piece in text[pos + 1 : stop].split(";"):
            name, eq, value = piece.partition("=")
            out.append((name, value if eq else None))
        return tuple(out), stop
    return _header_params_lws(text, pos, end, in_list)


def _header_params_lws(
    text: str, pos: int, end: int, in_list: bool
) -> tuple[tuple[tuple[str, str | None], ...], int]:
    # SEMI = SWS ";" SWS; generic-param = token [ EQUAL gen-value ]; EQUAL = SWS "=" SWS;
    # gen-value = token / host / quoted-string (values kept as written, quotes included)
    params: list[tuple[str, str | None]] = []
    while True:
        pos = _skip_ws(text, pos, end)
        if pos >= end:
            return tuple(params), pos
        char = text[pos]
        if char != ";":
            if in_list and char == ",":
                return tuple(params), pos
            raise _Fail("expected ';' before a parameter", pos)
        pos = _skip_ws(text, pos + 1, end)
        name = _TOKEN.match(text, pos)
        if name is None:
            raise _Fail("expected a parameter name", pos)
        pos = name.end()
        after = _skip_ws(text, pos, end)
        value: str | None = None
        if after < end and text[after] == "=":
            vstart = _skip_ws(text, after + 1, end)
            if vstart < end and text[vstart] == '"':
                _, pos = _quoted_string(text, vstart, end)
            elif vstart < end and text[vstart] == "<":
                # Deviation: +sip.instance=<urn:uuid:…> unquoted, as many phones send it.
                close = text.find(">", vstart, end)
                if close < 0 or _CONTROL.search(text, vstart, close):
                    raise _Fail("unterminated <> in parameter value", vstart)
                pos = close + 1
            elif vstart < end and text[vstart] == "[":
                close = text.find("]", vstart, end)
                if close < 0 or not _is_ipv6(text[vstart + 1 : close]):
                    raise _Fail("invalid IPv6 reference in parameter", vstart)
                pos = close + 1
            else:
                token = _TOKEN.match(text, vstart)
                if token is None:
                    raise _Fail("expected a parameter value", vstart)
                pos = token.end()
            value = text[vstart:pos]
        params.append((name.group(), value))
