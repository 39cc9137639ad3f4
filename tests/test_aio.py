"""AsyncSilo: the same behaviour, awaited, with storage off the event loop."""

from __future__ import annotations

import asyncio
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


def test_run_forever_sends_reminders_and_reports_send_failures() -> None:
    clock = Clock(T0)
    silo = AsyncSilo(
        Silo(MemoryDriver(), settings(reminder="sip:r@example.com", send_time=1), clock=clock)
    )
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
