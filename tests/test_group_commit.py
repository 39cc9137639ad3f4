"""Group commit and the batch APIs: concurrent stores and acks share batches, and each caller
still gets exactly its own result or error; the quota stays exact, every message is delivered
once. The Silo tests run on every backend (the ``backend`` fixture)."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from libmsilo import AsyncSilo, ReplyOutcome, StoreResult
from libmsilo.errors import InvalidRequest, MsiloError, StorageUnavailable
from libmsilo.group_commit import AsyncGroupCommit, GroupCommit
from tests.helpers import Clock, make_silo, message, run_threads

pytestmark = pytest.mark.usefixtures("backend")

THREADS = 32


# ---- the batcher itself --------------------------------------------------------------------


def _wait_for(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_a_lone_caller_flushes_at_once_alone() -> None:
    seen: list[list[int]] = []
    group: GroupCommit[int, int] = GroupCommit(lambda items: seen.append(list(items)) or items)
    assert [group.submit(i) for i in range(3)] == [0, 1, 2]
    assert seen == [[0], [1], [2]]


def test_callers_arriving_during_a_flush_share_the_next_batch() -> None:
    release = threading.Event()
    seen: list[list[int]] = []

    def flush(items: Sequence[int]) -> list[int]:
        if not seen:
            release.wait(30)  # the first flush holds until the others queued
        seen.append(list(items))
        return [i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(flush, max_batch=8)
    results: dict[int, int] = {}
    first = threading.Thread(target=lambda: results.__setitem__(0, group.submit(0)))
    first.start()
    _wait_for(lambda: group._running == 1)
    others = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, group.submit(i)))
        for i in range(1, 11)
    ]
    for t in others:
        t.start()
    _wait_for(lambda: len(group._queue) == 10)
    release.set()
    for t in [first, *others]:
        t.join(30)
    assert results == {i: i * 10 for i in range(11)}
    assert seen[0] == [0]
    assert sorted(len(b) for b in seen[1:]) == [2, 8]  # at most max_batch per flush
    assert sorted(i for b in seen for i in b) == list(range(11))


def test_each_caller_gets_its_own_error() -> None:
    def flush(items: Sequence[int]) -> list[int | BaseException]:
        return [InvalidRequest(f"odd {i}") if i % 2 else i for i in items]

    group: GroupCommit[int, int] = GroupCommit(flush)
    outcomes: dict[int, object] = {}

    def work(i: int) -> None:
        try:
            outcomes[i] = group.submit(i)
        except InvalidRequest as exc:
            outcomes[i] = str(exc)

    run_threads(work, THREADS)
    assert outcomes == {i: f"odd {i}" if i % 2 else i for i in range(THREADS)}


def test_a_failed_flush_fails_its_batch_only() -> None:
    calls = Counter[str]()

    def flush(items: Sequence[int]) -> list[int]:
        calls["flush"] += 1
        if calls["flush"] == 1:
            raise StorageUnavailable("down")
        return list(items)

    group: GroupCommit[int, int] = GroupCommit(flush)
    with pytest.raises(StorageUnavailable):
        group.submit(1)
    assert group.submit(2) == 2


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        GroupCommit(list, max_batch=0)


# ---- Silo: concurrent stores and acks --------------------------------------------------------


def test_threads_storing_keep_the_quota_exact_and_get_their_own_errors() -> None:
    silo = make_silo(max_messages=40)
    results: list[StoreResult] = []
    refused: list[MsiloError] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        for n in range(4):
            if i % 8 == 0 and n == 1:
                # An owner no backend can hold, in the middle of the others' batches.
                with pytest.raises(InvalidRequest) as caught:
                    silo.store(message(to=f"sip:{'x' * 300}@example.com"))
                with lock:
                    refused.append(caught.value)
                continue
            result = silo.store(message(body=b"%d-%d" % (i, n)))
            with lock:
                results.append(result)

    run_threads(work, THREADS)
    stored = [r for r in results if r.stored]
    assert len(stored) == 40
    assert len({r.mid for r in stored}) == 40
    assert len(refused) == THREADS // 8
    assert silo.count("sip:alice@example.com") == 40
    assert silo.stats.stored_messages == 40


def test_threads_acking_deliver_each_message_once() -> None:
    silo = make_silo()
    owners = [f"sip:u{i}@example.com" for i in range(8)]
    for owner in owners:
        for n in range(6):
            assert silo.store(message(to=owner, body=b"%d" % n), notify=False).stored
    dumped = {owner: silo.dump(owner=owner) for owner in owners}
    outcomes: list[ReplyOutcome] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        # Four threads per owner answer every one of its messages: one 200 wins each.
        for msg in dumped[owners[i % 8]]:
            outcome = silo.on_reply(msg.mid, 200, token=msg.lease_token)
            with lock:
                outcomes.append(outcome)

    run_threads(work, THREADS)
    counts = Counter(outcomes)
    assert counts[ReplyOutcome.DELIVERED] == 48
    assert counts[ReplyOutcome.IGNORED] == 3 * 48
    assert silo.stats.dumped_messages == 48
    assert all(silo.count(owner) == 0 for owner in owners)


def test_threads_failing_sends_release_each_once() -> None:
    silo = make_silo()
    for n in range(THREADS):
        silo.store(message(body=b"%d" % n), notify=False)
    msgs = silo.dump(owner="sip:alice@example.com")
    assert len(msgs) == THREADS
    outcomes: list[ReplyOutcome] = []
    run_threads(lambda i: outcomes.append(silo.send_failed(msgs[i])), THREADS)
    assert outcomes == [ReplyOutcome.RETRY] * THREADS
    assert silo.stats.failed_messages == THREADS
    assert len(silo.dump(owner="sip:alice@example.com")) == THREADS  # all released


def test_group_commit_off_stores_one_by_one() -> None:
    silo = make_silo(group_commit=False, max_messages=5)
    run_threads(lambda i: [silo.store(message()) for _ in range(2)], 8)
    assert silo.count("sip:alice@example.com") == 5
    assert silo._inserts.batches == 0


# ---- batch APIs ------------------------------------------------------------------------------


def test_store_many_gives_one_result_per_request() -> None:
    silo = make_silo(max_messages=3)
    requests = [
        message(body=b"a"),
        message(to="sip:bob@example.com"),
        message(to="sip:example.com"),  # no owner
        message(body=b"b"),
        message(body=b"c"),
        message(body=b"d"),
    ]
    got = silo.store_many(requests)
    assert isinstance(got[2], InvalidRequest)
    statuses = [r.stored if isinstance(r, StoreResult) else None for r in got]
    assert statuses == [True, True, None, True, True, False]
    assert silo.count("sip:alice@example.com") == 3  # the 486, the unanswered, the 180
    assert silo.count("sip:bob@example.com") == 1
    assert silo.stats.stored_messages == 4
    assert silo.store_many([]) == []


def test_on_replies_settles_each_reply() -> None:
    clock = Clock()
    silo = make_silo(clock)
    for n in range(4):
        silo.store(message(body=b"%d" % n), notify=False)
    msgs = silo.dump(owner="sip:alice@example.com")
    replies: list[tuple[int, int, str | None]] = [
        (msgs[0].mid, 200, msgs[0].lease_token),
        (msgs[1].mid, 486, msgs[1].lease_token),
        (msgs[2].mid + 10**6, 200, None),  # no such message
        (msgs[3].mid, 180, msgs[3].lease_token),
        ("x", 200, None),  # type: ignore[list-item]
        (msgs[0].mid, 200, msgs[0].lease_token),
    ]
    got = silo.on_replies(replies)
    assert got[:4] == [
        ReplyOutcome.DELIVERED,
        ReplyOutcome.RETRY,
        ReplyOutcome.IGNORED,
        ReplyOutcome.PENDING,
    ]
    assert isinstance(got[4], InvalidRequest)
    assert got[5] is ReplyOutcome.IGNORED
    assert silo.stats.dumped_messages == 1 and silo.stats.failed_messages == 1
    assert silo.count("sip:alice@example.com") == 3  # the 486, the unanswered, the 180


def test_async_batch_apis_and_concurrent_tasks() -> None:
    silo = AsyncSilo(make_silo(max_messages=10))

    async def main() -> None:
        got = await silo.store_many([message(body=b"%d" % n) for n in range(3)])
        assert all(isinstance(r, StoreResult) and r.stored for r in got)
        results = await asyncio.gather(*(silo.store(message()) for _ in range(20)))
        assert sum(r.stored for r in results) == 7
        msgs = await silo.dump(owner="sip:alice@example.com")
        outcomes = await silo.on_replies([(m.mid, 200, m.lease_token) for m in msgs])
        assert outcomes == [ReplyOutcome.DELIVERED] * 10
        assert await silo.count("sip:alice@example.com") == 0

    asyncio.run(main())


def test_asyncio_tasks_share_batches_with_their_own_results() -> None:
    silo = AsyncSilo(make_silo(max_messages=30))

    async def main() -> None:
        bad = message(to=f"sip:{'x' * 300}@example.com")
        requests = [bad if n % 10 == 3 else message(body=b"%d" % n) for n in range(60)]
        got = await asyncio.gather(*(silo.store(r) for r in requests), return_exceptions=True)
        refused = [g for g in got if isinstance(g, BaseException)]
        assert len(refused) == 6 and all(isinstance(g, InvalidRequest) for g in refused)
        stored = [g for g in got if isinstance(g, StoreResult) and g.stored]
        assert len(stored) == 30 and len({g.mid for g in stored}) == 30
        assert silo._inserts.batches < silo._inserts.items == 54  # tasks shared batches
        msgs = await silo.dump(owner="sip:alice@example.com")
        half = len(msgs) // 2
        acks = [silo.on_reply(m.mid, 200, token=m.lease_token) for m in msgs[:half]]
        acks += [silo.on_reply(m.mid, 200, token=m.lease_token) for m in msgs[:half]]
        fails = [silo.send_failed(m) for m in msgs[half:]]
        outcomes = Counter(await asyncio.gather(*acks, *fails))
        assert outcomes == {
            ReplyOutcome.DELIVERED: 15,
            ReplyOutcome.IGNORED: 15,
            ReplyOutcome.RETRY: 15,
        }
        assert await silo.count("sip:alice@example.com") == 15

    asyncio.run(main())


def test_async_group_commit_fails_a_batch_whose_flush_raises() -> None:
    def flush(items: Sequence[int]) -> list[int]:
        if 13 in items:
            raise StorageUnavailable("down")
        return [i * 2 for i in items]

    async def main() -> None:
        group: AsyncGroupCommit[int, int] = AsyncGroupCommit(flush)
        assert await group.submit(4) == 8
        with pytest.raises(StorageUnavailable):
            await group.submit(13)
        assert await asyncio.gather(*(group.submit(i) for i in range(5))) == [0, 2, 4, 6, 8]

    asyncio.run(main())


def _submit_in_child(commit: GroupCommit[int, int], results: Any) -> None:
    results.put(commit.submit(7))


def test_a_child_forked_during_a_flush_flushes_its_own_items() -> None:
    # A parent thread is inside a flush when another forks: the child has no such thread, so
    # the flush it inherited as running must not make its own callers wait for ever.
    entered, release = threading.Event(), threading.Event()

    def flush(items: Sequence[int]) -> list[int]:
        if items == [1]:
            entered.set()
            release.wait(60)
        return [i * 10 for i in items]

    commit: GroupCommit[int, int] = GroupCommit(flush)
    busy = threading.Thread(target=commit.submit, args=(1,))
    busy.start()
    assert entered.wait(60)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_submit_in_child, args=(commit, results))
    child.start()
    try:
        assert results.get(timeout=60) == 70
    finally:
        release.set()
        busy.join(60)
        child.join(60)
        if child.is_alive():
            child.kill()
            child.join()
    assert child.exitcode == 0
    assert commit.submit(2) == 20  # the parent goes on as before


def test_async_silo_never_calls_the_driver_on_the_event_loop() -> None:
    silo = make_silo()
    driver = silo.driver
    on_loop: list[str] = []
    loop_thread: list[int] = []
    names = ("insert", "insert_many", "delete", "delete_many", "release", "release_many", "get")
    names += ("claim", "count")
    for name in names:
        method = getattr(driver, name, None)
        if method is None:
            continue

        def watched(*args: object, _method: Any = method, _name: str = name, **kw: object) -> Any:
            if loop_thread and threading.get_ident() == loop_thread[0]:
                on_loop.append(_name)
            return _method(*args, **kw)

        setattr(driver, name, watched)
    aio = AsyncSilo(silo)

    async def main() -> None:
        loop_thread.append(threading.get_ident())
        await asyncio.gather(*(aio.store(message(body=b"%d" % n)) for n in range(20)))
        await aio.store_many([message(), message()])
        msgs = await aio.dump(owner="sip:alice@example.com")
        await asyncio.gather(
            *(aio.on_reply(m.mid, 200, token=m.lease_token) for m in msgs[:10]),
            *(aio.send_failed(m) for m in msgs[10:]),
            aio.on_reply(msgs[0].mid, 486),  # no token: a lookup of the row
        )
        assert await aio.count("sip:alice@example.com") == 12

    asyncio.run(main())
    assert on_loop == []
