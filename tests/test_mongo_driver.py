"""MongoDB-specific checks of the Mongo driver: documents, indexes, quota counters, errors.

Each test runs on mongomock and, when ``MSILO_TEST_MONGO_URL`` is set, on that server too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from typing import Any

import pytest
from bson.int64 import Int64
from pymongo import MongoClient
from pymongo.errors import AutoReconnect, ConnectionFailure, OperationFailure

from libmsilo.drivers import DriverOptions, ReleaseResult, StoreLayout, open_driver
from libmsilo.drivers.mongo import DEFAULT_TTL_DELAY, MongoDriver, open_mongo, open_mongomock
from libmsilo.errors import InvalidRequest, SettingsError, StorageError, StorageUnavailable
from libmsilo.testing import make_message, unique_table
from tests.backends import backend_url
from tests.helpers import Clock
from tests.schema_versions import check_version_cycle

NOW = 1_700_000_000
Factory = Callable[..., MongoDriver]

# Field names unlike the defaults, so a hard-coded name would show.
CUSTOM = {
    "mid": "id",
    "src_addr": "from_uri",
    "dst_addr": "to_uri",
    "username": "user_part",
    "domain": "host_part",
    "body": "payload",
    "ctype": "content_type",
    "exp_time": "expires",
    "inc_time": "received",
    "snd_time": "send_at",
    "lease_token": "leased_by",
    "lease_until": "leased_until",
    "attempts": "tries",
}


@pytest.fixture(params=["mongomock", "server"])
def make(request: pytest.FixtureRequest) -> Iterator[Factory]:
    """Open drivers on fresh collections of one backend; drop them afterwards."""
    opened: list[MongoDriver] = []
    url = backend_url("mongo") if request.param == "server" else None  # skips without a server

    def factory(layout: StoreLayout | None = None, **kwargs: Any) -> MongoDriver:
        layout = layout or StoreLayout(table=unique_table())
        kwargs.setdefault("ttl_delay", None)  # the tests' 2023 clock would look expired
        if url is None:
            driver = open_mongomock(unique_table("db"), layout, **kwargs)
        else:
            client: MongoClient[dict[str, Any]] = MongoClient(url, serverSelectionTimeoutMS=5000)
            database = client.get_default_database("msilo_test")
            driver = MongoDriver(database, layout, client=client, **kwargs)
        driver.create_schema()
        opened.append(driver)
        return driver

    yield factory
    for driver in opened:
        driver.drop_schema()
        driver.close()


def _table(driver: MongoDriver) -> str:
    return str(driver._names[0])


def _raw(driver: MongoDriver, suffix: str = "") -> Any:
    """A collection of the driver, read directly."""
    return driver.database[_table(driver) + suffix]


def _counter(driver: MongoDriver, user: str = "alice", domain: str = "example.com") -> int:
    """The owner's quota counter (default layout names)."""
    doc = _raw(driver, "_owners").find_one({"_id": {"username": user, "domain": domain}})
    assert doc is not None
    return int(doc["count"])


# ---- documents and indexes -------------------------------------------------------------------


def test_documents_use_the_layout_names_binary_bodies_and_int64_times(make: Factory) -> None:
    layout = StoreLayout(table=unique_table(), **CUSTOM)
    driver = make(layout)
    msg = make_message(body=b"", inc_time=2**33, exp_time=2**40, snd_time=5)
    mid = driver.insert(msg)
    assert mid is not None
    raw = _raw(driver).find_one({"_id": mid})
    assert raw is not None
    # the id column is _id; no exp_at: 2**40 s is beyond the datetime range
    assert set(raw) == {"_id", *CUSTOM.values()} - {"id"}
    assert raw["user_part"] == "alice" and raw["host_part"] == "example.com"
    assert isinstance(raw["payload"], bytes) and bytes(raw["payload"]) == b""
    assert getattr(raw["payload"], "subtype", 0) == 0  # BSON binary, generic subtype
    for field in ("received", "expires", "send_at"):
        assert isinstance(raw[field], Int64)
    assert raw["expires"] == 2**40
    stored = driver.get(mid)
    assert stored is not None and stored.body == b"" and stored.exp_time == 2**40


