"""What a reply means for a delivery, and when the timers are due [§4]."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..errors import InvalidRequest
from .policy import Policy

__all__ = ["ReplyClass", "TimerSchedule", "classify_reply"]


class ReplyClass(enum.Enum):
    """What a final or provisional reply means for a delivery."""

    PROVISIONAL = "provisional"  # 1xx: no decision yet
    DELIVERED = "delivered"  # 2xx: delete the row now
    FAILED = "failed"  # >= 300 (a local timeout counts as 408): release the lease


def classify_reply(status_code: int) -> ReplyClass:
    """Map a SIP status code to its meaning for the stored message [§4]."""
    if isinstance(status_code, bool) or not 100 <= status_code <= 699:
        raise InvalidRequest(f"{status_code!r} is not a SIP status code (100-699)")
    if status_code < 200:
        return ReplyClass.PROVISIONAL
    if status_code < 300:
        return ReplyClass.DELIVERED
    return ReplyClass.FAILED


@dataclass(slots=True)
class TimerSchedule:
    """When the purge and the reminder sweep are next due (epoch seconds, None = at once)."""

    next_purge: float | None = None
    next_reminders: float | None = None

    def due(self, now: float, policy: Policy) -> tuple[bool, bool]:
        """Whether the purge and the reminder sweep run at ``now``; advances the schedule."""
        purge = self.next_purge is None or now >= self.next_purge
        if purge:
            self.next_purge = now + policy.purge_interval
        remind = policy.reminders_enabled and (
            self.next_reminders is None or now >= self.next_reminders
        )
        if remind:
            self.next_reminders = now + policy.send_time
        return purge, remind

    def seconds_to_next(self, now: float, policy: Policy) -> float:
        """How long a timer thread may sleep before something is due."""
        times = [t for t in (self.next_purge, self.next_reminders) if t is not None]
        if policy.reminders_enabled and self.next_reminders is None:
            return 0.0
        return max(0.0, min(times) - now) if times else 0.0
