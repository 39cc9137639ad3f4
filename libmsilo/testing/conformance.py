"""The driver conformance suite: every storage driver must pass all of it unchanged.

Besides the behaviour of each method it checks the contract's boundaries and error paths (see
:class:`libmsilo.drivers.base.Driver`): int64 times, lease token lengths, message ids of every
kind, values of the wrong type or that UTF-8 cannot encode (``InvalidRequest``, nothing stored,
no quota slot taken), that only libmsilo errors leave a driver, and ``ping()``. A driver built
on :class:`libmsilo.drivers.plumbing.DriverBase` gets the argument checks from ``storage_step``.

Subclass :class:`DriverConformance` in a pytest module and provide a fixture named ``driver`` that
yields a fresh, empty driver with ``create_schema()`` done (and cleans up afterwards)::

    class TestMyDriver(DriverConformance):
        @pytest.fixture
        def driver(self):
            d = open_driver("mine://...", StoreLayout(table=unique_table()))
            d.create_schema()
            yield d
            d.drop_schema()
            d.close()
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import pytest

from ..drivers import batch
from ..drivers.base import Driver, NewMessage, ReleaseResult, StoredMessage
from ..drivers.plumbing import totals
from ..errors import InvalidRequest, MsiloError

__all__ = ["DriverConformance", "make_message", "unique_table"]

NOW = 1_700_000_000
HOUR = 3600
INT64_MAX = 2**63 - 1


def unique_table(prefix: str = "silo_t") -> str:
    """A table / collection / key-prefix name no other test uses."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def make_message(
    user: str = "alice",
    domain: str = "example.com",
    body: bytes = b"hello",
    *,
    inc_time: int = NOW,
    exp_time: int = NOW + HOUR,
    snd_time: int = 0,
    ctype: str = "text/plain",
    extra_hdrs: str = "",
    callid: str = "",
) -> NewMessage:
    """A message for ``user@domain`` with test defaults."""
    return NewMessage(
        src_addr=f"sip:bob@{domain}",
        dst_addr=f"sip:{user}@{domain}",
        username=user,
        domain=domain,
        body=body,
        ctype=ctype,
        inc_time=inc_time,
        exp_time=exp_time,
        snd_time=snd_time,
        extra_hdrs=extra_hdrs,
        callid=callid,
    )


def _insert(driver: Driver, msg: NewMessage, max_messages: int = 0) -> int:
    mid = driver.insert(msg, max_messages)
    assert isinstance(mid, int), f"insert returned {mid!r}"
    return mid


def _same_message(stored: StoredMessage, msg: NewMessage) -> None:
    for f in fields(NewMessage):
        assert getattr(stored, f.name) == getattr(msg, f.name), f.name


def _token() -> str:
    return uuid.uuid4().hex


