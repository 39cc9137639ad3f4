"""The config preprocessor of Kamailio (``#!define``, ``#!ifdef``, …) and the ``include_file`` /
``import_file`` statements of both servers, so that modparams are read as the server reads them.

Supported, with the server's meaning: ``#!define``/``#!def``, ``#!trydef``/``#!trydefine``,
``#!redefine``/``#!redef``, ``#!ifdef``, ``#!ifndef``, ``#!else``, ``#!endif``, ``#!subst``,
``#!substdef``, ``#!substdefs``, ``#!defenv``, ``#!defenvs``, ``#!trydefenv``, ``#!trydefenvs``
(``!!`` works as well as ``#!``). Defined names are replaced where they stand as identifiers,
never inside strings (``#!subst`` rewrites strings). ``#!defexp``, ``#!defexps`` and ``#!ifexp``
(expressions) are refused with a :class:`SettingsError` naming the line. Pre-defined names are
given like ``kamailio -A NAME`` / ``-A NAME=VALUE``.

An included file's relative path is looked up next to the file that includes it, then in the
current directory (Kamailio tries the current directory first; libmsilo rarely runs where the
server does). A missing ``include_file`` is an error naming the file; ``import_file`` may be
missing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SettingsError

__all__ = ["Defines", "preprocess"]

Defines = Iterable[str] | Mapping[str, str | None]
"""Pre-defined names: ``["WITH_MYSQL", "DBURL=\\"mysql://…\\""]`` or ``{"WITH_MYSQL": None}``."""

MAX_INCLUDE_DEPTH = 10  # as Kamailio
_MAX_EXPANSION = 32  # nested define expansions before a definition is taken to loop

_DIRECTIVE = re.compile(r"[ \t]*(?:#!|!!)([A-Za-z_-]+)[ \t]*(.*)", re.S)
_INCLUDE = re.compile(r"[ \t]*(?:#!|!!)?(include_file|import_file)[ \t]+(\"[^\"\n]*\"|'[^'\n]*')")
_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORD = re.compile(r"(?<![A-Za-z0-9_])[A-Za-z_][A-Za-z0-9_]*")
# The lexical pieces outside which identifiers are replaced: strings and comments.
_PIECE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|/\*.*?\*/|(?:#|//)[^\n]*', re.S)

_ALIASES = {
    "def": "define",
    "trydefine": "trydef",
    "redef": "redefine",
}
_MARKERS = {"kamailio", "openser", "ser", "sip-router", "all", "maxcompat"}
_REFUSED = {"defexp", "defexps", "ifexp"}


@dataclass
class _Branch:
    parent_active: bool
    taking: bool
    had_else: bool = False


@dataclass
class _State:
    defines: dict[str, str]
    directives: bool
    substs: list[tuple[re.Pattern[str], str, int]] = field(default_factory=list)


def _predefined(defines: Defines) -> dict[str, str]:
    if isinstance(defines, Mapping):
        return {str(k): "" if v is None else str(v) for k, v in defines.items()}
    out: dict[str, str] = {}
    for item in defines:
        name, _, value = str(item).partition("=")
        out[name.strip()] = value
    for name in out:
        if not _ID.fullmatch(name):
            raise SettingsError(f"pre-defined name {name!r} is not an identifier")
    return out


def preprocess(
    text: str, *, path: str | os.PathLike[str] | None = None, defines: Defines = (), kamailio: bool
) -> str:
    """``text`` with includes inlined and, for Kamailio, its directives applied and defined
    names replaced. ``path`` is where ``text`` came from (for relative includes and errors)."""
    state = _State(_predefined(defines), kamailio)
    lines = _file(state, text, Path(path) if path is not None else None, 0)
    out = "\n".join(lines)
    return _expand(state, out) if kamailio else out


def _where(path: Path | None, number: int) -> str:
    return f"{path or 'config'} line {number}"


def _file(state: _State, text: str, path: Path | None, depth: int) -> list[str]:
    out: list[str] = []
    branches: list[_Branch] = []
    lines = text.split("\n")
    index = 0
    in_comment = False  # inside /* */: a "#!" line there is no directive
    while index < len(lines):
        number = index + 1
        line = lines[index]
        index += 1
        active = not branches or (branches[-1].parent_active and branches[-1].taking)
        directive = _DIRECTIVE.match(line) if state.directives and not in_comment else None
        if directive is not None:
            name = directive.group(1).lower()
            argument = directive.group(2)
            while argument.rstrip().endswith("\\") and index < len(lines):
                argument = argument.rstrip()[:-1] + "\n" + lines[index]
                index += 1
                out.append("")
            if name in ("include_file", "import_file") and active:
                out += _include(state, f"{name} {argument}", path, number, depth)
                continue
            _directive(state, branches, active, name, argument.strip(), _where(path, number))
            out.append("")
            continue
        if not active:
            out.append("")
            continue
        include = _INCLUDE.match(line) if not in_comment else None
        if include is not None:
            out += _include(state, line, path, number, depth)
            continue
        in_comment = _ends_in_comment(line, in_comment)
        out.append(line)
    if branches:
        raise SettingsError(f"{path or 'config'}: #!ifdef/#!ifndef without #!endif")
    return out


def _ends_in_comment(line: str, in_comment: bool) -> bool:
    """Whether a ``/* */`` comment is still open at the end of ``line``."""
    pos = 0
    while pos < len(line):
        if in_comment:
            end = line.find("*/", pos)
            if end < 0:
                return True
            in_comment, pos = False, end + 2
            continue
        char = line[pos]
        if char in "\"'":
            end = line.find(char, pos + 1)
            while end > 0 and line[end - 1] == "\\":
                end = line.find(char, end + 1)
            pos = len(line) if end < 0 else end + 1
        elif char == "#" or line.startswith("//", pos):
            return False
        elif line.startswith("/*", pos):
            in_comment, pos = True, pos + 2
        else:
            pos += 1
    return in_comment


def _directive(
    state: _State, branches: list[_Branch], active: bool, name: str, arg: str, where: str
) -> None:
    name = _ALIASES.get(name, name)
    if name in ("ifdef", "ifndef", "ifexp"):
        if not active:
            branches.append(_Branch(False, False))
            return
        if name == "ifexp":
            raise SettingsError(f"{where}: #!ifexp is not supported by libmsilo")
        defined = _name(arg, name, where) in state.defines
        branches.append(_Branch(True, defined if name == "ifdef" else not defined))
    elif name == "else":
        if not branches or branches[-1].had_else:
            raise SettingsError(f"{where}: #!else without #!ifdef/#!ifndef")
        branches[-1].taking = not branches[-1].taking
        branches[-1].had_else = True
    elif name == "endif":
        if not branches:
            raise SettingsError(f"{where}: #!endif without #!ifdef/#!ifndef")
        branches.pop()
    elif not active or name in _MARKERS:
        return
    elif name in _REFUSED:
        raise SettingsError(f"{where}: #!{name} (an expression) is not supported by libmsilo")
    elif name in ("define", "trydef", "redefine"):
        ident, value = [*re.split(r"[ \t]+", arg, maxsplit=1), ""][:2]
        ident = _name(ident, name, where)
        if name == "define" and ident in state.defines:
            raise SettingsError(f"{where}: {ident} is already defined (#!redefine replaces it)")
        if name != "trydef" or ident not in state.defines:
            state.defines[ident] = value.strip()
    elif name in ("defenv", "defenvs", "trydefenv", "trydefenvs"):
        ident, eq, variable = arg.partition("=")
        ident = _name(ident.strip(), name, where)
        value = os.environ.get((variable if eq else ident).strip(), "")
        if name.endswith("s"):
            value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if not name.startswith("try") or ident not in state.defines:
            state.defines[ident] = value
    elif name in ("subst", "substdef", "substdefs"):
        _subst(state, name, arg, where)
    # Any other "#!word" is a comment to Kamailio's lexer too.


def _name(text: str, directive: str, where: str) -> str:
    ident = text.strip()
    if not _ID.fullmatch(ident):
        raise SettingsError(f"{where}: #!{directive} needs a name, got {text!r}")
    return ident


def _subst(state: _State, name: str, arg: str, where: str) -> None:
    # #!subst "/regexp/replacement/flags" with any delimiter; flags i (ignore case), g (all)
    quoted = arg.strip()
    if len(quoted) < 2 or quoted[0] not in "\"'" or quoted[-1] != quoted[0]:
        raise SettingsError(f'{where}: #!{name} needs a quoted "/regexp/replacement/flags"')
    body = quoted[1:-1]
    if not body:
        raise SettingsError(f"{where}: empty #!{name}")
    delim = re.escape(body[0])
    parts = re.split(rf"(?<!\\){delim}", body[1:])
    if len(parts) != 3 or not parts[0]:
        raise SettingsError(f"{where}: #!{name} {quoted} is not /regexp/replacement/flags")
    pattern, replacement, flags = parts
    if set(flags) - set("ig"):
        raise SettingsError(f"{where}: #!{name} flags {flags!r} (only i and g are supported)")
    try:
        regex = re.compile(pattern, re.I if "i" in flags else 0)
    except re.error as exc:
        raise SettingsError(f"{where}: #!{name} regexp {pattern!r}: {exc}") from None
    state.substs.append((regex, replacement, 0 if "g" in flags else 1))
    if name != "subst":
        value = f'"{replacement}"' if name == "substdefs" else replacement
        if not _ID.fullmatch(pattern):
            raise SettingsError(f"{where}: #!{name} defines {pattern!r}, which is no name")
        state.defines.setdefault(pattern, value)


def _include(state: _State, line: str, path: Path | None, number: int, depth: int) -> list[str]:
    match = _INCLUDE.match(line)
    where = _where(path, number)
    if match is None:
        raise SettingsError(f"{where}: include_file/import_file needs a quoted file name")
    kind, name = match.group(1), match.group(2)[1:-1]
    if depth >= MAX_INCLUDE_DEPTH:
        raise SettingsError(f"{where}: includes nested deeper than {MAX_INCLUDE_DEPTH}")
    found = _locate(name, path)
    if found is None:
        if kind == "import_file":
            return [""]
        base = f" (looked next to {path} and in {Path.cwd()})" if path else ""
        raise SettingsError(f"{where}: include_file {name!r} not found{base}")
    try:
        text = found.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{where}: {kind} {str(found)!r} cannot be read: {exc}") from None
    return _file(state, text, found, depth + 1)


def _locate(name: str, including: Path | None) -> Path | None:
    candidate = Path(name)
    if candidate.is_absolute():
        return candidate if candidate.is_file() else None
    places = [including.parent / candidate] if including is not None else []
    places.append(Path.cwd() / candidate)
    return next((p for p in places if p.is_file()), None)


def _expand(state: _State, text: str) -> str:
    """Replace defined identifiers outside strings and comments; apply ``#!subst`` to strings."""
    if not state.defines and not state.substs:
        return text
    return _expand_code(state, text, 0, strings=True)


def _expand_code(state: _State, text: str, depth: int, *, strings: bool) -> str:
    out: list[str] = []
    pos = 0
    for piece in _PIECE.finditer(text):
        out.append(_replace_ids(state, text[pos : piece.start()], depth))
        token = piece.group()
        if strings and token[0] in "\"'":
            for regex, replacement, count in state.substs:
                token = token[0] + regex.sub(replacement, token[1:-1], count) + token[-1]
        out.append(token)
        pos = piece.end()
    out.append(_replace_ids(state, text[pos:], depth))
    return "".join(out)


def _replace_ids(state: _State, code: str, depth: int) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group()
        value = state.defines.get(name)
        if value is None:
            return name
        if depth >= _MAX_EXPANSION:
            raise SettingsError(f"define {name} expands into itself")
        return _expand_code(state, value, depth + 1, strings=False)

    return _WORD.sub(one, code)
