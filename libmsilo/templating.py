"""Pseudo-variable templates (``from_address``, ``offline_message``, ``contact_hdr``, ...).

A template is literal text with ``$name``, ``$name(arg)`` and ``$(name(arg)[index])`` pieces filled
in from the request, as the msilo modules do [BEHAVIOUR.md §7]. It is compiled once, when
settings are built, so an unknown variable or bad syntax is a :class:`SettingsError` then and
never at request time. A variable without a value renders ``<null>``, as in OpenSIPS and
Kamailio; rendering never raises because of what the request contains.

Syntax (OpenSIPS rules: a name runs over ``[A-Za-z0-9_]``, so ``$rUx`` is the unknown ``rUx``; write
``$(rU)x`` to put text right after a variable):

- ``$ru``, ``$(ru)``: a plain variable (see :data:`PLAIN_VARIABLES`);
- ``$hdr(Name)``, ``$avp(name)``, ``$var(name)``: first header value / current AVP / script var;
- ``$(hdr(Name)[N])``: the N-th header of that name (0 = first, -1 = last), ``[*]`` all of them
  joined with ``", "``; ``$(avp(name)[N])``: AVPs are a stack, so 0 is the most recent value and
  -1 the oldest; ``[*]`` joins them, most recent first;
- ``$$``: a literal ``$``. A ``$`` followed by anything else is an error.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import tzinfo
from types import MappingProxyType

from libmsilo.errors import MsiloError, SettingsError
from libmsilo.message import SipRequest
from libmsilo.timefmt import ctime24
from libmsilo.uri import URI, parse_name_addr, parse_uri

__all__ = ["DIALECTS", "NULL", "PLAIN_VARIABLES", "Template", "TemplateError", "compile_template"]

log = logging.getLogger("libmsilo")

NULL = "<null>"
"""What a variable without a value renders as (the modules print the same)."""

Value = str | int | None
Getter = Callable[[SipRequest, float, tzinfo], Value]

# Errors a getter may hit on malformed request content; they render <null> instead of escaping.
_CONTENT_ERRORS = (MsiloError, ValueError, LookupError)

_NAME = re.compile(r"[A-Za-z0-9_]+")
# RFC 3261 §25.1: header-name = token.
_HEADER_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")
# The same names the settings accept for snd_time_avp.
_AVP_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
_INDEX = re.compile(r"\[(\*|-?[0-9]{1,9})\]")


class TemplateError(SettingsError):
    """A template does not compile; ``position`` is the offset of the offending character."""

    def __init__(self, message: str, source: str, position: int) -> None:
        self.source = source
        self.position = position
        super().__init__(f"{message} at position {position} in template {source!r}")


# ---- getters -------------------------------------------------------------------------------------


def _nonempty(value: str | None) -> str | None:
    return value if value else None


def _ouri(req: SipRequest) -> URI:
    return parse_uri(req.original_ruri)


def _port(uri: URI) -> int:
    """The URI's port, else the default one: 5061 for sips, 5060 for everything else."""
    if uri.port is not None:
        return uri.port
    return 5061 if uri.scheme.lower() == "sips" else 5060


def _written(value: str) -> tuple[str | None, str]:
    """(display name as written, quotes kept, or None; URI as written) of a From or To value
    that parses (the caller parsed it first)."""
    text = value.strip(" \t")
    pos = 0
    if text.startswith('"'):  # skip the quoted display name: it may hold "<"
        pos = 1
        while pos < len(text) and text[pos] != '"':
            pos += 2 if text[pos] == "\\" else 1
        pos += 1
    less = text.find("<", pos)
    if less < 0:  # addr-spec: the URI ends where the header parameters start
        return None, text.split(";", 1)[0].rstrip(" \t")
    more = text.find(">", less)
    return text[:less].strip(" \t") or None, text[less + 1 : more].strip(" \t")


def _from_written(req: SipRequest) -> tuple[str | None, str]:
    req.from_addr  # noqa: B018 - it must parse, or the variable has no value
    return _written(req.header("From") or "")


def _to_written(req: SipRequest) -> tuple[str | None, str]:
    req.to_addr  # noqa: B018 - it must parse, or the variable has no value
    return _written(req.header("To") or "")


def _cseq(req: SipRequest, now: float, tz: tzinfo) -> Value:
    value = req.header("CSeq")
    if value is None:
        return None
    number = value.split(None, 1)[0] if value.strip() else ""
    return number if number.isascii() and number.isdigit() else None


def _contact(req: SipRequest, now: float, tz: tzinfo) -> Value:
    if req.contact_star:
        return _nonempty((req.header("Contact") or "").strip())
    contacts, unparsed = req.usable_contacts
    if not contacts:
        return None
    # "As written": the first comma-separated element that parses (an odd one is skipped).
    skip = {element for element, _ in unparsed}
    for element in req.header_list("Contact"):
        if element not in skip:
            return element.strip()
    return str(contacts[0])