class DriverConformance:
    """The shared contract tests (pytest collects the ``test_`` methods of subclasses)."""

    # ---- insert / get -------------------------------------------------------------------------

    def test_insert_returns_increasing_ids_and_get_round_trips(self, driver: Driver) -> None:
        msgs = [make_message(body=f"m{i}".encode()) for i in range(3)]
        mids = [_insert(driver, m) for m in msgs]
        assert mids == sorted(mids) and len(set(mids)) == 3
        for mid, msg in zip(mids, msgs, strict=True):
            stored = driver.get(mid)
            assert stored is not None
            assert stored.mid == mid
            _same_message(stored, msg)
            assert stored.lease_token is None and stored.lease_until is None
            assert stored.attempts == 0

    def test_get_unknown_id_is_none(self, driver: Driver) -> None:
        mid = _insert(driver, make_message())
        assert driver.get(mid + 1000) is None

    def test_bodies_are_byte_exact(self, driver: Driver) -> None:
        bodies = [
            bytes(range(256)),
            b"",
            b"\x00",
            b"\r\n\r\n",
            bytes(range(256)) * 256,
            b"\xff" * 3,
        ]
        for body in bodies:
            mid = _insert(driver, make_message(body=body))
            stored = driver.get(mid)
            assert stored is not None
            assert stored.body == body
            assert isinstance(stored.body, bytes)

    def test_times_are_64_bit(self, driver: Driver) -> None:
        msg = make_message(inc_time=2**33, exp_time=2**40, snd_time=2**34)
        stored = driver.get(_insert(driver, msg))
        assert stored is not None
        _same_message(stored, msg)

    def test_text_fields_round_trip(self, driver: Driver) -> None:
        msg = NewMessage(
            src_addr="sip:bj%C3%B8rn@example.com;transport=tcp",
            dst_addr="sips:Zoë@example.com",
            username="Zoë",
            domain="example.com",
            body="grüße".encode(),
            ctype="text/plain; charset=UTF-8",
            inc_time=NOW,
            exp_time=NOW + HOUR,
        )
        stored = driver.get(_insert(driver, msg))
        assert stored is not None
        _same_message(stored, msg)

    def test_kamailio_extra_headers_and_call_id_round_trip(self, driver: Driver) -> None:
        extra = "P-Asserted-Identity: <sip:bob@example.com>\r\nX-Tag: ä;b=1\r\n"
        msg = make_message("kx", extra_hdrs=extra, callid="c-1@host.example.com")
        mid = _insert(driver, msg)
        plain = _insert(driver, make_message("kx"))
        stored = driver.get(mid)
        assert stored is not None
        _same_message(stored, msg)
        none = driver.get(plain)
        assert none is not None and (none.extra_hdrs, none.callid) == ("", "")
        (claimed, other) = driver.claim("kx", "example.com", NOW, NOW + 30, _token(), 0)
        assert (claimed.extra_hdrs, claimed.callid) == (extra, "c-1@host.example.com")
        assert (other.extra_hdrs, other.callid) == ("", "")
        (listed, _) = driver.list("kx", "example.com", NOW, 10)
        assert listed.extra_hdrs == extra

    def test_create_schema_is_idempotent(self, driver: Driver) -> None:
        mid = _insert(driver, make_message())
        driver.create_schema()
        assert driver.get(mid) is not None

    # ---- quota --------------------------------------------------------------------------------

    def test_quota_refuses_at_limit(self, driver: Driver) -> None:
        assert driver.insert(make_message(), 2) is not None
        assert driver.insert(make_message(), 2) is not None
        assert driver.insert(make_message(), 2) is None
        assert driver.count("alice", "example.com", NOW) == 2
        # another owner has a quota of its own; 0 means unlimited
        assert driver.insert(make_message(user="carol"), 2) is not None
        assert driver.insert(make_message(), 0) is not None

    def test_quota_ignores_expired_rows_and_counts_reminders(self, driver: Driver) -> None:
        _insert(driver, make_message(inc_time=NOW - 2 * HOUR, exp_time=NOW))  # expired at NOW
        assert driver.insert(make_message(snd_time=NOW + 60), 2) is not None
        assert driver.insert(make_message(), 2) is not None
        assert driver.insert(make_message(), 2) is None

    def test_quota_is_exact_under_threads(self, driver: Driver) -> None:
        results: list[int | None] = []
        lock = threading.Lock()

        def work() -> None:
            for _ in range(10):
                mid = driver.insert(make_message(user="quota"), 25)
                with lock:
                    results.append(mid)

        _run_threads(work, 6)
        assert len([r for r in results if r is not None]) == 25
        assert driver.count("quota", "example.com", NOW) == 25

    # ---- claim --------------------------------------------------------------------------------

    def test_claim_leases_owner_rows_in_id_order(self, driver: Driver) -> None:
        mine = [_insert(driver, make_message(body=bytes([i]))) for i in range(4)]
        _insert(driver, make_message(user="carol"))
        _insert(driver, make_message(snd_time=NOW + 60))  # a reminder: never dumped
        _insert(driver, make_message(inc_time=NOW - 2 * HOUR, exp_time=NOW))  # expired
        token = _token()
        got = driver.claim("alice", "example.com", NOW, NOW + 30, token)
        assert [r.mid for r in got] == mine
        assert all(r.lease_token == token and r.lease_until == NOW + 30 for r in got)
        assert [r.body for r in got] == [bytes([i]) for i in range(4)]
        stored = driver.get(mine[0])
        assert stored is not None and stored.lease_token == token

    def test_claim_limit(self, driver: Driver) -> None:
        mids = [_insert(driver, make_message()) for _ in range(5)]
        first = driver.claim("alice", "example.com", NOW, NOW + 30, _token(), limit=2)
        second = driver.claim("alice", "example.com", NOW, NOW + 30, _token(), limit=2)
        rest = driver.claim("alice", "example.com", NOW, NOW + 30, _token())
        assert [r.mid for r in first + second + rest] == mids
        assert (len(first), len(second), len(rest)) == (2, 2, 1)

    def test_live_lease_blocks_expired_lease_frees(self, driver: Driver) -> None:
        mid = _insert(driver, make_message())
        assert len(driver.claim("alice", "example.com", NOW, NOW + 30, _token())) == 1
        assert driver.claim("alice", "example.com", NOW + 29, NOW + 59, _token()) == []
        again = driver.claim("alice", "example.com", NOW + 30, NOW + 60, "t2")
        assert [(r.mid, r.lease_token) for r in again] == [(mid, "t2")]

    def test_claim_skips_rows_expiring_now(self, driver: Driver) -> None:
        _insert(driver, make_message(exp_time=NOW + 10))
        assert driver.claim("alice", "example.com", NOW + 10, NOW + 40, _token()) == []

    def test_claim_is_exact_under_threads(self, driver: Driver) -> None:
        mids = {_insert(driver, make_message(user=f"u{i % 3}")) for i in range(60)}
        seen: list[int] = []
        lock = threading.Lock()

        def work() -> None:
            token = _token()
            for _ in range(200):
                got: list[StoredMessage] = []
                for user in ("u0", "u1", "u2"):
                    got += driver.claim(user, "example.com", NOW, NOW + 300, token, limit=3)
                if not got:
                    return
                with lock:
                    seen.extend(r.mid for r in got)
                for r in got:
                    assert driver.delete(r.mid)

        _run_threads(work, 4)
        assert sorted(seen) == sorted(mids)

    def test_owners_are_matched_exactly(self, driver: Driver) -> None:
        hostile = [
            "'; DROP TABLE silo;--",
            "{x}",
            "$where",
            "*",
            "a:b",
            "%",
            "_",
            "Alice",
            "alice ",
        ]
        for user in hostile:
            _insert(driver, make_message(user=user, body=user.encode()))
        _insert(driver, make_message(user="alice"))
        _insert(driver, make_message(user="alice", domain="example.org"))
        for user in hostile:
            got = driver.claim(user, "example.com", NOW, NOW + 30, _token())
            assert [r.body for r in got] == [user.encode()], user
            assert driver.count(user, "example.com", NOW) == 1
        assert driver.count("alice", "example.com", NOW) == 1

    # ---- reminders ----------------------------------------------------------------------------

    def test_claim_due_reminders(self, driver: Driver) -> None:
        due = [
            _insert(driver, make_message(user="r1", snd_time=NOW - 5)),
            _insert(driver, make_message(user="r2", snd_time=NOW)),
        ]
        _insert(driver, make_message(user="r3", snd_time=NOW + 1))  # not yet
        _insert(driver, make_message(user="r4"))  # not a reminder
        _insert(driver, make_message(user="r5", snd_time=NOW - 5, exp_time=NOW))  # expired
        token = _token()
        got = driver.claim_due_reminders(NOW, NOW + 30, token)
        assert [r.mid for r in got] == due
        assert all(r.lease_token == token for r in got)
        assert driver.claim_due_reminders(NOW, NOW + 30, _token()) == []
        later = driver.claim_due_reminders(NOW + 30, NOW + 60, _token(), limit=1)
        assert [r.mid for r in later] == due[:1]

    # ---- delete / release ---------------------------------------------------------------------

    def test_delete(self, driver: Driver) -> None:
        mid = _insert(driver, make_message())
        assert driver.delete(mid) is True
        assert driver.get(mid) is None
        assert driver.delete(mid) is False

    def test_release_with_token(self, driver: Driver) -> None:
        mid = _insert(driver, make_message())
        driver.claim("alice", "example.com", NOW, NOW + 30, "tok")
        assert driver.release(mid, "other") is ReleaseResult.NOT_FOUND
        stored = driver.get(mid)
        assert stored is not None and stored.lease_token == "tok" and stored.attempts == 0
        assert driver.release(mid, "tok") is ReleaseResult.RELEASED
        stored = driver.get(mid)
        assert stored is not None
        assert (stored.lease_token, stored.lease_until, stored.attempts) == (None, None, 1)
        assert driver.release(mid, "tok") is ReleaseResult.NOT_FOUND  # nothing leased any more
        got = driver.claim("alice", "example.com", NOW, NOW + 30, "tok2")
        assert [r.mid for r in got] == [mid] and got[0].attempts == 1

    def test_release_without_token_and_unknown(self, driver: Driver) -> None:
        mid = _insert(driver, make_message())
        assert driver.release(mid, None) is ReleaseResult.NOT_FOUND  # not leased
        driver.claim("alice", "example.com", NOW, NOW + 30, "tok")
        assert driver.release(mid, None) is ReleaseResult.RELEASED
        assert driver.release(mid + 1000, None) is ReleaseResult.NOT_FOUND

    def test_release_turns_reminder_into_offline_message(self, driver: Driver) -> None:
        mid = _insert(driver, make_message(snd_time=NOW - 1))
        driver.claim_due_reminders(NOW, NOW + 30, "tok")
        assert driver.release(mid, "tok", to_offline=True) is ReleaseResult.RELEASED
        stored = driver.get(mid)
        assert stored is not None and stored.snd_time == 0
        assert [r.mid for r in driver.claim("alice", "example.com", NOW, NOW + 30, "t")] == [mid]

    def test_release_drops_after_max_attempts(self, driver: Driver) -> None:
        mid = _insert(driver, make_message())
        for attempt in range(1, 3):
            driver.claim("alice", "example.com", NOW, NOW + 30, f"t{attempt}")
            assert driver.release(mid, f"t{attempt}", max_attempts=3) is ReleaseResult.RELEASED
        driver.claim("alice", "example.com", NOW, NOW + 30, "t3")
        assert driver.release(mid, "t3", max_attempts=3) is ReleaseResult.DROPPED
        assert driver.get(mid) is None

    # ---- inbox and housekeeping ---------------------------------------------------------------

    def test_count_and_list(self, driver: Driver) -> None:
        mids = [_insert(driver, make_message(body=bytes([i]))) for i in range(3)]
        reminder = _insert(driver, make_message(snd_time=NOW + 100))
        _insert(driver, make_message(exp_time=NOW))  # expired
        _insert(driver, make_message(user="carol"))
        driver.claim("alice", "example.com", NOW, NOW + 30, "tok")
        assert driver.count("alice", "example.com", NOW) == 4
        listed = driver.list("alice", "example.com", NOW)
        assert [r.mid for r in listed] == [*mids, reminder]
        assert [r.mid for r in driver.list("alice", "example.com", NOW, limit=2)] == mids[:2]
        assert driver.count("nobody", "example.com", NOW) == 0
        assert driver.list("nobody", "example.com", NOW) == []

    def test_list_does_not_lease(self, driver: Driver) -> None:
        mid = _insert(driver, make_message())
        driver.list("alice", "example.com", NOW)
        assert [r.mid for r in driver.claim("alice", "example.com", NOW, NOW + 5, "t")] == [mid]

    def test_purge_owner(self, driver: Driver) -> None:
        for _ in range(3):
            _insert(driver, make_message())
        _insert(driver, make_message(snd_time=NOW + 5))
        other = _insert(driver, make_message(user="carol"))
        assert driver.purge("alice", "example.com") == 4
        assert driver.count("alice", "example.com", NOW) == 0
        assert driver.get(other) is not None
        assert driver.purge("alice", "example.com") == 0

    def test_delete_expired(self, driver: Driver) -> None:
        gone = [
            _insert(driver, make_message(exp_time=NOW)),
            _insert(driver, make_message(user="carol", exp_time=NOW - 100, snd_time=NOW - 200)),
        ]
        kept = _insert(driver, make_message(exp_time=NOW + 1))
        assert driver.delete_expired(NOW) == 2
        assert all(driver.get(m) is None for m in gone)
        assert driver.get(kept) is not None
        assert driver.delete_expired(NOW) == 0
        # quota space is given back by expiry
        assert driver.insert(make_message(user="carol", inc_time=NOW), 1) is not None

    def test_totals_count_unexpired_rows_and_live_leases(self, driver: Driver) -> None:
        if totals(driver, NOW) is None:
            pytest.skip("the driver has no totals step (optional)")
        for i in range(3):
            _insert(driver, make_message(body=bytes([i])))
        _insert(driver, make_message(snd_time=NOW + 100))  # a reminder counts as stored
        _insert(driver, make_message(user="carol"))
        _insert(driver, make_message(exp_time=NOW))  # expired: not counted
        driver.claim("alice", "example.com", NOW, NOW + 30, _token(), limit=2)
        got = totals(driver, NOW)
        assert got is not None and got.stored == 5
        assert got.leased in (2, None)
        later = totals(driver, NOW + 30)  # the leases have run out
        assert later is not None and later.stored == 5 and later.leased in (0, None)
        with pytest.raises(InvalidRequest):
            totals(driver, "now")  # type: ignore[arg-type]

    # ---- health check -------------------------------------------------------------------------

    def test_ping_answers_and_changes_nothing(self, driver: Driver) -> None:
        mid = _insert(driver, make_message())
        driver.ping()
        assert driver.get(mid) is not None and driver.count("alice", "example.com", NOW) == 1

    # ---- boundaries and bad values: the same answer on every driver ---------------------------

    def test_int64_edges_round_trip(self, driver: Driver) -> None:
        forever = make_message(exp_time=INT64_MAX)
        never_due = make_message(exp_time=INT64_MAX, snd_time=INT64_MAX)
        stored = [driver.get(_insert(driver, m)) for m in (forever, never_due)]
        for row, msg in zip(stored, (forever, never_due), strict=True):
            assert row is not None
            _same_message(row, msg)
        assert driver.count("alice", "example.com", NOW) == 2
        assert [r.mid for r in driver.claim("alice", "example.com", NOW, INT64_MAX, "t")] == [
            stored[0].mid  # type: ignore[union-attr]
        ]
        assert driver.claim_due_reminders(NOW, NOW + 30, _token()) == []
        # Comparisons need only be exact below 2**53 (Redis compares times as doubles).
        assert driver.delete_expired(2**53) == 0
        assert driver.delete_expired(INT64_MAX) == 2

    @pytest.mark.parametrize(
        "times",
        [
            {"exp_time": INT64_MAX + 1},
            {"snd_time": INT64_MAX + 1},
            {"inc_time": 2**64},
            {"exp_time": -1},
            {"snd_time": -1},
            {"inc_time": -(2**63) - 1},
        ],
        ids=["exp_over", "snd_over", "inc_over", "exp_negative", "snd_negative", "inc_under"],
    )
    def test_times_out_of_range_are_refused_and_take_no_quota(
        self, driver: Driver, times: dict[str, int]
    ) -> None:
        bad = NewMessage(**{**_fields(make_message()), **times})
        with pytest.raises(InvalidRequest):
            driver.insert(bad, 1)
        assert driver.count("alice", "example.com", NOW) == 0
        assert driver.list("alice", "example.com", 0) == []
        assert driver.insert(make_message(), 1) is not None  # the quota slot is free

    @pytest.mark.parametrize("field", ["src_addr", "dst_addr", "username", "domain", "ctype"])
    def test_unencodable_text_is_refused_and_takes_no_quota(
        self, driver: Driver, field: str
    ) -> None:
        value = getattr(make_message(), field) + "\udcff"  # a lone surrogate
        with pytest.raises(InvalidRequest):
            driver.insert(NewMessage(**{**_fields(make_message()), field: value}), 1)
        assert driver.count("alice", "example.com", NOW) == 0
        assert driver.insert(make_message(), 1) is not None

    @pytest.mark.parametrize(
        "changes",
        [
            {"body": "text, not bytes"},
            {"username": 7},
            {"ctype": None},
            {"exp_time": float(NOW + HOUR)},
            {"snd_time": True},
            {"inc_time": str(NOW)},
        ],
        ids=["body_str", "user_int", "ctype_none", "exp_float", "snd_bool", "inc_str"],
    )
    def test_wrong_types_are_refused_and_take_no_quota(
        self, driver: Driver, changes: dict[str, Any]
    ) -> None:
        with pytest.raises(InvalidRequest):
            driver.insert(NewMessage(**{**_fields(make_message()), **changes}), 1)
        assert driver.count("alice", "example.com", NOW) == 0
        assert driver.insert(make_message(), 1) is not None

    def test_token_lengths(self, driver: Driver) -> None:
        mid = _insert(driver, make_message())
        for bad in ("", "x" * 65, "x" * 10_000):
            with pytest.raises(InvalidRequest):
                driver.claim("alice", "example.com", NOW, NOW + 30, bad)
            with pytest.raises(InvalidRequest):
                driver.claim_due_reminders(NOW, NOW + 30, bad)
            with pytest.raises(InvalidRequest):
                driver.release(mid, bad)
        longest = "é" * 64
        got = driver.claim("alice", "example.com", NOW, NOW + 30, longest)
        assert [(r.mid, r.lease_token) for r in got] == [(mid, longest)]
        stored = driver.get(mid)
        assert stored is not None and stored.lease_token == longest
        assert driver.release(mid, longest) is ReleaseResult.RELEASED

    @pytest.mark.parametrize("mid", [None, "1", b"1", 1.0, True, False], ids=repr)
    def test_mids_that_are_not_ints_are_refused(self, driver: Driver, mid: Any) -> None:
        kept = _insert(driver, make_message())
        driver.claim("alice", "example.com", NOW, NOW + 30, "tok")
        with pytest.raises(InvalidRequest):
            driver.get(mid)
        with pytest.raises(InvalidRequest):
            driver.delete(mid)
        with pytest.raises(InvalidRequest):
            driver.release(mid, "tok")
        with pytest.raises(InvalidRequest):
            driver.release(mid, None)
        stored = driver.get(kept)
        assert stored is not None and stored.lease_token == "tok"

    @pytest.mark.parametrize("mid", [-1, -(2**63), INT64_MAX + 1, 2**64 + 1, 0], ids=repr)
    def test_mids_no_row_can_have_are_not_found(self, driver: Driver, mid: int) -> None:
        kept = _insert(driver, make_message())
        driver.claim("alice", "example.com", NOW, NOW + 30, "tok")
        assert driver.get(mid) is None
        assert driver.delete(mid) is False
        assert driver.release(mid, "tok") is ReleaseResult.NOT_FOUND
        assert driver.release(mid, None) is ReleaseResult.NOT_FOUND
        stored = driver.get(kept)
        assert stored is not None and stored.lease_token == "tok"

    def test_a_large_mid_is_not_found(self, driver: Driver) -> None:
        assert driver.get(INT64_MAX) is None
        assert driver.delete(INT64_MAX) is False
        assert driver.release(INT64_MAX, None) is ReleaseResult.NOT_FOUND

    @pytest.mark.parametrize(
        "call",
        [
            lambda d: d.claim("alice", "example.com", NOW, INT64_MAX + 1, "t"),
            lambda d: d.claim("alice", "example.com", str(NOW), NOW + 30, "t"),
            lambda d: d.claim("alice", "example.com", NOW, NOW + 30, "t", limit="2"),
            lambda d: d.claim({"$gt": ""}, "example.com", NOW, NOW + 30, "t"),
            lambda d: d.claim("al\udcffice", "example.com", NOW, NOW + 30, "t"),
            lambda d: d.claim("alice", "example.com", NOW, NOW + 30, 12345),
            lambda d: d.claim_due_reminders(-(2**63) - 1, NOW + 30, "t"),
            lambda d: d.count("alice", None, NOW),
            lambda d: d.count("alice", "example.com", INT64_MAX + 1),
            lambda d: d.list("alice", "example.com", NOW, limit=1.5),
            lambda d: d.list(b"alice", "example.com", NOW),
            lambda d: d.purge("alice", ["example.com"]),
            lambda d: d.purge("\ud800", "example.com"),
            lambda d: d.delete_expired(None),
            lambda d: d.delete_expired(2**64),
            lambda d: d.insert(make_message(), max_messages="1"),
            lambda d: d.insert(make_message(), max_messages=2**64),
            lambda d: d.release(1, "t", max_attempts=None),
        ],
    )
    def test_bad_arguments_raise_invalid_request_and_change_nothing(
        self, driver: Driver, call: Callable[[Any], object]
    ) -> None:
        mid = _insert(driver, make_message())
        with pytest.raises(InvalidRequest):
            call(driver)
        stored = driver.get(mid)
        assert stored is not None and stored.lease_token is None
        assert driver.count("alice", "example.com", NOW) == 1

    def test_errors_are_libmsilo_errors(self, driver: Driver) -> None:
        """Whatever a caller passes, only libmsilo errors come out (never a raw ValueError,
        TypeError or UnicodeEncodeError of the backend's client)."""
        junk: list[Any] = [None, "", "\udcff", -1, 2**70, 1.5, b"\xff", [], {"$ne": 1}, True]
        calls: list[Callable[[Any], object]] = [
            driver.get,
            driver.delete,
            lambda v: driver.release(v, None),
            lambda v: driver.count(v, "example.com", NOW),
            lambda v: driver.claim("alice", "example.com", v, NOW + 30, "t"),
            lambda v: driver.insert(make_message(user="junk", body=v)),
        ]
        for value in junk:
            for call in calls:
                with contextlib.suppress(MsiloError):
                    call(value)
        assert driver.count("junk", "example.com", NOW) == 1  # only the bytes body was stored

    # ---- batch steps (insert_many, delete_many, release_many) -----------------------------------

    def test_insert_many_returns_ids_in_order(self, driver: Driver) -> None:
        msgs = [make_message(user=f"u{i % 3}", body=b"%d" % i) for i in range(7)]
        got = batch.insert_many(driver, msgs)
        mids = [m for m in got if isinstance(m, int)]
        assert mids == got and mids == sorted(mids) and len(set(mids)) == 7
        for mid, msg in zip(mids, msgs, strict=True):
            stored = driver.get(mid)
            assert stored is not None
            _same_message(stored, msg)
        assert batch.insert_many(driver, []) == []

    def test_insert_many_isolates_a_bad_message(self, driver: Driver) -> None:
        bad = [
            make_message(user="bad\udcff"),
            make_message(inc_time=-1),
            NewMessage(**{**_fields(make_message()), "body": "text"}),
        ]
        good = [make_message(body=b"ok%d" % i) for i in range(3)]
        msgs = [good[0], bad[0], good[1], bad[1], bad[2], good[2]]
        got = batch.insert_many(driver, msgs, 10)
        for i in (1, 3, 4):
            assert isinstance(got[i], InvalidRequest), got[i]
        for i, msg in ((0, good[0]), (2, good[1]), (5, good[2])):
            stored = driver.get(got[i])  # type: ignore[arg-type]
            assert stored is not None
            _same_message(stored, msg)
        assert driver.count("alice", "example.com", NOW) == 3

    def test_insert_many_keeps_the_quota_exact(self, driver: Driver) -> None:
        _insert(driver, make_message())
        msgs = [make_message(body=b"%d" % i) for i in range(4)] + [make_message(user="carol")]
        got = batch.insert_many(driver, msgs, 3)
        assert [isinstance(m, int) for m in got] == [True, True, False, False, True]
        assert got[2] is None and got[3] is None
        assert driver.count("alice", "example.com", NOW) == 3
        assert driver.count("carol", "example.com", NOW) == 1

    def test_insert_many_quota_is_exact_under_threads(self, driver: Driver) -> None:
        stored: list[int | MsiloError | None] = []
        lock = threading.Lock()

        def work() -> None:
            for n in range(4):
                # Several owners per batch, in varying orders: the locks must not deadlock.
                owners = ["q1", "q2", "q3"][n % 3 :] + ["q1", "q2", "q3"][: n % 3]
                msgs = [make_message(user=o) for o in owners for _ in range(2)]
                got = batch.insert_many(driver, msgs, 10)
                with lock:
                    stored.extend(got)

        _run_threads(work, 6)
        assert not [m for m in stored if isinstance(m, MsiloError)]
        assert len([m for m in stored if m is not None]) == 30
        for owner in ("q1", "q2", "q3"):
            assert driver.count(owner, "example.com", NOW) == 10

    def test_delete_many_answers_each_id(self, driver: Driver) -> None:
        a, b = _insert(driver, make_message()), _insert(driver, make_message())
        mids: list[Any] = [a, a + b + 1000, b, a, -1, "x", True]
        got = batch.delete_many(driver, mids)
        assert got[:5] == [True, False, True, False, False]
        assert isinstance(got[5], InvalidRequest) and isinstance(got[6], InvalidRequest)
        assert driver.get(a) is None and driver.get(b) is None
        assert batch.delete_many(driver, []) == []

    def test_release_many_answers_each_release(self, driver: Driver) -> None:
        mids = [_insert(driver, make_message(body=b"%d" % i)) for i in range(3)]
        tok = _token()
        driver.claim("alice", "example.com", NOW, NOW + 60, tok)
        items: list[Any] = [(mids[0], tok, False), (mids[1], _token(), False), (mids[2], 5, False)]
        got = batch.release_many(driver, items)
        assert got[:2] == [ReleaseResult.RELEASED, ReleaseResult.NOT_FOUND]
        assert isinstance(got[2], InvalidRequest)
        row = driver.get(mids[0])
        assert row is not None and row.lease_token is None and row.attempts == 1

    @pytest.mark.parametrize("max_attempts", [0, 2])
    def test_release_many_answers_as_single_releases(
        self, driver: Driver, max_attempts: int
    ) -> None:
        """A batch answers each item as the single step would (run one by one, in order) and
        leaves every row as those would: held, foreign, late and missing leases, repeated ids,
        reminders turned offline, rows dropped at ``max_attempts``, bad values."""
        one = _ReleaseCases(driver, "one", NOW)
        singles = batch.release_each(driver, one.items, max_attempts)
        many = _ReleaseCases(driver, "all", NOW + 10_000)
        batched = batch.release_many(driver, many.items, max_attempts)
        assert _answers(batched) == _answers(singles) == _answers(one.expected(max_attempts))
        assert many.rows() == one.rows()

    def test_release_many_releases_each_lease_once_under_threads(self, driver: Driver) -> None:
        """Batches racing over the same leases: each lease is released once, by its token
        only, and its attempt counted once; a stale token releases nothing."""
        mids = [_insert(driver, make_message(body=b"%d" % i)) for i in range(12)]
        tok = _token()
        assert len(driver.claim("alice", "example.com", NOW, NOW + 60, tok)) == 12
        got: list[ReleaseResult | MsiloError] = []
        lock = threading.Lock()

        def work() -> None:
            for start in (0, 4, 8):
                items: list[batch.Release] = [(m, tok, False) for m in mids[start:] + mids[:start]]
                items += [(m, "stale", False) for m in mids[:3]]
                answers = batch.release_many(driver, items)
                with lock:
                    got.extend(answers)

        _run_threads(work, 4)
        assert got.count(ReleaseResult.RELEASED) == len(mids)
        assert set(got) == {ReleaseResult.RELEASED, ReleaseResult.NOT_FOUND}
        for mid in mids:
            row = driver.get(mid)
            assert row is not None and row.lease_token is None and row.attempts == 1

    def test_release_many_drops_give_their_quota_back(self, driver: Driver) -> None:
        mids = [_insert(driver, make_message(body=b"%d" % i), 3) for i in range(3)]
        assert driver.insert(make_message(), 3) is None
        tok = _token()
        driver.claim("alice", "example.com", NOW, NOW + 60, tok)
        got = batch.release_many(driver, [(m, tok, False) for m in mids], max_attempts=1)
        assert got == [ReleaseResult.DROPPED] * 3
        assert all(driver.get(m) is None for m in mids)
        stored = batch.insert_many(driver, [make_message(body=b"n%d" % i) for i in range(4)], 3)
        assert [isinstance(m, int) for m in stored] == [True, True, True, False]

    def test_delete_many_keeps_the_quota_exact(self, driver: Driver) -> None:
        """Rows deleted in a batch (claimed by this driver or not, counted or expired out of
        the count) give exactly their quota slots back, also when batches race."""
        mids = [_insert(driver, make_message(body=b"%d" % i), 6) for i in range(6)]
        driver.claim("alice", "example.com", NOW, NOW + 60, _token(), limit=3)
        got: list[bool | MsiloError] = []
        lock = threading.Lock()

        def work() -> None:
            answers = batch.delete_many(driver, [*mids[::2], *mids[1::2], mids[0]])
            with lock:
                got.extend(answers)

        _run_threads(work, 3)
        assert got.count(True) == 6 and got.count(False) == 3 * 7 - 6
        assert driver.count("alice", "example.com", NOW) == 0
        stored = batch.insert_many(driver, [make_message(body=b"n%d" % i) for i in range(7)], 6)
        assert [isinstance(m, int) for m in stored] == [True] * 6 + [False]


