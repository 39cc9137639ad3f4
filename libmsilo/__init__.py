"""libmsilo: the SIP msilo offline-message store as a sans-I/O Python library.

Hand it requests, send the :class:`OutgoingMessage` values it returns, report their replies::

    silo = Silo.from_settings(MsiloSettings())
    result = silo.store(SipRequest.parse(raw_message))
    for msg in silo.dump(SipRequest.parse(raw_register)):
        ...  # send msg, then: silo.on_reply(msg.mid, status_code)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .aio import AsyncSilo
    from .core import StoreResult, StoreStatus
    from .drivers import open_driver, register_driver
    from .drivers.base import Driver
    from .drivers.schema_version import SCHEMA_VERSION
    from .errors import (
        InvalidRequest,
        InvalidSendTime,
        InvalidURI,
        MsiloError,
        SchemaOutdated,
        SchemaVersionError,
        SettingsError,
        StorageError,
        StorageUnavailable,
    )
    from .message import MessageKind, OutgoingMessage, SipRequest
    from .migration import Migration, migrate
    from .records import DriverOptions, NewMessage, ReleaseResult, StoredMessage, StoreLayout
    from .settings import MsiloSettings, Profile
    from .silo import ReplyOutcome, Silo, Stats, TimerThread

# Imported on first use, so that ``import libmsilo.core`` (the pure core) stays free of pydantic
# and of the driver registry.
_HOMES = {
    "AsyncSilo": "aio",
    "StoreResult": "core",
    "StoreStatus": "core",
    "DriverOptions": "records",
    "open_driver": "drivers",
    "register_driver": "drivers",
    "Driver": "drivers.base",
    "SCHEMA_VERSION": "drivers.schema_version",
    "NewMessage": "records",
    "ReleaseResult": "records",
    "StoredMessage": "records",
    "StoreLayout": "records",
    "InvalidRequest": "errors",
    "InvalidSendTime": "errors",
    "InvalidURI": "errors",
    "MsiloError": "errors",
    "SchemaOutdated": "errors",
    "SchemaVersionError": "errors",
    "SettingsError": "errors",
    "StorageError": "errors",
    "StorageUnavailable": "errors",
    "MessageKind": "message",
    "OutgoingMessage": "message",
    "SipRequest": "message",
    "Migration": "migration",
    "migrate": "migration",
    "MsiloSettings": "settings",
    "Profile": "settings",
    "ReplyOutcome": "silo",
    "Silo": "silo",
    "Stats": "silo",
    "TimerThread": "silo",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'libmsilo' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"libmsilo.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION",
    "AsyncSilo",
    "Driver",
    "DriverOptions",
    "InvalidRequest",
    "InvalidSendTime",
    "InvalidURI",
    "MessageKind",
    "Migration",
    "MsiloError",
    "MsiloSettings",
    "NewMessage",
    "OutgoingMessage",
    "Profile",
    "ReleaseResult",
    "ReplyOutcome",
    "SchemaOutdated",
    "SchemaVersionError",
    "SettingsError",
    "Silo",
    "SipRequest",
    "Stats",
    "StorageError",
    "StorageUnavailable",
    "StoreLayout",
    "StoreResult",
    "StoreStatus",
    "StoredMessage",
    "TimerThread",
    "migrate",
    "open_driver",
    "register_driver",
]
