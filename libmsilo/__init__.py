"""libmsilo: the SIP msilo offline-message store as a sans-I/O Python library.

Hand it requests, send the :class:`OutgoingMessage` values it returns, report their replies::

    silo = Silo.from_settings(MsiloSettings())
    result = silo.store(SipRequest.parse(raw_message))
    for msg in silo.dump(SipRequest.parse(raw_register)):
        ...  # send msg, then: silo.on_reply(msg.mid, status_code)
"""

from .aio import AsyncSilo
from .core import StoreResult, StoreStatus
from .drivers import DriverOptions, open_driver, register_driver
from .drivers.base import Driver, NewMessage, ReleaseResult, StoredMessage, StoreLayout
from .errors import (
    InvalidRequest,
    InvalidSendTime,
    InvalidURI,
    MsiloError,
    SettingsError,
    StorageError,
    StorageUnavailable,
)
from .message import MessageKind, OutgoingMessage, SipRequest
from .settings import MsiloSettings, Profile
from .silo import ReplyOutcome, Silo, Stats, TimerThread

__version__ = "0.1.0"

__all__ = [
    "AsyncSilo",
    "Driver",
    "DriverOptions",
    "InvalidRequest",
    "InvalidSendTime",
    "InvalidURI",
    "MessageKind",
    "MsiloError",
    "MsiloSettings",
    "NewMessage",
    "OutgoingMessage",
    "Profile",
    "ReleaseResult",
    "ReplyOutcome",
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
    "open_driver",
    "register_driver",
]
