"""AsyncSilo: the same behaviour, awaited, with storage off the event loop."""

from __future__ import annotations

import asyncio
import inspect
import threading
from pathlib import Path

from libmsilo import AsyncSilo, MessageKind, OutgoingMessage, ReplyOutcome, Silo
from libmsilo.drivers.memory import MemoryDriver
from tests.helpers import T0, Clock, message, register, settings


def test_store_dump_reply_on_sqlite(tmp_path: Path) -> None:
    async def scenario() -> None:
        silo = await AsyncSilo.from_settings(
            settings(db_url=f"sqlite:///{tmp_path / 'a.db'}"), clock=Clock(T0)
        )
        async with silo:
            result = await silo.store(message(body=b"hi"))
            assert result.stored and await silo.count("sip:alice@example.com") == 1
            [out] = await silo.dump(register())
            assert out.mid == result.mid and out.body.endswith(b"] hi")
            assert await silo.on_reply(out.mid, 200) is ReplyOutcome.DELIVERED
            assert await silo.get(out.mid) is None
            assert silo.stats.dumped_messages == 1

    asyncio.run(scenario())


def test_storage_runs_off_the_event_loop() -> None:
    loop_threads: set[int] = set()
    driver_threads: set[int] = set()

    class Watched(MemoryDriver):
        def insert(self, msg, max_messages=0):  # type: ignore[no-untyped-def]
            driver_threads.add(threading.get_ident())
            return super().insert(msg, max_messages)

    async def scenario() -> None:
        loop_threads.add(threading.get_ident())
        silo = AsyncSilo(Silo(Watched(), settings()))
        await silo.store(message())

    asyncio.run(scenario())
    assert driver_threads and not driver_threads & loop_threads


def _reminding(clock: Clock) -> AsyncSilo:
    """An AsyncSilo on memory whose reminder sweep runs every second."""
    return AsyncSilo(
        Silo(MemoryDriver(), settings(reminder="sip:r@example.com", send_time=1), clock=clock)
    )


def test_run_forever_sends_reminders_and_reports_send_failures() -> None:
    clock = Clock(T0)
    silo = _reminding(clock)
    sent: list[OutgoingMessage] = []

    async def send(msg: OutgoingMessage) -> None:
        sent.append(msg)
        raise OSError("no route")

    async def scenario() -> None:
        mid = (await silo.store(message(), send_at=T0)).mid
        task = asyncio.create_task(silo.run_forever(send, poll=0.01))
        for _ in range(500):  # until the failed send has been handed back
            if silo.stats.failed_reminders:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        assert [m.kind for m in sent] == [MessageKind.REMINDER]
        row = await silo.get(mid)
        assert row is not None and row.snd_time == 0 and row.lease_token is None
        assert silo.stats.failed_reminders == 1

    asyncio.run(scenario())


# ---- the same API (issue 9.11)


def _public(cls: type) -> dict[str, object]:
    return {n: getattr(cls, n) for n in dir(cls) if not n.startswith("_")}


def _parameters(fn: object) -> list[tuple[str, object, object]]:
    """Names, kinds and defaults of a callable's parameters (not their annotations, which
    differ where a callback is awaited)."""
    func = fn.__func__ if isinstance(fn, classmethod | staticmethod) else fn
    sig = inspect.signature(func)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


def test_async_silo_has_every_public_silo_member_with_the_same_parameters() -> None:
    sync, aio = _public(Silo), _public(AsyncSilo)
    # Only AsyncSilo chooses between a native asyncio driver and worker threads.
    extra = {"from_settings": [("native", inspect.Parameter.KEYWORD_ONLY, None)]}
    assert set(sync) <= set(aio), f"AsyncSilo lacks {sorted(set(sync) - set(aio))}"
    for name, member in sync.items():
        other = aio[name]
        if isinstance(member, property):
            assert isinstance(other, property), name
            continue
        assert callable(other), name
        assert _parameters(member) == _parameters(other)[: len(_parameters(member))], name
        assert _parameters(other)[len(_parameters(member)) :] == extra.get(name, []), name
        if name != "start":  # start only creates a task: it returns its handle at once
            raw = inspect.getattr_static(AsyncSilo, name)
            func = raw.__func__ if isinstance(raw, classmethod) else raw
            assert inspect.iscoroutinefunction(func), f"AsyncSilo.{name} is not a coroutine"
    instance_attributes = {"driver", "policy", "settings"}  # set in Silo.__init__
    assert instance_attributes <= set(aio)


def test_the_parity_check_sees_a_missing_method() -> None:
    class Lacking(AsyncSilo):
        send_failed = None  # type: ignore[assignment]

    assert "send_failed" in _public(Silo)
    assert not callable(_public(Lacking)["send_failed"])


def test_send_failed_and_start_stop() -> None:
    clock = Clock(T0)
    silo = _reminding(clock)
    sent: list[OutgoingMessage] = []
    got = asyncio.Event()

    async def send(msg: OutgoingMessage) -> None:
        sent.append(msg)
        got.set()

    async def scenario() -> None:
        mid = (await silo.store(message(), send_at=T0)).mid
        timers = silo.start(send, poll=3600)
        await asyncio.wait_for(got.wait(), 10)
        await timers.stop()
        assert timers.done()
        [msg] = sent
        assert msg.mid == mid
        assert await silo.send_failed(msg) is ReplyOutcome.RETRY
        row = await silo.get(mid)
        assert row is not None and row.lease_token is None and row.snd_time == 0

    asyncio.run(scenario())


def test_async_timer_loop_sleeps_until_the_next_timer_not_poll() -> None:
    # The reminder sweep is due every second: with poll=3600 the loop must still wake for it.
    clock = Clock(T0)
    silo = _reminding(clock)
    sent: list[OutgoingMessage] = []

    async def send(msg: OutgoingMessage) -> None:
        sent.append(msg)

    async def scenario() -> None:
        await silo.store(message(), send_at=T0 + 1)
        timers = silo.start(send, poll=3600)
        for _ in range(100):  # the first sweep (at T0) finds nothing due yet
            if silo.silo._schedule.next_reminders is not None:
                break
            await asyncio.sleep(0.01)
        clock.advance(1)
        for _ in range(1000):
            if sent:
                break
            await asyncio.sleep(0.01)
        await timers.stop()
        assert [m.kind for m in sent] == [MessageKind.REMINDER]

    asyncio.run(scenario())