def test_exp_at_is_a_date_copy_of_exp_time(make: Factory) -> None:
    driver = make()
    mid = driver.insert(make_message(exp_time=NOW + 60))
    raw = _raw(driver).find_one({"_id": mid})
    assert raw is not None
    exp_at = raw["exp_at"]
    if exp_at.tzinfo is None:  # pymongo and mongomock hand back naive UTC datetimes
        exp_at = exp_at.replace(tzinfo=UTC)
    assert exp_at.timestamp() == NOW + 60


def test_indexes_include_owner_times_and_ttl(make: Factory) -> None:
    layout = StoreLayout(table=unique_table(), **CUSTOM)
    driver = make(layout, ttl_delay=DEFAULT_TTL_DELAY)
    keys = {
        tuple(k for k, _ in info["key"]): info for info in _raw(driver).index_information().values()
    }
    assert ("user_part", "host_part", "_id") in keys
    assert ("send_at",) in keys and ("expires",) in keys
    assert keys[("exp_at",)]["expireAfterSeconds"] == DEFAULT_TTL_DELAY


def test_create_schema_updates_or_removes_the_ttl_index(make: Factory) -> None:
    layout = StoreLayout(table=unique_table())
    first = make(layout, ttl_delay=600)
    real_now = int(time.time())
    mid = first.insert(make_message(inc_time=real_now, exp_time=real_now + 3600))
    # create_schema() on the same collection with another delay replaces the index
    second = MongoDriver(first.database, layout, ttl_delay=60)
    second.create_schema()
    assert _raw(second).index_information()["exp_at_1"]["expireAfterSeconds"] == 60
    MongoDriver(first.database, layout, ttl_delay=None).create_schema()
    assert "exp_at_1" not in _raw(second).index_information()
    assert mid is not None and second.get(mid) is not None  # rows are kept


@pytest.mark.parametrize(
    ("options", "delay"),
    [
        (DriverOptions(), DEFAULT_TTL_DELAY),
        (DriverOptions(ttl_delay=600), 600),
        (DriverOptions(ttl_delay=None), None),
    ],
)
def test_driver_options_set_the_ttl_delay(options: DriverOptions, delay: int | None) -> None:
    url, layout = f"mongomock://{unique_table('db')}", StoreLayout(table=unique_table())
    driver = open_driver(url, layout, options)
    assert isinstance(driver, MongoDriver)
    try:
        driver.create_schema()
        ttl = _raw(driver).index_information().get("exp_at_1")
        assert (None if ttl is None else ttl["expireAfterSeconds"]) == delay
    finally:
        driver.drop_schema()
        driver.close()


def test_schema_versions_are_recorded_and_migrated(make: Factory) -> None:
    d = make()
    counters = d.database[f"{_table(d)}_counters"]

    def record(version: int | None) -> None:
        if version is None:
            counters.delete_one({"_id": "schema"})
        else:
            counters.update_one({"_id": "schema"}, {"$set": {"version": version}})

    check_version_cycle(d, record)


def test_ttl_backstop_removes_rows_long_expired_on_the_real_clock() -> None:
    # mongomock applies TTL indexes on every read, so no waiting for a server's TTL monitor.
    driver = open_mongomock(unique_table("db"), ttl_delay=60)
    driver.create_schema()
    real_now = int(time.time())
    old = driver.insert(make_message(inc_time=real_now - 7200, exp_time=real_now - 3600))
    fresh = driver.insert(make_message(inc_time=real_now, exp_time=real_now + 3600))
    assert old is not None and fresh is not None
    assert driver.get(old) is None
    assert driver.get(fresh) is not None
    driver.close()


