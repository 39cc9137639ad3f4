"""An asyncio look-alike of pymongo's ``AsyncMongoClient`` on mongomock, so that the native
Mongo driver's bridge code runs without a MongoDB server: every method is a coroutine and
``find`` gives an async cursor, as in pymongo's asyncio API, so a call the driver's facade
did not await fails the step. It checks that the facade covers every call and cursor form of
the driver's steps, not how a real server or pymongo's asyncio client behave: that is tested
only when ``MSILO_TEST_MONGO_URL`` names a server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from libmsilo.drivers import DriverOptions, StoreLayout
from libmsilo.drivers.aio import BridgedDriver
from libmsilo.drivers.mongo import mongo_on_asyncio, open_mongomock
from libmsilo.testing import unique_table


class FakeAsync:
    """A mongomock object (client, database, collection) with coroutine methods; each call
    first yields to the loop, as a network round trip would."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getitem__(self, name: str) -> FakeAsync:
        return FakeAsync(self._target[name])

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._target, name)
        if name == "find":
            return lambda *args, **kwargs: FakeCursor(method(*args, **kwargs))

        async def call(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0)
            return method(*args, **kwargs)

        return call


class FakeClient(FakeAsync):
    """A mongomock client with ``aclose`` (as ``AsyncMongoClient`` has; mongomock's client
    would give a database for any unknown attribute name)."""

    async def aclose(self) -> None:
        await asyncio.sleep(0)
        self._target.close()


class FakeCursor:
    """An async cursor over documents (like pymongo's ``AsyncCursor``: an async iterator and
    an async context manager)."""

    def __init__(self, docs: Iterable[Any]) -> None:
        self._docs: Iterator[Any] = iter(docs)

    def __aiter__(self) -> FakeCursor:
        return self

    async def __anext__(self) -> Any:
        await asyncio.sleep(0)
        try:
            return next(self._docs)
        except StopIteration:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> FakeCursor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


def fake_native_mongo(layout: StoreLayout | None = None, **kwargs: Any) -> BridgedDriver:
    """The native Mongo driver on a new, empty fake asyncio client; ``kwargs`` go to
    :class:`~libmsilo.drivers.mongo.MongoDriver`."""
    sync = open_mongomock(unique_table("db"), layout)  # its serialized mongomock database
    client = FakeClient(sync._client)
    return mongo_on_asyncio(FakeAsync(sync.database), layout, client=client, **kwargs)


async def open_fake_mongo_async(
    url: str, layout: StoreLayout, options: DriverOptions
) -> BridgedDriver:
    """:func:`~libmsilo.drivers.mongo.open_mongo_async` on the fake client (``url`` unused)."""
    return fake_native_mongo(layout, timeout=options.timeout, ttl_delay=options.ttl_delay)
