"""The msilo logic, sans I/O: pure functions over plain values, the clock passed in.

Who owns a message, which row to write, whether a REGISTER may trigger a dump, what MESSAGE to
send, what a reply means and when the timers are due are all decided here; :mod:`libmsilo.silo`
only wires these decisions to a driver. Section numbers ``[§x]`` point into the msilo reference
(``shared/reference/msilo-behaviour.md``).
"""

from .delivery import ReplyClass, TimerSchedule, classify_reply
from .dump import DumpPlan, dump_message, dump_target, is_text_plain, plan_dump, reminder_message
from .notice import build_notice, notice_target
from .owner import choose_owner, dump_owner, split_owner_uri
from .store import StoreResult, StoreStatus, build_row, reminder_time

__all__ = [
    "DumpPlan",
    "ReplyClass",
    "StoreResult",
    "StoreStatus",
    "TimerSchedule",
    "build_notice",
    "build_row",
    "choose_owner",
    "classify_reply",
    "dump_message",
    "dump_owner",
    "dump_target",
    "is_text_plain",
    "notice_target",
    "plan_dump",
    "reminder_message",
    "reminder_time",
    "split_owner_uri",
]