def test_drop_schema_removes_every_collection(make: Factory) -> None:
    driver = make()
    driver.insert(make_message(), 5)
    names = set(driver.database.list_collection_names())
    table = _table(driver)
    assert {table, f"{table}_counters", f"{table}_owners"} <= names
    driver.drop_schema()
    assert not {table, f"{table}_counters", f"{table}_owners"} & set(
        driver.database.list_collection_names()
    )


def test_id_sequence_is_reseeded_when_behind_the_rows(make: Factory) -> None:
    driver = make()
    mids = [driver.insert(make_message()) for _ in range(3)]
    driver.database.drop_collection(f"{_table(driver)}_counters")
    new = driver.insert(make_message())
    assert new is not None and all(m is not None and new > m for m in mids)
    driver.database.drop_collection(f"{_table(driver)}_counters")
    driver.create_schema()  # seeds the sequence from the highest id
    assert (driver.insert(make_message()) or 0) > new


def test_reserved_field_names_are_refused() -> None:
    with pytest.raises(SettingsError):
        open_mongomock("db", StoreLayout(exp_time="exp_at"))


# ---- owners with query metacharacters --------------------------------------------------------

HOSTILE = ["$where", '{"$gt": ""}', "a.b", "$", "$gt", "this.x == 1", ".", "a$b", "{}"]


def test_metacharacters_are_stored_and_matched_literally(make: Factory) -> None:
    driver = make()
    for user in HOSTILE:
        assert driver.insert(make_message(user=user, domain="$d.", body=user.encode()), 1)
    driver.insert(make_message(user="alice", domain="$d."))
    for user in HOSTILE:
        raw = _raw(driver).find_one({"username": user})
        assert raw is not None and raw["username"] == user
        assert driver.count(user, "$d.", NOW) == 1
        assert [r.body for r in driver.list(user, "$d.", NOW)] == [user.encode()]
        got = driver.claim(user, "$d.", NOW, NOW + 30, "tok")
        assert [r.body for r in got] == [user.encode()], user
        assert driver.insert(make_message(user=user, domain="$d."), 1) is None  # own quota
    assert driver.count("alice", "$d.", NOW) == 1
    assert driver.purge("$where", "$d.") == 1
    assert driver.count('{"$gt": ""}', "$d.", NOW) == 1


def test_non_string_owner_is_refused_before_any_query(make: Factory) -> None:
    driver = make()
    driver.insert(make_message())
    operator: Any = {"$gt": ""}
    with pytest.raises(InvalidRequest):
        driver.count(operator, "example.com", NOW)
    with pytest.raises(InvalidRequest):
        driver.purge(operator, operator)
    assert driver.count("alice", "example.com", NOW) == 1


def test_claim_takes_each_row_once_even_with_a_lease_already_over(make: Factory) -> None:
    driver = make()
    mids = [driver.insert(make_message()) for _ in range(3)]
    # lease_until == now leaves every row eligible again: the loop must still move forward
    got = driver.claim("alice", "example.com", NOW, NOW, "tok", limit=10)
    assert [r.mid for r in got] == mids
    reminders = [driver.insert(make_message(user=f"r{i}", snd_time=NOW)) for i in range(3)]
    due = driver.claim_due_reminders(NOW, NOW, "tok", limit=10)
    assert [r.mid for r in due] == reminders


# ---- quota counter ---------------------------------------------------------------------------


def test_quota_is_exact_with_8_threads(make: Factory) -> None:
    driver = make()
    results: list[int | None] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(20):
            mid = driver.insert(make_message(user="busy"), 50)
            with lock:
                results.append(mid)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert len(results) == 160
    assert len([r for r in results if r is not None]) == 50
    assert driver.count("busy", "example.com", NOW) == 50
    assert _counter(driver, "busy") == 50


