"""What every driver shares: the value checks of the contract, and one mechanism that turns a
backend's exceptions into libmsilo's errors and retries the steps a backend declares retryable.

A driver subclasses :class:`DriverBase`, declares its :class:`ErrorTable` and decorates each
storage method with :func:`storage_step`, which first checks the method's arguments as the
contract says (:func:`check_message`, :func:`check_mid`, ...), so every driver answers bad values
the same way, before its backend is asked anything (see :class:`libmsilo.drivers.base.Driver`).
"""

from __future__ import annotations

import functools
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, TypeVar

from ..errors import InvalidRequest, MsiloError, StorageError, StorageUnavailable
from ..records import (
    MAX_INT64,
    MAX_TOKEN,
    MIN_INT64,
    NewMessage,
    ReleaseResult,
    StoreTotals,
    check_ints,
    check_mid,
    check_text,
    check_token,
)
from . import batch

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "TOKEN_MAX",
    "DriverBase",
    "ErrorTable",
    "check_ints",
    "check_message",
    "check_mid",
    "check_owner",
    "check_release",
    "check_token",
    "ping",
    "storage_step",
    "totals",
]

INT64_MIN = MIN_INT64
INT64_MAX = MAX_INT64
#: The longest lease token a driver accepts (the SQL column's width).
TOKEN_MAX = MAX_TOKEN

_TEXT_FIELDS = ("src_addr", "dst_addr", "username", "domain", "ctype", "extra_hdrs", "callid")
_TIME_FIELDS = ("inc_time", "exp_time", "snd_time")

P = ParamSpec("P")
T = TypeVar("T")
D = TypeVar("D", bound="DriverBase")


def _never(_exc: BaseException) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class ErrorTable:
    """How one backend's exceptions map onto libmsilo's errors, and which steps are retried.

    ``unavailable`` become :class:`StorageUnavailable`, ``failed`` :class:`StorageError`,
    ``invalid`` (a value the backend cannot encode) :class:`InvalidRequest`; anything else is
    raised as it is. A step that fails with an exception ``retryable`` accepts runs again, up to
    ``tries`` times in all, after a short random back-off."""

    backend: str
    unavailable: tuple[type[BaseException], ...] = ()
    failed: tuple[type[BaseException], ...] = ()
    invalid: tuple[type[BaseException], ...] = (UnicodeError,)
    retryable: Callable[[BaseException], bool] = _never
    tries: int = 1

    def translate(self, exc: BaseException) -> BaseException:
        """The libmsilo error for ``exc`` (``exc`` itself when it is not the backend's)."""
        if isinstance(exc, MsiloError):
            return exc
        if isinstance(exc, self.invalid):
            return InvalidRequest(f"{self.backend} cannot store the value: {exc}")
        if isinstance(exc, self.unavailable):
            return StorageUnavailable(f"{self.backend} unavailable: {exc}")
        if isinstance(exc, self.failed):
            return StorageError(f"{self.backend} error: {exc}")
        return exc


def _pause(attempt: int) -> float:
    return random.uniform(0.001, 0.005) * float(2**attempt)


class DriverBase:
    """The plumbing of a driver: :meth:`_step` runs one storage step under its error table."""

    errors: ErrorTable = ErrorTable("storage")
    #: How a retry back-off waits (a driver on an asyncio client sleeps on its loop).
    _sleep: Callable[[float], None] = staticmethod(time.sleep)

    def _translate(self, exc: BaseException, context: object = None) -> BaseException:
        """The libmsilo error for ``exc``; ``context`` is what a driver knows of the failed step
        (the SQL driver: its connection). Drivers whose mapping needs more than the table
        override this."""
        return self.errors.translate(exc)

    def _step(self, step: Callable[[], T]) -> T:
        """Run ``step``: raise its failures as libmsilo errors (the original as ``__cause__``)
        and run it again when the error table calls the failure retryable."""
        table = self.errors
        for attempt in range(table.tries):
            try:
                return step()
            except BaseException as exc:
                error = self._translate(exc)
                # A step may translate its own failure (``raise error from exc``).
                cause = exc.__cause__ if error is exc and exc.__cause__ is not None else exc
                if attempt + 1 < table.tries and table.retryable(cause):
                    self._sleep(_pause(attempt))
                    continue
                if error is exc:
                    raise
                raise error from exc
        raise AssertionError("unreachable")  # the loop returns or raises

    def ping(self) -> None:
        """Answer when the store is usable (the default: always)."""

    def totals(self, now: int) -> StoreTotals | None:
        """The store's unexpired rows and live leases at ``now`` (for metrics); the default
        None means the driver cannot count them cheaply."""
        return None

    # The batch steps (see :mod:`.batch`); a driver overrides them with native ones.

    def insert_many(
        self, msgs: Sequence[NewMessage], max_messages: int = 0
    ) -> list[int | MsiloError | None]:
        """``insert`` for each message: its id, None (quota) or its own error."""
        return batch.insert_each(self, msgs, max_messages)

    def delete_many(self, mids: Sequence[int]) -> list[bool | MsiloError]:
        """``delete`` for each id: whether it existed, or its own error."""
        return batch.delete_each(self, mids)

    def release_many(
        self, releases: Sequence[batch.Release], max_attempts: int = 0
    ) -> list[ReleaseResult | MsiloError]:
        """``release`` for each (mid, token, to_offline): its result or its own error."""
        return batch.release_each(self, releases, max_attempts)


