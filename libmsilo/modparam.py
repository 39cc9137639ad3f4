"""Reading ``modparam("module", "name", value)`` lines from an OpenSIPS or Kamailio config.

Only what settings need: comments (``#``, ``//``, ``/* */``) are skipped, string values have their
escapes (``\\r\\n``, ``\\"``, ``\\\\``, ``\\t``) turned into the real characters as the servers'
config parsers do, and integers stay integers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from .errors import SettingsError

__all__ = ["read_modparams"]

log = logging.getLogger("libmsilo")

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "'": "'", "\\": "\\", "0": "\0"}


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, message: str) -> SettingsError:
        line = self.text.count("\n", 0, self.pos) + 1
        return SettingsError(f"config line {line}: {message}")

    def skip_space(self) -> None:
        text, n = self.text, len(self.text)
        while self.pos < n:
            ch = text[self.pos]
            if ch.isspace():
                self.pos += 1
            elif ch == "#" or text.startswith("//", self.pos):
                end = text.find("\n", self.pos)
                self.pos = n if end < 0 else end + 1
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    raise self.error("unterminated /* comment")
                self.pos = end + 2
            else:
                return

    def string(self) -> str:
        quote = self.text[self.pos]
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == quote:
                self.pos += 1
                return "".join(out)
            if ch == "\\" and self.pos + 1 < len(self.text):
                nxt = self.text[self.pos + 1]
                out.append(_ESCAPES.get(nxt, "\\" + nxt))
                self.pos += 2
                continue
            out.append(ch)
            self.pos += 1
        raise self.error("unterminated string")

    def value(self) -> str | int:
        self.skip_space()
        if self.pos >= len(self.text):
            raise self.error("missing value")
        if self.text[self.pos] in "\"'":
            # Adjacent strings are joined, as both servers' parsers do.
            parts = [self.string()]
            self.skip_space()
            while self.pos < len(self.text) and self.text[self.pos] in "\"'":
                parts.append(self.string())
                self.skip_space()
            return "".join(parts)
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ",)":
            self.pos += 1
        word = self.text[start : self.pos].strip()
        try:
            return int(word, 0)
        except ValueError:
            return word

    def expect(self, ch: str) -> None:
        self.skip_space()
        if not self.text.startswith(ch, self.pos):
            raise self.error(f"expected {ch!r}")
        self.pos += 1

    def modparams(self) -> Iterator[tuple[str, str, str | int]]:
        while True:
            self.skip_space()
            if self.pos >= len(self.text):
                return
            if self.text.startswith("modparam", self.pos) and self._word_start():
                self.pos += len("modparam")
                self.skip_space()
                if self.text.startswith("(", self.pos):
                    yield self._call()
                    continue
            self._skip_token()

    def _word_start(self) -> bool:
        return self.pos == 0 or not (
            self.text[self.pos - 1].isalnum() or self.text[self.pos - 1] == "_"
        )

    def _skip_token(self) -> None:
        if self.text[self.pos] in "\"'":
            self.string()
        else:
            self.pos += 1

    def _call(self) -> tuple[str, str, str | int]:
        self.expect("(")
        module = self.value()
        self.expect(",")
        name = self.value()
        self.expect(",")
        value = self.value()
        self.expect(")")
        return str(module), str(name), value


def read_modparams(text: str, module: str, known: set[str]) -> list[tuple[str, str | int]]:
    """The ``(name, value)`` pairs set for ``module``; unknown names are logged and skipped."""
    found: list[tuple[str, str | int]] = []
    for mod, name, value in _Scanner(text).modparams():
        if module not in mod.split("|"):
            continue
        if name not in known:
            log.warning("modparam %s.%s is not supported by libmsilo; ignored", module, name)
            continue
        found.append((name, value))
    return found
