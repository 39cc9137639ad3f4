"""Batch steps of the driver contract: many inserts, deletes or releases in one call.

A driver may implement ``insert_many``, ``delete_many`` and ``release_many`` natively (one
transaction, one pipeline, one bulk write); :class:`~.plumbing.DriverBase` gives every built-in
driver a default that runs the single steps one by one, and the functions here do the same for a
driver that has no batch method at all. Each returns one result per item, in order: the single
step's answer, or the :class:`~libmsilo.errors.MsiloError` that item alone raised (a bad value,
a quota lock not obtained), so one bad item never fails the others. An error of the batch as a
whole (the backend out of reach) is raised, and then no item of the batch was stored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from ..errors import MsiloError
from ..records import NewMessage, ReleaseResult, check_ints, check_mid

__all__ = [
    "Release",
    "delete_checked",
    "delete_each",
    "delete_many",
    "insert_checked",
    "insert_each",
    "insert_many",
    "release_checked",
    "release_each",
    "release_many",
]

T = TypeVar("T")
P = TypeVar("P")

#: One failed delivery to end: (mid, token or None, to_offline).
Release = tuple[int, str | None, bool]


def _each(step: Callable[[T], object], items: Sequence[T]) -> list[object]:
    out: list[object] = []
    for item in items:
        try:
            out.append(step(item))
        except MsiloError as exc:
            out.append(exc)
    return out


def insert_each(
    driver: object, msgs: Sequence[NewMessage], max_messages: int = 0
) -> list[int | MsiloError | None]:
    """``driver.insert`` for each message (the default ``insert_many``)."""
    insert = driver.insert  # type: ignore[attr-defined]
    return _each(lambda m: insert(m, max_messages), msgs)  # type: ignore[return-value]


def insert_checked(
    driver: object,
    msgs: Sequence[NewMessage],
    max_messages: int,
    prepare: Callable[[NewMessage], P],
    store: Callable[[list[P]], Sequence[int | MsiloError | None]],
) -> list[int | MsiloError | None]:
    """The frame of a native ``insert_many``: each message is checked and ``prepare``d alone (a
    bad one gets its own error), the good ones go to ``store`` in one backend step, and the
    answers land in their items' places. A batch of one takes the single step."""
    from .plumbing import check_message  # plumbing imports this module for its defaults

    check_ints(max_messages=max_messages)
    if len(msgs) <= 1:
        return insert_each(driver, msgs, max_messages)
    results: list[int | MsiloError | None] = [None] * len(msgs)
    todo: list[int] = []
    prepared: list[P] = []
    for i, msg in enumerate(msgs):
        try:
            check_message(msg)
            prepared.append(prepare(msg))
            todo.append(i)
        except MsiloError as exc:
            results[i] = exc
    if todo:
        for i, result in zip(todo, store(prepared), strict=True):
            results[i] = result
    return results


def delete_each(driver: object, mids: Sequence[int]) -> list[bool | MsiloError]:
    """``driver.delete`` for each id (the default ``delete_many``)."""
    return _each(driver.delete, mids)  # type: ignore[attr-defined,return-value]


def delete_checked(
    driver: object, mids: Sequence[int], store: Callable[[list[int]], set[int]]
) -> list[bool | MsiloError]:
    """The frame of a native ``delete_many``: each id is checked alone (one that is not an int
    gets its own error; one no row can have is False), the distinct ids go to ``store`` in
    ascending order (one lock order for every batch), which deletes them in one backend step
    and returns those it deleted; the first item of a deleted id is True."""
    results: list[bool | MsiloError] = [False] * len(mids)
    wanted: set[int] = set()
    for i, mid in enumerate(mids):
        try:
            if check_mid(mid):
                wanted.add(mid)
        except MsiloError as exc:
            results[i] = exc
    if wanted:
        found = store(sorted(wanted))
        for i, mid in enumerate(mids):
            if results[i] is False and mid in found:
                results[i] = True
                found.discard(mid)  # a repeated id found it deleted already
    return results


def release_checked(
    driver: object,
    releases: Sequence[Release],
    max_attempts: int,
    store: Callable[[list[Release]], Sequence[ReleaseResult | MsiloError]],
) -> list[ReleaseResult | MsiloError]:
    """The frame of a native ``release_many``: each item is checked alone (a bad id or token
    gets its own error, an id no row can have NOT_FOUND), the first item of each id goes to
    ``store`` in one backend step, and the answers land in their items' places; an id repeated
    in the batch then runs alone, in order, so every item is answered as if the items had run
    one by one. A batch of one takes the single step."""
    from .plumbing import check_release  # plumbing imports this module for its defaults

    if len(releases) <= 1:
        return release_each(driver, releases, max_attempts)
    results: list[ReleaseResult | MsiloError] = [ReleaseResult.NOT_FOUND] * len(releases)
    todo: list[int] = []
    again: list[int] = []
    items: list[Release] = []
    seen: set[int] = set()
    for i, (mid, token, offline) in enumerate(releases):
        try:
            if not check_release(mid, token, to_offline=offline, max_attempts=max_attempts):
                continue
        except MsiloError as exc:
            results[i] = exc
            continue
        if mid in seen:
            again.append(i)
            continue
        seen.add(mid)
        todo.append(i)
        items.append((mid, token, bool(offline)))
    if items:
        for i, result in zip(todo, store(items), strict=True):
            results[i] = result
    for i in again:
        results[i] = release_each(driver, [releases[i]], max_attempts)[0]
    return results


def release_each(
    driver: object, releases: Sequence[Release], max_attempts: int = 0
) -> list[ReleaseResult | MsiloError]:
    """``driver.release`` for each failed delivery (the default ``release_many``)."""
    release = driver.release  # type: ignore[attr-defined]

    def one(item: Release) -> object:
        mid, token, offline = item
        return release(mid, token, to_offline=offline, max_attempts=max_attempts)

    return _each(one, releases)  # type: ignore[return-value]


def insert_many(
    driver: object, msgs: Sequence[NewMessage], max_messages: int = 0
) -> list[int | MsiloError | None]:
    """``driver.insert_many`` when the driver has it, else :func:`insert_each`."""
    native = getattr(driver, "insert_many", None)
    if native is None:
        return insert_each(driver, msgs, max_messages)
    return native(msgs, max_messages)  # type: ignore[no-any-return]


def delete_many(driver: object, mids: Sequence[int]) -> list[bool | MsiloError]:
    """``driver.delete_many`` when the driver has it, else :func:`delete_each`."""
    native = getattr(driver, "delete_many", None)
    if native is None:
        return delete_each(driver, mids)
    return native(mids)  # type: ignore[no-any-return]


def release_many(
    driver: object, releases: Sequence[Release], max_attempts: int = 0
) -> list[ReleaseResult | MsiloError]:
    """``driver.release_many`` when the driver has it, else :func:`release_each`."""
    native = getattr(driver, "release_many", None)
    if native is None:
        return release_each(driver, releases, max_attempts)
    return native(releases, max_attempts)  # type: ignore[no-any-return]
