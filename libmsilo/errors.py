"""The libmsilo error hierarchy.

``MsiloError`` is the root; every error the library raises on purpose is one of these, and driver
exceptions are wrapped into :class:`StorageError` with the original as ``__cause__``.
"""

from __future__ import annotations

from typing import Any

from .masking import mask_text

__all__ = [
    "InvalidRequest",
    "InvalidSendTime",
    "InvalidURI",
    "MsiloError",
    "SchemaOutdated",
    "SchemaVersionError",
    "SettingsError",
    "StorageError",
    "StorageUnavailable",
]


class MsiloError(Exception):
    """Base class of every libmsilo error; a URL password in its message shows as ``***``."""

    def __init__(self, *args: Any) -> None:
        if args and isinstance(args[0], str):
            args = (mask_text(args[0]), *args[1:])
        super().__init__(*args)


class SettingsError(MsiloError, ValueError):
    """A setting (or template, or driver URL) is invalid; raised when settings are built."""


class InvalidRequest(MsiloError, ValueError):
    """The SIP request (or an argument derived from it) cannot be handled; nothing was stored."""


class InvalidURI(InvalidRequest):
    """A URI or name-addr does not parse; ``position`` is the offset of the offending character."""

    def __init__(self, message: str, text: str = "", position: int | None = None) -> None:
        self.text = text
        self.position = position
        where = f" at position {position}" if position is not None else ""
        shown = f" in {text!r}" if text else ""
        super().__init__(f"{message}{where}{shown}")


class InvalidSendTime(InvalidRequest):
    """A reminder time is not a valid ``YYYYMMDDHHMMSS`` string, datetime or epoch."""


class StorageError(MsiloError):
    """The storage backend failed; the original driver exception is the ``__cause__``."""


class StorageUnavailable(StorageError):
    """The storage backend cannot be reached (connection refused, timed out, closed)."""


class SchemaVersionError(StorageError):
    """The store holds another libmsilo schema version than this libmsilo uses.

    ``found`` is the store's version, ``expected`` this libmsilo's."""

    def __init__(self, message: str, found: int, expected: int) -> None:
        self.found = found
        self.expected = expected
        super().__init__(message)


class SchemaOutdated(SchemaVersionError):
    """The store's schema is older than this libmsilo's: ``msilo migrate`` upgrades it."""