def _contact_header(req: SipRequest, now: float, tz: tzinfo) -> Value:
    # Kamailio's $ct: the whole value of the first Contact header, as written.
    return _nonempty((req.header("Contact") or "").strip(" \t"))


def _asserted_identity(req: SipRequest, now: float, tz: tzinfo) -> Value:
    elements = req.header_list("P-Asserted-Identity")
    if not elements:
        return None
    return str(parse_name_addr(elements[0].strip()).uri)


def _source(index: int) -> Getter:
    def get(req: SipRequest, now: float, tz: tzinfo) -> Value:
        return None if req.source is None else req.source[index]

    return get


def _body(req: SipRequest, now: float, tz: tzinfo) -> Value:
    return _nonempty(req.body.decode("utf-8", errors="replace"))


PLAIN_VARIABLES: Mapping[str, Getter] = MappingProxyType(
    {
        "ru": lambda r, n, z: _nonempty(r.ruri),
        "rU": lambda r, n, z: _nonempty(r.ruri_uri.user),
        "rd": lambda r, n, z: _nonempty(r.ruri_uri.host),
        "rp": lambda r, n, z: _port(r.ruri_uri),
        "ou": lambda r, n, z: _nonempty(r.original_ruri),
        "oU": lambda r, n, z: _nonempty(_ouri(r).user),
        "od": lambda r, n, z: _nonempty(_ouri(r).host),
        "op": lambda r, n, z: _port(_ouri(r)),
        "du": lambda r, n, z: _nonempty(r.dst_uri),
        "fu": lambda r, n, z: _from_written(r)[1],
        "fU": lambda r, n, z: _nonempty(r.from_addr.uri.user),
        "fd": lambda r, n, z: _nonempty(r.from_addr.uri.host),
        "fn": lambda r, n, z: _from_written(r)[0],
        "tu": lambda r, n, z: _to_written(r)[1],
        "tU": lambda r, n, z: _nonempty(r.to_addr.uri.user),
        "td": lambda r, n, z: _nonempty(r.to_addr.uri.host),
        "tn": lambda r, n, z: _to_written(r)[0],
        "ci": lambda r, n, z: _nonempty(r.call_id),
        "rm": lambda r, n, z: _nonempty(r.method),
        "cs": _cseq,
        "ct": _contact,
        "cT": lambda r, n, z: _nonempty(r.content_type),
        "rb": _body,
        "si": _source(0),
        "sp": _source(1),
        "ai": _asserted_identity,
        "Ts": lambda r, n, z: math.floor(n),
        "Tf": lambda r, n, z: ctime24(math.floor(n), z),
    }
)
"""The plain variables by name, each a getter ``(request, now, tz) -> value``."""

#: Where a server renders a variable its own way: Kamailio's ``$ct`` is the whole first Contact
#: header (OpenSIPS': its first contact).
DIALECTS: Mapping[str, Mapping[str, Getter]] = MappingProxyType(
    {"opensips": MappingProxyType({}), "kamailio": MappingProxyType({"ct": _contact_header})}
)


def _avp_stack(req: SipRequest, name: str) -> list[str | int]:
    """The AVP's values, most recent first (the modules keep AVPs as a stack)."""
    value = req.avps.get(name) if req.avps else None
    if value is None:
        return []
    if isinstance(value, str | int):
        return [value]
    return list(reversed(value))


def _text(value: str | int) -> str:
    # int() so that a bool prints 1/0, as the C modules' integers would.
    return value if isinstance(value, str) else str(int(value))


def _pick(values: Sequence[str | int], index: int | None) -> Value:
    """``[*]`` (index None) joins all values; N picks one, negative from the end."""
    if index is None:
        return ", ".join(map(_text, values)) if values else None
    if -len(values) <= index < len(values):
        return values[index]
    return None


def _header_getter(name: str, index: int | None, every: bool) -> Getter:
    if not every and index is None:
        return lambda r, n, z: r.header(name)
    return lambda r, n, z: _pick(r.header_all(name), None if every else index)


def _avp_getter(name: str, index: int | None, every: bool) -> Getter:
    chosen = None if every else (0 if index is None else index)
    return lambda r, n, z: _pick(_avp_stack(r, name), chosen)


def _var_getter(name: str) -> Getter:
    return lambda r, n, z: r.vars.get(name) if r.vars else None


# ---- the compiled template -----------------------------------------------------------------------


class Template:
    """A compiled template: literal strings and getters, rendered against a request."""

    __slots__ = ("_parts", "source", "variables")

    source: str
    variables: tuple[str, ...]
    _parts: tuple[str | Getter, ...]

    def __init__(
        self, source: str, parts: tuple[str | Getter, ...], variables: tuple[str, ...]
    ) -> None:
        self.source = source
        self._parts = parts
        self.variables = variables

    def render(self, req: SipRequest, *, now: float, tz: tzinfo) -> str:
        """The text with every variable filled in from ``req`` (``<null>`` when it has none).

        ``now`` (epoch seconds) and ``tz`` feed ``$Ts`` and ``$Tf``.
        """
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
                continue
            try:
                value = part(req, now, tz)
            except _CONTENT_ERRORS as exc:
                log.debug("template %r: variable has no value: %s", self.source, exc)
                value = None
            out.append(NULL if value is None else _text(value))
        return "".join(out)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Template) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)


