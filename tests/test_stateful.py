"""Random sequences of everything a host does, on every backend, beside a plain model (issue 9).

Two servers share one store and one clock: a ``Silo`` and an ``AsyncSilo`` (its coroutines
awaited one by one), so both facades answer every rule. The rules store (quota,
per-call quota and lifetime, reminders, Expires), dump (re-registrations with several contacts,
paging), answer deliveries 1xx-6xx with and without the lease token (tokenless replies go to the
server that sent the message, within Timer F after its lease, as a host without tokens sees
them; late ones carry the token), report failed sends, move the clock (small steps and jumps)
and tick, purge and delete. The model predicts what each call returns and what the store holds.

After every step: the inbox of each owner equals the model (nothing unexpired lost, nothing
extra). On every send: no delivery of that message is still live (unanswered with its lease
running) and none was answered 2xx. On every failure that released a lease: the lease belonged
to the delivery answered, or to one no longer live. Store outcomes check the quota exactly.

``MSILO_TEST_STATEFUL_EXAMPLES`` sets the examples per backend (default 60 on memory, 8 elsewhere:
about two minutes in all); ``MSILO_TEST_STATEFUL_STEPS`` the steps per example (default 40).
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from libmsilo import AsyncSilo, OutgoingMessage, ReplyOutcome, Silo, StoreStatus
from libmsilo.core.policy import TRANSACTION_TIMEOUT
from tests.backends import BEHAVIOUR_BACKENDS, DriverPool
from tests.helpers import T0, Clock, message, register
from tests.helpers import settings as msilo_settings
from tests.redis_cluster import redis_cluster_url

__all__ = ["redis_cluster_url"]  # the fixture, imported for pytest

OWNERS = ("sip:alice@example.com", "sip:bob@example.org")
QUOTA = 3
LIFETIME = 300
PURGE_INTERVAL = 30  # check_time 10 * clean_period 3
SEND_TIME = 20
MAX_ATTEMPTS = 3
SETTINGS = {
    "expire_time": LIFETIME,
    "max_messages": QUOTA,
    "check_time": 10,
    "clean_period": 3,
    "reminder": "sip:reminder@example.com",
    "send_time": SEND_TIME,
    "max_attempts": MAX_ATTEMPTS,
}
LEASE = TRANSACTION_TIMEOUT  # lease_seconds for check_time 10
LATE_WINDOW = TRANSACTION_TIMEOUT  # how late a tokenless reply may come


@dataclass
class Row:
    mid: int
    owner: str
    exp_time: int
    snd_time: int
    attempts: int = 0
    lease_token: str | None = None
    lease_until: int | None = None


@dataclass
class Delivery:
    msg: OutgoingMessage
    sender: int  # index of the Silo that sent it
    until: int
    reminder: bool
    answered: bool = False

    @property
    def token(self) -> str:
        assert self.msg.lease_token is not None
        return self.msg.lease_token


class Awaited:
    """An AsyncSilo called from synchronous code: each coroutine runs to its end on a private
    event loop, so the machine drives both facades with the same calls."""

    def __init__(self, silo: AsyncSilo) -> None:
        self._silo = silo
        self._loop = asyncio.new_event_loop()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._silo, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        def run(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run_until_complete(attr(*args, **kwargs))

        return run

    def close(self) -> None:
        self._loop.close()


class SiloMachine(RuleBasedStateMachine):
    """The system under test and its model; ``pool`` is set per backend."""

    pool: DriverPool

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock(T0)
        driver = self.pool()
        cfg = msilo_settings(**SETTINGS)
        # Server 0 is a Silo; server 1 an AsyncSilo, its calls awaited one at a time.
        self.server1 = Awaited(AsyncSilo(Silo(driver, cfg, clock=self.clock)))
        self.silos: list[Any] = [Silo(driver, cfg, clock=self.clock), self.server1]
        self.rows: dict[int, Row] = {}
        self.used_mids: set[int] = set()
        self.delivered: set[int] = set()
        self.deliveries: list[Delivery] = []
        self.next_purge: list[int | None] = [None, None]
        self.next_reminders: list[int | None] = [None, None]

    def teardown(self) -> None:
        self.server1.close()
        self.pool.release()

    @property
    def now(self) -> int:
        return int(self.clock.now)

    # ---- model helpers

    def _user_domain(self, owner: str) -> tuple[str, str]:
        user, _, domain = owner.removeprefix("sip:").partition("@")
        return user, domain

    def _rows_of(self, owner: str) -> list[Row]:
        return sorted((r for r in self.rows.values() if r.owner == owner), key=lambda r: r.mid)

    def _leased(self, row: Row) -> bool:
        return row.lease_token is not None and (row.lease_until or 0) > self.now

    def _live(self, d: Delivery) -> bool:
        return not d.answered and d.until > self.now

    def _holder(self, row: Row) -> Delivery | None:
        # One claim leases all its rows to one token: match the message too.
        return next(
            (d for d in self.deliveries if d.msg.mid == row.mid and d.token == row.lease_token),
            None,
        )

    def _draw_delivery(self, data: st.DataObject) -> Delivery:
        """An unanswered delivery, the older ones (superseded, late) more often."""
        waiting = [d for d in self.deliveries if not d.answered]
        index = data.draw(st.integers(0, len(waiting) - 1) | st.just(0))
        return waiting[index]

    def _sent(self, out: list[OutgoingMessage], sender: int, reminder: bool) -> None:
        until = self.now + LEASE
        for msg in out:
            assert msg.mid is not None and msg.lease_token is not None
            assert msg.mid not in self.delivered, f"message {msg.mid} re-sent after a 2xx"
            live = [d for d in self.deliveries if d.msg.mid == msg.mid and self._live(d)]
            assert not live, f"message {msg.mid} sent while a lease of it lives"
            row = self.rows[msg.mid]
            row.lease_token, row.lease_until = msg.lease_token, until
            self.deliveries.append(Delivery(msg, sender, until, reminder))

    # ---- rules

    @rule(
        owner=st.sampled_from(OWNERS),
        silo=st.integers(0, 1),
        expires=st.sampled_from([None, None, None, 5, 100, 400]),
        remind_in=st.none() | st.integers(0, 120),
        lifetime=st.sampled_from([None, None, 20, 90, 500]),
        quota=st.none() | st.sampled_from([1, 2, 5]),
    )
    def store(
        self,
        owner: str,
        silo: int,
        expires: int | None,
        remind_in: int | None,
        lifetime: int | None,
        quota: int | None,
    ) -> None:
        extra = [("Expires", str(expires))] if expires is not None else []
        snd = 0 if remind_in is None else self.now + remind_in
        result = self.silos[silo].store(
            message(to=owner, extra=extra),
            send_at=snd or None,
            expire_time=lifetime,
            max_messages=quota,
        )
        limit = QUOTA if quota is None else quota
        held = sum(1 for r in self._rows_of(owner) if r.exp_time > self.now)
        if held >= limit:
            assert result.status is StoreStatus.QUOTA_EXCEEDED, (held, limit)
            return
        assert result.status is StoreStatus.STORED, (held, limit)
        assert result.mid is not None and result.mid not in self.used_mids
        span = LIFETIME if lifetime is None else lifetime
        if expires is not None:
            span = min(span, expires)
        self.used_mids.add(result.mid)
        self.rows[result.mid] = Row(result.mid, owner, max(self.now, snd) + span, snd)

    @rule(owner=st.sampled_from(OWNERS), silo=st.integers(0, 1), count=st.integers(1, 3))
    def store_plain(self, owner: str, silo: int, count: int) -> None:
        for _ in range(count):
            self.store(owner, silo, None, None, None, None)

    @rule(
        owner=st.sampled_from(OWNERS),
        silo=st.integers(0, 1),
        page=st.integers(0, 3),
        contacts=st.integers(1, 2),
    )
    def dump(self, owner: str, silo: int, page: int, contacts: int) -> None:
        contact = ", ".join(f"<sip:phone{i}@192.0.2.{7 + i}:5060>" for i in range(contacts))
        out = self.silos[silo].dump(register(owner, contact), max_messages=page)
        due = [
            r.mid
            for r in self._rows_of(owner)
            if r.exp_time > self.now and r.snd_time == 0 and not self._leased(r)
        ]
        assert [m.mid for m in out] == (due[:page] if page else due)
        self._sent(out, silo, reminder=False)

    @precondition(lambda self: any(not d.answered for d in self.deliveries))
    @rule(data=st.data(), same_server=st.sampled_from([True, True, True, False]))
    def lease_runs_out_and_the_phone_registers_again(
        self, data: st.DataObject, same_server: bool
    ) -> None:
        """The issue 9.2 pattern: a delivery goes unanswered, its lease runs out, the phone
        registers again (at the same server or the other one) and the message is re-sent."""
        d = self._draw_delivery(data)
        assert d.msg.mid is not None
        if d.until > self.now:
            self.advance(d.until - self.now)
        owner = next((r.owner for r in self.rows.values() if r.mid == d.msg.mid), OWNERS[0])
        self.dump(owner, d.sender if same_server else 1 - d.sender, page=0, contacts=1)

    @precondition(lambda self: any(not d.answered for d in self.deliveries))
    @rule(
        data=st.data(),
        code=st.sampled_from([100, 180, 200, 202, 302, 404, 408, 486, 500, 503, 603]),
        route=st.sampled_from(["tokenless", "tokenless", "token", "other server"]),
    )
    def reply(self, data: st.DataObject, code: int, route: str) -> None:
        self._reply(self._draw_delivery(data), code, route)

    def _superseded(self) -> list[Delivery]:
        newest: dict[int | None, Delivery] = {d.msg.mid: d for d in self.deliveries}
        return [d for d in self.deliveries if not d.answered and newest[d.msg.mid] is not d]

    @precondition(lambda self: bool(self._superseded()))
    @rule(
        data=st.data(),
        code=st.sampled_from([200, 408, 480, 500]),
        route=st.sampled_from(["tokenless", "tokenless", "token", "other server"]),
    )
    def late_reply_of_a_superseded_delivery(
        self, data: st.DataObject, code: int, route: str
    ) -> None:
        self._reply(data.draw(st.sampled_from(self._superseded())), code, route)

    def _reply(self, d: Delivery, code: int, route: str) -> None:
        # Without a token a reply reaches the server that sent it, within Timer F.
        tokenless = route == "tokenless" and self.now < d.until + LATE_WINDOW
        silo = self.silos[1 - d.sender if route == "other server" else d.sender]
        mid = d.msg.mid
        assert mid is not None
        outcome = silo.on_reply(mid, code, token=None if tokenless else d.token)
        self._answered(d, code, outcome, exact=not tokenless)

    @precondition(lambda self: any(not d.answered for d in self.deliveries))
    @rule(data=st.data())
    def send_failed(self, data: st.DataObject) -> None:
        d = self._draw_delivery(data)
        outcome = self.silos[d.sender].send_failed(d.msg)
        self._answered(d, 500, outcome, exact=True)

    def _answered(self, d: Delivery, code: int, outcome: ReplyOutcome, *, exact: bool) -> None:
        mid = d.msg.mid
        assert mid is not None
        row = self.rows.get(mid)
        if code < 200:
            assert outcome is ReplyOutcome.PENDING
            return
        d.answered = True
        if code < 300:
            assert outcome is (ReplyOutcome.DELIVERED if row else ReplyOutcome.IGNORED)
            self.rows.pop(mid, None)
            self.delivered.add(mid)
            return
        holder = self._holder(row) if row is not None else None
        if outcome is ReplyOutcome.IGNORED:
            # A reply that names its delivery releases that delivery's lease, exactly.
            assert not (exact and holder is d), "a failure of the lease holder was ignored"
            return
        assert row is not None and holder is not None, outcome
        assert holder is d or not self._live(holder), "a newer live lease was released"
        row.attempts += 1
        if outcome is ReplyOutcome.DROPPED:
            assert row.attempts >= MAX_ATTEMPTS
            del self.rows[mid]
            return
        assert outcome is ReplyOutcome.RETRY and row.attempts < MAX_ATTEMPTS
        row.lease_token = row.lease_until = None
        if holder.reminder:
            row.snd_time = 0

    @rule(seconds=st.sampled_from([1, 5, 19, 31, 32, 33, 40, 60, 301, 1000]))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule(silo=st.integers(0, 1))
    def tick(self, silo: int) -> None:
        out = self.silos[silo].tick()
        now = self.now
        if self.next_purge[silo] is None or now >= (self.next_purge[silo] or 0):
            self.next_purge[silo] = now + PURGE_INTERVAL
            for mid in [m for m, r in self.rows.items() if r.exp_time <= now]:
                del self.rows[mid]
        due: list[int] = []
        if self.next_reminders[silo] is None or now >= (self.next_reminders[silo] or 0):
            self.next_reminders[silo] = now + SEND_TIME
            due = sorted(
                r.mid
                for r in self.rows.values()
                if 0 < r.snd_time <= now and r.exp_time > now and not self._leased(r)
            )
        assert sorted(m.mid for m in out if m.mid is not None) == due
        self._sent(out, silo, reminder=True)

    @rule(owner=st.sampled_from(OWNERS), silo=st.integers(0, 1))
    def purge(self, owner: str, silo: int) -> None:
        gone = [r.mid for r in self._rows_of(owner)]
        assert self.silos[silo].purge(owner) == len(gone)
        for mid in gone:
            del self.rows[mid]

    @precondition(lambda self: bool(self.used_mids))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        mid = data.draw(st.sampled_from(sorted(self.used_mids)))
        assert self.silos[0].delete(mid) is (mid in self.rows)
        self.rows.pop(mid, None)

    # ---- invariants

    @invariant()
    def inbox_equals_the_model(self) -> None:
        silo = self.silos[0]
        for owner in OWNERS:
            expected = [
                (r.mid, r.exp_time, r.snd_time, r.attempts, r.lease_token)
                for r in self._rows_of(owner)
                if r.exp_time > self.now
            ]
            got = [
                (r.mid, r.exp_time, r.snd_time, r.attempts, r.lease_token)
                for r in silo.list(owner, limit=1000)
            ]
            assert got == expected
            assert silo.count(owner) == len(expected) <= 100
        for mid, row in self.rows.items():  # expired ones too, until the purge
            stored = silo.get(mid)
            assert stored is not None and stored.exp_time == row.exp_time


def _budget(kind: str) -> int:
    default = 60 if kind == "memory" else 8
    return int(os.environ.get("MSILO_TEST_STATEFUL_EXAMPLES", default))


def _run(pool: DriverPool) -> None:
    machine = type(f"SiloMachine_{pool.kind}", (SiloMachine,), {"pool": pool})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=_budget(pool.kind),
            stateful_step_count=int(os.environ.get("MSILO_TEST_STATEFUL_STEPS", "40")),
            deadline=None,
            derandomize=bool(os.environ.get("MSILO_TEST_STATEFUL_SEEDED")),
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
        ),
    )


@pytest.fixture
def pool_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.mark.parametrize("kind", BEHAVIOUR_BACKENDS)
def test_random_sequences_match_the_model(kind: str, pool_dir: Path) -> None:
    pool = DriverPool(kind, pool_dir)
    try:
        _run(pool)
    finally:
        pool.close()


@pytest.fixture
def cluster_pool(redis_cluster_url: str, tmp_path: Path) -> Iterator[DriverPool]:
    pool = DriverPool("redis", tmp_path, url=redis_cluster_url)
    yield pool
    pool.close()


def test_random_sequences_match_the_model_on_redis_cluster(cluster_pool: DriverPool) -> None:
    _run(cluster_pool)