def ping(driver: object) -> None:
    """``driver.ping()``; a driver written before the contract had ``ping`` is read from
    instead (``get(0)``), with a :class:`DeprecationWarning`."""
    method = getattr(driver, "ping", None)
    if callable(method):
        method()
        return
    warnings.warn(
        f"{type(driver).__name__} has no ping(), which the driver contract requires",
        DeprecationWarning,
        stacklevel=2,
    )
    driver.get(0)  # type: ignore[attr-defined]


def totals(driver: object, now: int) -> StoreTotals | None:
    """``driver.totals(now)``; None for a driver without that optional step."""
    method = getattr(driver, "totals", None)
    return method(now) if callable(method) else None


def storage_step(method: Callable[Concatenate[D, P], T]) -> Callable[Concatenate[D, P], T]:
    """Decorate a driver method: its arguments are checked as the contract says (the check
    named after the method, when there is one), then it runs as one :meth:`DriverBase._step`."""
    check = _CHECKS.get(method.__name__)

    @functools.wraps(method)
    def wrapper(self: D, /, *args: P.args, **kwargs: P.kwargs) -> T:
        if check is not None:
            answer = check(*args, **kwargs)
            if answer is not _PROCEED:
                return answer  # type: ignore[return-value]
        return self._step(lambda: method(self, *args, **kwargs))

    return wrapper


# ---- value checks ---------------------------------------------------------------------------


def check_owner(username: object, domain: object) -> None:
    """Raise :class:`InvalidRequest` unless both are str that UTF-8 can encode."""
    for name, value in (("username", username), ("domain", domain)):
        if not isinstance(value, str):
            raise InvalidRequest(f"{name} must be a str, not {type(value).__name__}")
        check_text(name, value)


def check_message(msg: NewMessage) -> None:
    """Raise :class:`InvalidRequest` unless ``msg`` can be stored by every driver: text fields
    are str that UTF-8 can encode (no lone surrogates), the body is bytes, times are epoch
    seconds in ``[0, 2**63 - 1]``."""
    if _plainly_good(msg):
        return
    for name in _TEXT_FIELDS:
        value = getattr(msg, name)
        if not isinstance(value, str):
            raise InvalidRequest(f"{name} must be a str, not {type(value).__name__}")
        check_text(name, value)
    if not isinstance(msg.body, bytes | bytearray | memoryview):
        raise InvalidRequest(f"body must be bytes, not {type(msg.body).__name__}")
    check_ints(0, **{name: getattr(msg, name) for name in _TIME_FIELDS})


def _plainly_good(msg: NewMessage) -> bool:
    """The common case of :func:`check_message`, checked at once: ASCII text, a bytes body,
    int times in range (False: the detailed checks decide)."""
    inc, exp, snd = msg.inc_time, msg.exp_time, msg.snd_time
    try:
        text = "".join(
            (
                msg.src_addr,
                msg.dst_addr,
                msg.username,
                msg.domain,
                msg.ctype,
                msg.extra_hdrs,
                msg.callid,
            )
        )
    except TypeError:  # a value that is not a str
        return False
    return (
        type(inc) is int
        and type(exp) is int
        and type(snd) is int
        and type(msg.body) is bytes
        and text.isascii()
        and 0 <= inc <= MAX_INT64
        and 0 <= exp <= MAX_INT64
        and 0 <= snd <= MAX_INT64
    )


# ---- the checks of each contract method ------------------------------------------------------
# Same parameters as the method; each returns _PROCEED, or the answer for a mid no row can have.

_PROCEED = object()


def _insert(msg: NewMessage, max_messages: int = 0) -> object:
    check_message(msg)
    check_ints(max_messages=max_messages)
    return _PROCEED


def _claim(
    username: str, domain: str, now: int, lease_until: int, token: str, limit: int = 0
) -> object:
    check_owner(username, domain)
    return _claim_due_reminders(now, lease_until, token, limit)


def _claim_due_reminders(now: int, lease_until: int, token: str, limit: int = 0) -> object:
    check_ints(now=now, lease_until=lease_until, limit=limit)
    check_token(token)
    return _PROCEED


def _by_mid(missing: object) -> Callable[[int], object]:
    def check(mid: int) -> object:
        return _PROCEED if check_mid(mid) else missing

    return check


def check_release(
    mid: int, token: str | None, *, to_offline: bool = False, max_attempts: int = 0
) -> bool:
    """Raise :class:`InvalidRequest` unless :meth:`Driver.release`'s arguments are valid;
    whether some row may have id ``mid`` (else the answer is NOT_FOUND)."""
    check_token(token, optional=True)
    check_ints(max_attempts=max_attempts)
    return check_mid(mid)


def _release(
    mid: int, token: str | None, *, to_offline: bool = False, max_attempts: int = 0
) -> object:
    if check_release(mid, token, to_offline=to_offline, max_attempts=max_attempts):
        return _PROCEED
    return ReleaseResult.NOT_FOUND


def _inbox(username: str, domain: str, now: int, limit: int = 0) -> object:
    check_owner(username, domain)
    check_ints(now=now, limit=limit)
    return _PROCEED


def _purge(username: str, domain: str) -> object:
    check_owner(username, domain)
    return _PROCEED


def _delete_expired(now: int) -> object:
    check_ints(now=now)
    return _PROCEED


_CHECKS: dict[str, Callable[..., object]] = {
    "insert": _insert,
    "claim": _claim,
    "claim_due_reminders": _claim_due_reminders,
    "delete": _by_mid(False),
    "release": _release,
    "count": _inbox,
    "list": _inbox,
    "get": _by_mid(None),
    "purge": _purge,
    "delete_expired": _delete_expired,
    "totals": _delete_expired,
}