# ---- compiler ------------------------------------------------------------------------------------


class _Parser:
    """Reads one template left to right; every error names the offending position."""

    def __init__(self, source: str, dialect: str = "opensips") -> None:
        self.source = source
        self.overrides = DIALECTS[dialect]
        self.pos = 0
        self.parts: list[str | Getter] = []
        self.names: dict[str, None] = {}  # ordered set of the variables used

    def fail(self, message: str, position: int) -> TemplateError:
        return TemplateError(message, self.source, position)

    def literal(self, text: str) -> None:
        if not text:
            return
        if self.parts and isinstance(self.parts[-1], str):
            self.parts[-1] += text
        else:
            self.parts.append(text)

    def run(self) -> Template:
        src = self.source
        while self.pos < len(src):
            dollar = src.find("$", self.pos)
            if dollar < 0:
                self.literal(src[self.pos :])
                break
            self.literal(src[self.pos : dollar])
            self.pos = dollar + 1
            nxt = src[self.pos : self.pos + 1]
            if nxt == "$":
                self.literal("$")
                self.pos += 1
            elif nxt == "(":
                self.pos += 1
                self.variable(dollar, braced=True)
                self.expect(")", "')' to close '$('")
            elif nxt and _NAME.match(nxt):
                self.variable(dollar, braced=False)
            else:
                shown = "end of template" if not nxt else repr(nxt)
                raise self.fail(
                    f"'$' must be followed by a variable name, '(' or '$' (write $$ for a "
                    f"literal $), found {shown}",
                    dollar,
                )
        parts = tuple(self.parts)
        return Template(src, parts, tuple(self.names))

    def expect(self, char: str, what: str) -> None:
        if self.source[self.pos : self.pos + 1] != char:
            found = self.source[self.pos : self.pos + 1]
            raise self.fail(
                f"expected {what}, found {found!r}" if found else f"missing {what}", self.pos
            )
        self.pos += 1

    def argument(self, kind: str, pattern: re.Pattern[str]) -> str:
        self.expect("(", f"'(' after ${kind}")
        match = pattern.match(self.source, self.pos)
        if match is None:
            raise self.fail(f"invalid or empty name in ${kind}(...)", self.pos)
        self.pos = match.end()
        self.expect(")", f"')' to close ${kind}(")
        return match.group()

    def index(self, kind: str) -> tuple[int | None, bool, str]:
        """An optional ``[N]`` / ``[*]``: (index, every, text as written)."""
        if self.source[self.pos : self.pos + 1] != "[":
            return None, False, ""
        match = _INDEX.match(self.source, self.pos)
        if match is None:
            raise self.fail(f"bad index for {kind}: expected [N], [-N] or [*]", self.pos)
        self.pos = match.end()
        inner = match.group(1)
        return (None, True, match.group()) if inner == "*" else (int(inner), False, match.group())

    def variable(self, dollar: int, *, braced: bool) -> None:
        start = self.pos
        match = _NAME.match(self.source, start)
        if match is None:
            raise self.fail("expected a variable name after '$('", start)
        name = match.group()
        self.pos = match.end()
        getter: Getter
        if name == "hdr":
            header = self.argument(name, _HEADER_TOKEN)
            index, every, written = self.index(name) if braced else (None, False, "")
            getter = _header_getter(header, index, every)
            label = f"hdr({header}){written}"
        elif name in ("avp", "var"):
            key = self.argument(name, _AVP_NAME)
            if name == "avp":
                index, every, written = self.index(name) if braced else (None, False, "")
                getter = _avp_getter(key, index, every)
            else:
                if braced and self.source[self.pos : self.pos + 1] == "[":
                    raise self.fail("$var(...) takes no index", self.pos)
                written, getter = "", _var_getter(key)
            label = f"{name}({key}){written}"
        elif name in PLAIN_VARIABLES:
            getter, label = self.overrides.get(name) or PLAIN_VARIABLES[name], name
            # Unbraced, a '[' is literal text (indexes exist only inside "$(...)").
            if self.source[self.pos : self.pos + 1] in (("(", "[") if braced else ("(",)):
                raise self.fail(f"${name} takes no argument or index", self.pos)
        else:
            raise self.fail(f"unknown variable ${name}", dollar)
        self.parts.append(getter)
        self.names[label] = None


def compile_template(source: str, dialect: str = "opensips") -> Template:
    """Compile a template once; ``SettingsError`` (a :class:`TemplateError`) when it is invalid.

    ``dialect`` (``opensips`` or ``kamailio``) picks the server whose rendering differs
    (:data:`DIALECTS`)."""
    if not isinstance(source, str):
        raise SettingsError(f"a template must be a string, got {type(source).__name__}")
    if dialect not in DIALECTS:
        raise SettingsError(f"unknown template dialect {dialect!r}")
    return _Parser(source, dialect).run()
