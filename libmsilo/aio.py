"""``AsyncSilo``: the ``Silo`` API for asyncio hosts.

Storage calls block on the database, so each runs in a worker thread (``asyncio.to_thread``) and
the event loop keeps serving SIP traffic meanwhile. The decisions are the same code as ``Silo``'s:
this facade only changes how the calls are awaited.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from types import TracebackType

from .core import StoreResult
from .errors import MsiloError
from .message import OutgoingMessage, SipRequest
from .records import StoredMessage
from .settings import MsiloSettings
from .silo import Clock, ReplyOutcome, Silo, Stats

__all__ = ["AsyncSilo"]

log = logging.getLogger("libmsilo")

AsyncSender = Callable[[OutgoingMessage], Awaitable[None]]


class AsyncSilo:
    """msilo for asyncio: every :class:`Silo` operation as a coroutine."""

    def __init__(self, silo: Silo) -> None:
        self.silo = silo

    @classmethod
    async def from_settings(
        cls,
        settings: MsiloSettings | None = None,
        *,
        clock: Clock = time.time,
        create_schema: bool = True,
    ) -> AsyncSilo:
        """Open the store ``settings.db_url`` names, off the event loop."""
        silo = await asyncio.to_thread(
            Silo.from_settings, settings, clock=clock, create_schema=create_schema
        )
        return cls(silo)

    @property
    def settings(self) -> MsiloSettings:
        """The settings of the wrapped ``Silo``."""
        return self.silo.settings

    @property
    def stats(self) -> Stats:
        """A snapshot of the counters (no I/O)."""
        return self.silo.stats

    async def store(
        self,
        request: SipRequest,
        owner: str | None = None,
        *,
        notify: bool = True,
        send_at: datetime | int | float | str | None = None,
    ) -> StoreResult:
        """:meth:`Silo.store`."""
        return await asyncio.to_thread(
            self.silo.store, request, owner, notify=notify, send_at=send_at
        )

    async def dump(
        self,
        request: SipRequest | None = None,
        owner: str | None = None,
        *,
        max_messages: int = 0,
        contact: str | None = None,
    ) -> list[OutgoingMessage]:
        """:meth:`Silo.dump`."""
        return await asyncio.to_thread(
            self.silo.dump, request, owner, max_messages=max_messages, contact=contact
        )

    async def on_reply(
        self, mid: int, status_code: int, *, token: str | None = None
    ) -> ReplyOutcome:
        """:meth:`Silo.on_reply`."""
        return await asyncio.to_thread(self.silo.on_reply, mid, status_code, token=token)

    async def tick(self, now: float | None = None) -> list[OutgoingMessage]:
        """:meth:`Silo.tick`."""
        return await asyncio.to_thread(self.silo.tick, now)

    async def run_forever(self, send: AsyncSender, *, poll: float = 1.0) -> None:
        """Tick until cancelled, awaiting ``send`` for each due reminder; a ``send`` that raises
        counts as a failed delivery, a storage error is logged and the loop goes on."""
        while True:
            try:
                for msg in await self.tick():
                    try:
                        await send(msg)
                    except Exception:
                        log.exception("sending message %s failed", msg.mid)
                        await asyncio.to_thread(self.silo.send_failed, msg)
            except MsiloError:
                log.exception("timer tick failed")
            await asyncio.sleep(poll)

    async def count(self, aor: str) -> int:
        """:meth:`Silo.count`."""
        return await asyncio.to_thread(self.silo.count, aor)

    async def list(self, aor: str, limit: int = 100) -> list[StoredMessage]:
        """:meth:`Silo.list`."""
        return await asyncio.to_thread(self.silo.list, aor, limit)

    async def get(self, mid: int) -> StoredMessage | None:
        """:meth:`Silo.get`."""
        return await asyncio.to_thread(self.silo.get, mid)

    async def delete(self, mid: int) -> bool:
        """:meth:`Silo.delete`."""
        return await asyncio.to_thread(self.silo.delete, mid)

    async def purge(self, aor: str) -> int:
        """:meth:`Silo.purge`."""
        return await asyncio.to_thread(self.silo.purge, aor)

    async def purge_expired(self, now: float | None = None) -> int:
        """:meth:`Silo.purge_expired`."""
        return await asyncio.to_thread(self.silo.purge_expired, now)

    async def close(self) -> None:
        """Close the driver."""
        await asyncio.to_thread(self.silo.close)

    async def __aenter__(self) -> AsyncSilo:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
