"""The msilo logic, sans I/O: pure functions and state machines over plain values, the clock
passed in.

Who owns a message, which row to write, whether a REGISTER may trigger a dump, what MESSAGE to
send, what a reply means for each delivery and when the timers are due are all decided here,
under a frozen :class:`Policy`; :mod:`libmsilo.silo` only carries the decisions out on a driver.
This package imports neither pydantic nor the drivers. Section numbers ``[BEHAVIOUR.md §x]`` point
into ``docs/BEHAVIOUR.md``, the project's description of what it does.
"""

from .delivery import (
    Action,
    DeliveryTracker,
    Op,
    ReplyClass,
    ReplyOutcome,
    Settled,
    classify_reply,
    settle,
)
from .dump import DumpPlan, dump_message, dump_target, is_text_plain, plan_dump, reminder_message
from .extra import dump_extra_headers, header_pairs, kamailio_ctype
from .limits import sendable
from .notice import build_notice, notice_target
from .owner import choose_owner, dump_owner, split_owner_uri
from .policy import Policy
from .store import StoreLimits, StoreResult, StoreStatus, build_row, reminder_time, store_limits
from .timers import TimerSchedule

__all__ = [
    "Action",
    "DeliveryTracker",
    "DumpPlan",
    "Op",
    "Policy",
    "ReplyClass",
    "ReplyOutcome",
    "Settled",
    "StoreLimits",
    "StoreResult",
    "StoreStatus",
    "TimerSchedule",
    "build_notice",
    "build_row",
    "choose_owner",
    "classify_reply",
    "dump_extra_headers",
    "dump_message",
    "dump_owner",
    "dump_target",
    "header_pairs",
    "is_text_plain",
    "kamailio_ctype",
    "notice_target",
    "plan_dump",
    "reminder_message",
    "reminder_time",
    "sendable",
    "settle",
    "split_owner_uri",
    "store_limits",
]
