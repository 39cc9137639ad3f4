"""Assertions for policy tests, with failure messages that show what the store holds."""

from __future__ import annotations

from collections.abc import Sequence

from ..aio import AsyncSilo
from ..core import StoreResult
from ..core.owner import parse_uri_argument
from ..drivers.base import StoredMessage
from ..errors import InvalidURI
from ..message import MessageKind, OutgoingMessage
from ..silo import Silo

__all__ = ["assert_no_notice", "assert_notice", "assert_stored"]

Body = str | bytes


def _bytes(body: Body) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


def _show(rows: Sequence[StoredMessage]) -> str:
    if not rows:
        return "nothing is stored"
    shown = ", ".join(f"#{r.mid} {r.body[:40]!r}" for r in rows[:10])
    more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
    return f"stored: {shown}{more}"


def assert_stored(
    silo: Silo | AsyncSilo,
    aor: str,
    count: int | None = None,
    body: Body | Sequence[Body] | None = None,
) -> list[StoredMessage]:
    """Check the unexpired messages stored for ``aor`` (at the Silo's clock) and return them.

    ``count``: how many there are. ``body``: one str/bytes that one of them must have, or a
    sequence of the bodies all of them have, in the order they were stored.
    """
    sync = silo.silo if isinstance(silo, AsyncSilo) else silo
    rows = sync.list(aor, limit=0)
    if count is not None and len(rows) != count:
        found = f"found {len(rows)}; {_show(rows)}"
        raise AssertionError(f"{aor}: expected {count} stored messages, {found}")
    if isinstance(body, str | bytes):
        wanted = _bytes(body)
        if all(r.body != wanted for r in rows):
            raise AssertionError(f"{aor}: no stored message has the body {wanted!r}; {_show(rows)}")
    elif body is not None:
        bodies = [_bytes(b) for b in body]
        if [r.body for r in rows] != bodies:
            raise AssertionError(f"{aor}: expected the bodies {bodies!r}; {_show(rows)}")
    return rows


def _same_uri(a: str, b: str) -> bool:
    try:
        return str(parse_uri_argument(a)) == str(parse_uri_argument(b))
    except InvalidURI:
        return a.strip() == b.strip()


def _notice_of(result: StoreResult | OutgoingMessage | None) -> OutgoingMessage | None:
    return result.notice if isinstance(result, StoreResult) else result


def assert_notice(
    result: StoreResult | OutgoingMessage | None,
    to: str | None = None,
    contains: Body | None = None,
) -> OutgoingMessage:
    """Check that a store produced an offline notice and return it.

    ``to``: the sender it goes to (its To URI or its Request-URI, i.e. the sender's contact).
    ``contains``: text the notice body holds.
    """
    notice = _notice_of(result)
    if notice is None:
        status = result.status.value if isinstance(result, StoreResult) else "no result"
        raise AssertionError(f"expected an offline notice, got none (store status: {status})")
    if notice.kind is not MessageKind.NOTICE:
        raise AssertionError(f"expected an offline notice, got a {notice.kind.value} message")
    if to is not None and not (_same_uri(to, notice.to_uri) or _same_uri(to, notice.ruri)):
        raise AssertionError(
            f"the notice goes to {notice.to_uri} (Request-URI {notice.ruri}), not to {to}"
        )
    if contains is not None and _bytes(contains) not in notice.body:
        raise AssertionError(f"the notice body {notice.body!r} does not contain {contains!r}")
    return notice


def assert_no_notice(result: StoreResult | OutgoingMessage | None) -> None:
    """Check that a store produced no offline notice."""
    notice = _notice_of(result)
    if notice is not None:
        got = f"got one to {notice.ruri}: {notice.body!r}"
        raise AssertionError(f"expected no offline notice, {got}")
