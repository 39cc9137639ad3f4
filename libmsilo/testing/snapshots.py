"""Snapshot checks of the exact bytes of the MESSAGEs a Silo asks the host to send.

A snapshot file holds the messages as :meth:`OutgoingMessage.to_bytes` writes them, one after
the other as on a stream transport (Content-Length frames each), with per-message values that
the host would make up fixed: Call-ID ``snapshot-N@msilo.test``, From tag ``tagN``, CSeq ``N``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path

from ..message import OutgoingMessage

__all__ = ["SnapshotChecker", "render_messages"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.=-]+")


def render_messages(messages: OutgoingMessage | Iterable[OutgoingMessage]) -> bytes:
    """The bytes a snapshot holds for ``messages``."""
    if isinstance(messages, OutgoingMessage):
        messages = [messages]
    return b"".join(
        msg.to_bytes(call_id=f"snapshot-{n}@msilo.test", from_tag=f"tag{n}", cseq=n)
        for n, msg in enumerate(messages, 1)
    )


def _lines(data: bytes) -> list[str]:
    text = data.decode("utf-8", errors="backslashreplace")
    return [line.replace("\r", "\\r") for line in text.split("\n")]


class SnapshotChecker:
    """Compares rendered messages with files under ``directory``; ``update`` rewrites them.

    ``seen`` is shared by a whole test session: one file checked twice with different bytes
    (two parametrizations of one test, say) is an error rather than a silent overwrite.
    """

    def __init__(
        self,
        directory: Path,
        test_name: str,
        *,
        update: bool = False,
        seen: dict[Path, bytes] | None = None,
    ) -> None:
        self.directory = directory
        self.test_name = _UNSAFE.sub("_", test_name)
        self.update = update
        self._seen = seen if seen is not None else {}
        self._calls = 0

    def path_for(self, name: str | None = None) -> Path:
        """The file of this test's next unnamed check, or of the check called ``name``."""
        if name is not None:
            return self.directory / f"{self.test_name}-{_UNSAFE.sub('_', name)}.sip"
        suffix = "" if self._calls == 0 else f"-{self._calls + 1}"
        return self.directory / f"{self.test_name}{suffix}.sip"

    def check(
        self, messages: OutgoingMessage | Iterable[OutgoingMessage], name: str | None = None
    ) -> bytes:
        """Assert that ``messages`` render to the stored snapshot (write it when updating)."""
        path = self.path_for(name)
        if name is None:
            self._calls += 1
        actual = render_messages(messages)
        earlier = self._seen.setdefault(path, actual)
        if earlier != actual:
            raise AssertionError(
                f"snapshot {path} was checked twice in this run with different bytes; "
                "give each check its own name= (e.g. per parametrization)"
            )
        if self.update:
            if not path.exists() or path.read_bytes() != actual:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(actual)
            return actual
        if not path.exists():
            raise AssertionError(
                f"snapshot {path} does not exist; run pytest with --msilo-update-snapshots "
                "to write it, then review and commit it"
            )
        expected = path.read_bytes()
        if expected != actual:
            diff = "\n".join(
                difflib.unified_diff(
                    _lines(expected), _lines(actual), "snapshot", "sent", lineterm=""
                )
            )
            raise AssertionError(
                f"the messages sent differ from snapshot {path} "
                f"(--msilo-update-snapshots rewrites it):\n{diff}"
            )
        return actual
