"""The delivery state machine on its own, with no driver: every event in every state (h11-style).

States of one message (mid 7) in a tracker with 60 s leases (so a delivery is remembered until
60 s after its lease ran out):

* ``UNKNOWN``: no delivery known;
* ``ONE``: d1 sent (lease until 100);
* ``TWO``: d1 sent, its lease ran out, d2 sent (lease until 200): d1 is superseded, unanswered;
* ``OLDER_ONLY``: ``TWO`` after d2 failed: only the superseded d1 is left unanswered.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from libmsilo import InvalidRequest, MessageKind, ReleaseResult, ReplyOutcome, StoredMessage
from libmsilo.core import Action, DeliveryTracker, Op, ReplyClass, settle

MID = 7
DUMP, REMINDER = MessageKind.DUMP, MessageKind.REMINDER
DELIVERED, FAILED = ReplyClass.DELIVERED, ReplyClass.FAILED

State = tuple[str | None, tuple[str, ...]]  # (newest token, older unanswered tokens)


def _unknown() -> DeliveryTracker:
    return DeliveryTracker(lease_seconds=60)


def _one() -> DeliveryTracker:
    t = _unknown()
    t.sent(MID, "d1", DUMP, 100)
    return t


def _two() -> DeliveryTracker:
    t = _one()
    t.sent(MID, "d2", DUMP, 200)
    return t


def _older_only() -> DeliveryTracker:
    t = _two()
    assert t.reply(MID, 500, "d2") == Action(Op.RELEASE, MID, "d2")
    return t


STATES: dict[str, Callable[[], DeliveryTracker]] = {
    "UNKNOWN": _unknown,
    "ONE": _one,
    "TWO": _two,
    "OLDER_ONLY": _older_only,
}
STATE_OF: dict[str, State] = {
    "UNKNOWN": (None, ()),
    "ONE": ("d1", ()),
    "TWO": ("d2", ("d1",)),
    "OLDER_ONLY": (None, ("d1",)),
}

Event = Callable[[DeliveryTracker], Action | None]
EVENTS: dict[str, Event] = {
    "1xx": lambda t: t.reply(MID, 180),
    "1xx d1": lambda t: t.reply(MID, 100, "d1"),
    "2xx": lambda t: t.reply(MID, 200),
    "2xx d1": lambda t: t.reply(MID, 202, "d1"),
    "2xx d2": lambda t: t.reply(MID, 200, "d2"),
    "2xx x": lambda t: t.reply(MID, 200, "x"),
    "fail": lambda t: t.reply(MID, 408),
    "fail d1": lambda t: t.reply(MID, 486, "d1"),
    "fail d2": lambda t: t.reply(MID, 603, "d2"),
    "fail x": lambda t: t.reply(MID, 500, "x"),
    "send_failed d2": lambda t: t.send_failed(MID, "d2"),
    "send_failed notice": lambda t: t.send_failed(None, None),
    "other mid 2xx": lambda t: t.reply(MID + 1, 200),
    "unsendable": lambda t: t.unsendable(MID, "d9", REMINDER),
    "sent d3": lambda t: t.sent(MID, "d3", DUMP, 300),
    "tick 150": lambda t: t.tick(150),
    "tick 170": lambda t: t.tick(170),
    "tick 300": lambda t: t.tick(300),
}

PENDING = Action(Op.NOTHING, outcome=ReplyOutcome.PENDING)
IGNORE = Action(Op.NOTHING)


def delete(reminder: bool = False) -> Action:
    return Action(Op.DELETE, MID, reminder=reminder)


def release(token: str, reminder: bool = False) -> Action:
    return Action(Op.RELEASE, MID, token, reminder)


def lookup(verdict: ReplyClass, token: str | None = None, mid: int = MID) -> Action:
    return Action(Op.LOOKUP, mid, token, verdict=verdict)


SAME = "same"  # the state does not change
GONE: State = (None, ())

# (state, event) -> (action returned, state after)
TABLE: dict[tuple[str, str], tuple[Action | None, State | str]] = {}


def _row(state: str, **cells: tuple[Action | None, State | str]) -> None:
    for event, cell in cells.items():
        TABLE[state, event.replace("_", " ").replace("send failed", "send_failed")] = cell


_COMMON = {
    "1xx": (PENDING, SAME),
    "1xx_d1": (PENDING, SAME),
    "send_failed_notice": (IGNORE, SAME),
    "other_mid_2xx": (lookup(DELIVERED, mid=MID + 1), SAME),
    "unsendable": (release("d9", reminder=True), SAME),
    "tick_150": (None, SAME),
}
_row(
    "UNKNOWN",
    **_COMMON,
    **{
        "2xx": (lookup(DELIVERED), SAME),
        "2xx_d1": (lookup(DELIVERED, "d1"), SAME),
        "2xx_d2": (lookup(DELIVERED, "d2"), SAME),
        "2xx_x": (lookup(DELIVERED, "x"), SAME),
        "fail": (IGNORE, SAME),  # whose lease? unknowable: it runs out
        "fail_d1": (lookup(FAILED, "d1"), SAME),
        "fail_d2": (lookup(FAILED, "d2"), SAME),
        "fail_x": (lookup(FAILED, "x"), SAME),
        "send_failed_d2": (lookup(FAILED, "d2"), SAME),
        "sent_d3": (None, ("d3", ())),
        "tick_170": (None, SAME),
        "tick_300": (None, SAME),
    },
)
_row(
    "ONE",
    **_COMMON,
    **{
        "2xx": (delete(), GONE),
        "2xx_d1": (delete(), GONE),
        "2xx_d2": (lookup(DELIVERED, "d2"), SAME),  # not ours: the store decides
        "2xx_x": (lookup(DELIVERED, "x"), SAME),
        "fail": (release("d1"), GONE),  # the only delivery: it answers d1
        "fail_d1": (release("d1"), GONE),
        "fail_d2": (lookup(FAILED, "d2"), SAME),
        "fail_x": (lookup(FAILED, "x"), SAME),
        "send_failed_d2": (lookup(FAILED, "d2"), SAME),
        "sent_d3": (None, ("d3", ("d1",))),
        "tick_170": (None, GONE),  # 70 s after d1's lease: forgotten
        "tick_300": (None, GONE),
    },
)
_row(
    "TWO",
    **_COMMON,
    **{
        "2xx": (delete(), GONE),
        "2xx_d1": (delete(), GONE),  # d1 arrived after all: never send it again
        "2xx_d2": (delete(), GONE),
        "2xx_x": (lookup(DELIVERED, "x"), SAME),
        # issue 9.2: d1's late tokenless failure must not release d2's lease
        "fail": (IGNORE, ("d2", ())),
        "fail_d1": (IGNORE, ("d2", ())),
        "fail_d2": (release("d2"), (None, ("d1",))),
        "fail_x": (lookup(FAILED, "x"), SAME),
        "send_failed_d2": (release("d2"), (None, ("d1",))),
        "sent_d3": (None, ("d3", ("d1", "d2"))),
        "tick_170": (None, ("d2", ())),
        "tick_300": (None, GONE),
    },
)
_row(
    "OLDER_ONLY",
    **_COMMON,
    **{
        "2xx": (delete(), GONE),
        "2xx_d1": (delete(), GONE),
        "2xx_d2": (lookup(DELIVERED, "d2"), SAME),  # d2 was answered: no longer ours
        "2xx_x": (lookup(DELIVERED, "x"), SAME),
        "fail": (IGNORE, GONE),  # d1's late answer
        "fail_d1": (IGNORE, GONE),
        "fail_d2": (lookup(FAILED, "d2"), SAME),
        "fail_x": (lookup(FAILED, "x"), SAME),
        "send_failed_d2": (lookup(FAILED, "d2"), SAME),
        "sent_d3": (None, ("d3", ("d1",))),
        "tick_170": (None, GONE),
        "tick_300": (None, GONE),
    },
)


def test_the_table_covers_every_event_in_every_state() -> None:
    assert set(TABLE) == {(s, e) for s in STATES for e in EVENTS}


@pytest.mark.parametrize(("state", "event"), sorted(TABLE))
def test_event_in_state(state: str, event: str) -> None:
    tracker = STATES[state]()
    assert tracker.flights(MID) == STATE_OF[state]
    action, after = TABLE[state, event]
    assert EVENTS[event](tracker) == action
    assert tracker.flights(MID) == (STATE_OF[state] if after == SAME else after)


def test_a_reminder_delivery_is_released_as_a_reminder() -> None:
    t = _unknown()
    t.sent(MID, "r1", REMINDER, 100)
    assert t.reply(MID, 500) == release("r1", reminder=True)
    t.sent(MID, "r2", REMINDER, 100)
    assert t.reply(MID, 200, "r2") == delete(reminder=True)


def test_late_replies_stay_recognised_for_timer_f_with_short_leases() -> None:
    t = DeliveryTracker(lease_seconds=5)
    assert t.late_window == 32  # RFC 3261 Timer F
    t.sent(MID, "d1", DUMP, 105)
    t.tick(120)  # d1's lease ran out 15 s ago: its 408 may still come
    t.sent(MID, "d2", DUMP, 125)
    assert t.reply(MID, 408) == IGNORE
    assert t.flights(MID) == ("d2", ())


def test_pruning_runs_at_most_once_per_window() -> None:
    t = _one()
    t.tick(110)  # prunes nothing, next prune at 170
    t.tick(169)  # not yet due: d1 (forgettable from 160) is kept
    assert t.flights(MID) == ("d1", ())
    t.tick(170)
    assert t.flights(MID) == GONE and len(t) == 0


# ---- bad input: the same typed answer whatever the driver (issue 9.8)


@pytest.mark.parametrize(
    ("mid", "code", "token"),
    [
        (None, 200, None),
        ("7", 200, None),
        (True, 200, None),
        (7.0, 500, None),
        (7, 200, 5),
        (7, 200, ""),
        (7, 200, "x" * 65),
        (7, 200, "t\udcffk"),
        (7, 99, None),
        (7, 700, None),
        (7, True, None),
        (7, "200", None),
        (None, 180, None),
    ],
)
def test_bad_reply_arguments_raise_invalid_request(
    mid: object, code: object, token: object
) -> None:
    t = _one()
    with pytest.raises(InvalidRequest):
        t.reply(mid, code, token)  # type: ignore[arg-type]
    assert t.flights(MID) == ("d1", ())


@pytest.mark.parametrize("mid", [-1, 2**63, -(2**63)])
@pytest.mark.parametrize(("code", "outcome"), [(200, IGNORE), (500, IGNORE), (180, PENDING)])
def test_ids_no_store_can_hold_are_unknown(mid: int, code: int, outcome: Action) -> None:
    assert _one().reply(mid, code, "d1") == outcome


def test_longest_token_is_accepted() -> None:
    assert _unknown().reply(MID, 500, "t" * 64) == lookup(FAILED, "t" * 64)


# ---- the second half of a lookup, and what the driver's answer means


def _stored(lease_token: str | None, snd_time: int = 0) -> StoredMessage:
    return StoredMessage(
        "sip:b@x",
        "sip:a@y",
        "a",
        "y",
        b"",
        "text/plain",
        1,
        9,
        snd_time,
        mid=MID,
        lease_token=lease_token,
    )


@pytest.mark.parametrize(
    ("lookup_action", "row", "expected"),
    [
        (lookup(DELIVERED), None, IGNORE),
        (lookup(DELIVERED), _stored(None), IGNORE),  # never sent, or already released
        (lookup(DELIVERED), _stored("other"), delete()),
        (lookup(DELIVERED, "x"), _stored(None), delete()),  # delivered, its lease released
        (lookup(DELIVERED, "x"), _stored("other", snd_time=5), delete(reminder=True)),
        (lookup(FAILED, "x"), _stored("x"), release("x")),
        (lookup(FAILED, "x"), _stored("y", snd_time=5), release("x", reminder=True)),
        (lookup(FAILED, "x"), None, IGNORE),
        (lookup(FAILED), _stored("x"), IGNORE),
        (IGNORE, _stored("x"), IGNORE),
    ],
)
def test_on_row(lookup_action: Action, row: StoredMessage | None, expected: Action) -> None:
    assert _unknown().on_row(lookup_action, row) == expected


@pytest.mark.parametrize(
    ("action", "result", "outcome", "counters"),
    [
        (delete(), True, ReplyOutcome.DELIVERED, ("dumped_messages",)),
        (delete(reminder=True), True, ReplyOutcome.DELIVERED, ("dumped_reminders",)),
        (delete(), False, ReplyOutcome.IGNORED, ()),
        (release("t"), ReleaseResult.RELEASED, ReplyOutcome.RETRY, ("failed_messages",)),
        (
            release("t", reminder=True),
            ReleaseResult.RELEASED,
            ReplyOutcome.RETRY,
            ("failed_reminders",),
        ),
        (
            release("t"),
            ReleaseResult.DROPPED,
            ReplyOutcome.DROPPED,
            ("failed_messages", "dropped_messages"),
        ),
        (release("t"), ReleaseResult.NOT_FOUND, ReplyOutcome.IGNORED, ()),
        (PENDING, None, ReplyOutcome.PENDING, ()),
        (IGNORE, None, ReplyOutcome.IGNORED, ()),
    ],
)
def test_settle(
    action: Action,
    result: bool | ReleaseResult | None,
    outcome: ReplyOutcome,
    counters: tuple[str, ...],
) -> None:
    settled = settle(action, result)
    assert (settled.outcome, settled.counters) == (outcome, counters)


def test_sent_many_records_each_delivery_as_sent_does() -> None:
    t = _one()
    t.sent_many([MID, 8], "d2", REMINDER, 200)
    assert t.flights(MID) == ("d2", ("d1",))  # d1 superseded, as by sent()
    assert t.flights(8) == ("d2", ())
    assert t.reply(8, 500, "d2") == Action(Op.RELEASE, 8, "d2", reminder=True)
    assert t.reply(MID, 200, "d2") == Action(Op.DELETE, MID, reminder=True)
    assert len(t) == 0