class _ReleaseCases:
    """Rows in every state a release meets, each of an owner named after ``tag``, and one
    release item per case; two instances (other tags, times ``base`` apart) hold the same
    cases, so a batch run on one can be compared with single steps run on the other."""

    NAMES = ("held", "foreign", "anyone", "free", "free2", "gone", "dup", "dup2", "late", "tired")

    def __init__(self, driver: Driver, tag: str, base: int) -> None:
        self.driver, self.tag, self.base = driver, tag, base
        far = base + 10**6  # leases outlive the other instance's times
        self.mids = {name: self._row(name) for name in self.NAMES}
        for name in ("held", "foreign", "anyone", "dup", "dup2", "tired"):
            self._lease(name, base, far)
        driver.release(self.mids["tired"], self._tok("tired"))  # one attempt counted
        self._lease("tired", base, far, "tired2")
        self._lease("late", base, base + 60)  # its lease ran out; a newer delivery has it
        self._lease("late", base + 120, far, "late2")
        driver.delete(self.mids["gone"])
        self.mids["reminder"] = self._row("reminder", snd_time=base + 1)
        driver.claim_due_reminders(base + 1, far, self._tok("reminder"))
        m, t = self.mids, self._tok
        self.items: list[Any] = [
            (m["held"], t("held"), False),
            (m["foreign"], _token(), False),
            (m["anyone"], None, False),
            (m["free"], None, False),
            (m["free2"], t("free2"), False),
            (m["gone"], t("gone"), False),
            (m["reminder"], t("reminder"), True),
            (m["tired"], t("tired2"), False),
            (m["dup"], t("dup"), False),
            (m["dup"], t("dup"), False),
            (m["dup2"], _token(), False),
            (m["dup2"], t("dup2"), False),
            (m["late"], t("late"), False),
            (-1, None, False),
            (2**64, t("x"), False),
            (m["free"], 5, False),
            (m["free"], "", False),
            ("x", None, False),
            (True, None, False),
        ]

    def _tok(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def _row(self, name: str, snd_time: int = 0) -> int:
        user = f"{self.tag}-{name}"
        msg = make_message(user, inc_time=self.base, exp_time=self.base + 2 * 10**6)
        return _insert(self.driver, NewMessage(**{**_fields(msg), "snd_time": snd_time}))

    def _lease(self, name: str, now: int, until: int, token: str | None = None) -> None:
        user, tok = f"{self.tag}-{name}", self._tok(token or name)
        assert len(self.driver.claim(user, "example.com", now, until, tok)) == 1

    def expected(self, max_attempts: int) -> list[Any]:
        """The answers of the single steps, in item order."""
        r, n = ReleaseResult.RELEASED, ReleaseResult.NOT_FOUND
        tired = ReleaseResult.DROPPED if max_attempts == 2 else r
        bad = InvalidRequest("")
        return [r, n, r, n, n, n, r, tired, r, n, n, r, n, n, n, bad, bad, bad, bad]

    def rows(self) -> dict[str, tuple[Any, ...] | None]:
        """Each case's row as it is now, its tokens and times relative to this instance."""
        out: dict[str, tuple[Any, ...] | None] = {}
        for name, mid in self.mids.items():
            row = self.driver.get(mid)
            if row is None:
                out[name] = None
                continue
            token = row.lease_token.replace(self.tag, "") if row.lease_token else None
            until = None if row.lease_until is None else row.lease_until - self.base
            snd = row.snd_time - self.base if row.snd_time else 0
            out[name] = (token, until, row.attempts, snd)
        return out


def _answers(results: list[Any]) -> list[Any]:
    """Results with each error as its type (errors compare by identity)."""
    return [type(r) if isinstance(r, BaseException) else r for r in results]


def _fields(msg: NewMessage) -> dict[str, Any]:
    return {f.name: getattr(msg, f.name) for f in fields(NewMessage)}


def _run_threads(work: Callable[[], None], n: int) -> None:
    errors: list[BaseException] = []

    def wrapped() -> None:
        try:
            work()
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=wrapped) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "worker threads did not finish"
    if errors:
        raise errors[0]