def test_counter_follows_deletes_purge_release_and_expiry(make: Factory) -> None:
    driver = make()
    mids = [driver.insert(make_message(exp_time=NOW + 10 * i)) for i in range(1, 6)]
    assert _counter(driver) == 5
    assert mids[0] is not None and driver.delete(mids[0])
    assert _counter(driver) == 4
    driver.claim("alice", "example.com", NOW, NOW + 30, "t")
    assert mids[1] is not None
    driver.release(mids[1], "t", max_attempts=1)  # dropped
    assert _counter(driver) == 3
    assert driver.delete_expired(NOW + 30) == 1
    assert _counter(driver) == 2
    assert driver.purge("alice", "example.com") == 2
    assert _counter(driver) == 0


def test_expired_rows_leave_the_counter_but_stay_readable(make: Factory) -> None:
    driver = make()
    old = driver.insert(make_message(exp_time=NOW))
    driver.insert(make_message(exp_time=NOW + 60))
    assert driver.insert(make_message(inc_time=NOW), 2) is not None  # old row expired at NOW
    assert old is not None and driver.get(old) is not None  # still there until delete_expired
    assert _counter(driver) == 2
    assert driver.delete_expired(NOW) == 1
    assert _counter(driver) == 2  # the expired row was no longer counted


def test_leak_from_a_crash_between_counter_and_insert_heals_after_the_grace(
    make: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock(1_000_000.0)
    driver = make(quota_grace=60.0, wall_clock=clock)
    assert driver.insert(make_message(), 2) is not None

    def lost_connection(msg: object) -> int:
        raise AutoReconnect("connection reset")  # the row may or may not have landed

    monkeypatch.setattr(driver, "_insert_row", lost_connection)
    with pytest.raises(StorageUnavailable) as info:
        driver.insert(make_message(), 2)
    assert isinstance(info.value.__cause__, AutoReconnect)
    monkeypatch.undo()
    assert _counter(driver) == 2 and driver.count("alice", "example.com", NOW) == 1
    clock.advance(59)
    assert driver.insert(make_message(), 2) is None  # cannot yet tell a leak from an insert
    clock.advance(2)
    assert driver.insert(make_message(), 2) is not None  # re-synced to the recount
    assert _counter(driver) == 2 and driver.count("alice", "example.com", NOW) == 2


def test_refused_insert_gives_its_slot_back_at_once(
    make: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = make(quota_grace=3600.0)

    def refused(msg: object) -> int:
        raise OperationFailure("document failed validation", code=121)

    monkeypatch.setattr(driver, "_insert_row", refused)
    with pytest.raises(StorageError) as info:
        driver.insert(make_message(), 1)
    assert isinstance(info.value.__cause__, OperationFailure)
    monkeypatch.undo()
    assert _counter(driver) == 0
    assert driver.insert(make_message(), 1) is not None


def test_delete_counted_by_a_resync_is_not_given_back_twice(make: Factory) -> None:
    clock = Clock(1_000_000.0)
    driver = make(quota_grace=60.0, wall_clock=clock)
    owner = {"username": "alice", "domain": "example.com"}
    first = driver.insert(make_message())
    driver.insert(make_message())
    owners = _raw(driver, "_owners")
    owners.update_one({"_id": owner}, {"$inc": {"count": 1}})  # a leaked slot: 3 for 2 rows
    # A delete that read the epoch, removed its row, and gives the slot back only later.
    stale_epoch = owners.find_one({"_id": owner})["epoch"]
    _raw(driver).delete_one({"_id": first})
    clock.advance(61)
    assert driver.insert(make_message(), 3) is not None  # re-sync: 1 row, then this one
    assert _counter(driver) == 2
    driver._give_back(owner, stale_epoch, 1)  # the late give-back of the earlier delete
    assert _counter(driver) == 2  # not 1: the recount had already left that row out
    assert driver.count("alice", "example.com", NOW) == 2


# ---- batch steps: another writer between a batch's read and its bulk write -------------------


class _Interleaved:
    """The driver's database, running ``before`` once just ahead of the first bulk write on
    the message rows: another writer acting between a batch's read and its write."""

    def __init__(self, driver: MongoDriver, before: Callable[[], object]) -> None:
        self._database, self._table, self._before = driver._db, _table(driver), before
        driver._db = self  # type: ignore[assignment]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._database, name)

    def __getitem__(self, name: str) -> Any:
        collection = self._database[name]
        return _BeforeBulk(collection, self) if name == self._table else collection


class _BeforeBulk:
    def __init__(self, collection: Any, owner: _Interleaved) -> None:
        self._collection, self._owner = collection, owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)

    def bulk_write(self, requests: Any, ordered: bool = True) -> Any:
        before, self._owner._before = self._owner._before, lambda: None
        before()
        return self._collection.bulk_write(requests, ordered=ordered)


def test_batch_delete_of_a_row_taken_out_of_the_count_meanwhile(make: Factory) -> None:
    driver = make()
    mids = [driver.insert(make_message(body=b"%d" % i), 3) for i in range(3)]
    owner = {"username": "alice", "domain": "example.com"}

    def uncount() -> None:  # what an insert does with a row it finds expired
        _raw(driver).update_one({"_id": mids[1]}, {"$set": {"uncounted": True}})
        _raw(driver, "_owners").update_one({"_id": owner}, {"$inc": {"count": -1}})

    _Interleaved(driver, uncount)
    assert driver.delete_many(mids) == [True, True, True]
    assert _counter(driver) == 0 and driver.count("alice", "example.com", NOW) == 0


def test_batch_release_of_a_lease_taken_over_meanwhile(make: Factory) -> None:
    driver = make()
    mids = [driver.insert(make_message(user=f"u{i}")) for i in range(3)]
    for i in range(3):
        driver.claim(f"u{i}", "example.com", NOW, NOW + 60, "old")
    _Interleaved(driver, lambda: driver.claim("u1", "example.com", NOW + 61, NOW + 120, "new"))
    got = driver.release_many([(m, "old", False) for m in mids])
    assert got == [ReleaseResult.RELEASED, ReleaseResult.NOT_FOUND, ReleaseResult.RELEASED]
    taken = driver.get(mids[1] or 0)
    assert taken is not None and taken.lease_token == "new" and taken.attempts == 0


def test_batch_delete_racing_another_delete_never_lowers_the_counter(make: Factory) -> None:
    """Another writer deletes a row of the batch between its read and its write: the batch
    cannot tell which rows it deleted itself. The answers still count each row once, and the
    counters never drop below the rows they cover; a slot kept too many heals with the re-sync
    after the grace period."""
    clock = Clock(1_000_000.0)
    driver = make(quota_grace=60.0, wall_clock=clock)
    mids = [driver.insert(make_message(user=u, body=b"%d" % i), 2) for u in "ab" for i in range(2)]
    others: list[bool] = []
    _Interleaved(driver, lambda: others.append(driver.delete(mids[0] or 0)))
    got = driver.delete_many(mids)
    assert others == [True] and got.count(True) == 3 and got.count(False) == 1
    for user in "ab":
        assert driver.count(user, "example.com", NOW) == 0 <= _counter(driver, user)
    for user in "ab":
        assert driver.insert(make_message(user=user), 2) is not None
    clock.advance(61)  # no reservation for the grace period: a leaked slot is told apart
    for user in "ab":
        assert driver.insert(make_message(user=user), 2) is not None
        assert driver.insert(make_message(user=user), 2) is None
        assert _counter(driver, user) == 2 == driver.count(user, "example.com", NOW)


def test_invalid_values_are_refused_before_a_slot_is_taken(make: Factory) -> None:
    driver = make()
    driver.insert(make_message(), 1)
    driver.delete_expired(NOW + 7200)  # frees the slot; the counter document stays
    with pytest.raises(InvalidRequest):
        driver.insert(make_message(exp_time=2**63), 1)
    assert _counter(driver) == 0
    assert driver.insert(make_message(), 1) is not None


@pytest.mark.parametrize(
    "failure",
    [
        OperationFailure("document failed validation", 121),
        ValueError("an encoder's raw error"),
        UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed"),
    ],
    ids=["server_refused", "value_error", "unicode"],
)
def test_an_insert_that_fails_after_the_reservation_gives_the_slot_back(
    make: Factory, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    driver = make()
    assert driver.insert(make_message(), 1) is not None
    driver.delete_expired(NOW + 7200)  # the counter exists and is at 0

    def refuse(doc: Any) -> int:
        raise failure

    monkeypatch.setattr(driver, "_insert_row", refuse)
    with pytest.raises((StorageError, InvalidRequest)):  # libmsilo's errors only
        driver.insert(make_message(), 1)
    assert _counter(driver) == 0
    monkeypatch.undo()
    assert driver.insert(make_message(), 1) is not None


def test_a_lost_connection_during_the_insert_keeps_the_slot(
    make: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = make()
    assert driver.insert(make_message(), 1) is not None
    driver.delete_expired(NOW + 7200)

    def lost(doc: Any) -> int:
        raise AutoReconnect("connection reset")

    monkeypatch.setattr(driver, "_insert_row", lost)
    with pytest.raises(StorageUnavailable):
        driver.insert(make_message(), 1)
    assert _counter(driver) == 1  # the row may have landed: never too low


def test_counter_is_rebuilt_when_missing(make: Factory) -> None:
    driver = make()
    for _ in range(3):
        driver.insert(make_message())
    driver.database.drop_collection(f"{_table(driver)}_owners")
    assert driver.insert(make_message(), 3) is None  # recounted: the owner holds 3 already
    assert _counter(driver) == 3


# ---- URLs, options and errors ----------------------------------------------------------------


def test_open_driver_mongomock_urls() -> None:
    named = open_driver("mongomock:///inbox", StoreLayout(table="t"))
    default = open_driver("mongomock://")
    assert isinstance(named, MongoDriver) and named.database.name == "inbox"
    assert isinstance(default, MongoDriver) and default.database.name == "msilo"
    named.close()
    default.close()
    with pytest.raises(SettingsError):
        open_driver("mongomock:///bad$name")


def test_mongodb_url_names_database_and_timeouts() -> None:
    options = DriverOptions(timeout=0.25)
    driver = open_mongo("mongodb://127.0.0.1:1/inbox", StoreLayout(), options)
    client: Any = driver.database.client
    assert driver.database.name == "inbox"
    assert client.options.server_selection_timeout == 0.25
    assert client.options.pool_options.connect_timeout == 0.25
    assert client.options.pool_options.socket_timeout == 0.25
    driver.close()
    given = open_mongo("mongodb://127.0.0.1:1/?socketTimeoutMS=1234", StoreLayout(), options)
    client = given.database.client
    assert given.database.name == "msilo"
    assert client.options.pool_options.socket_timeout == 1.234  # the URL's own value wins
    given.close()


def test_bad_mongodb_url_is_a_settings_error() -> None:
    with pytest.raises(SettingsError):
        open_driver("mongodb://host:notaport/db")


def test_unreachable_server_is_storage_unavailable() -> None:
    driver = open_driver("mongodb://127.0.0.1:1/x", options=DriverOptions(timeout=0.2))
    with pytest.raises(StorageUnavailable) as info:
        driver.count("alice", "example.com", NOW)
    assert isinstance(info.value.__cause__, ConnectionFailure)
    driver.close()


def test_closed_driver_is_unusable() -> None:
    driver = open_mongomock()
    driver.create_schema()
    driver.close()
    with pytest.raises(StorageUnavailable):
        driver.insert(make_message())
    with pytest.raises(StorageUnavailable):
        driver.drop_schema()
