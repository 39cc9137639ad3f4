"""When the timers are due: the expiry purge and the reminder sweep [BEHAVIOUR.md §5]."""

from __future__ import annotations

from dataclasses import dataclass

from .policy import Policy

__all__ = ["MIN_PAUSE", "TimerSchedule"]

#: The shortest pause of a timer loop between two steps, in seconds.
MIN_PAUSE = 0.05


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
        """How long a timer loop may sleep before something is due."""
        times = [t for t in (self.next_purge, self.next_reminders) if t is not None]
        if policy.reminders_enabled and self.next_reminders is None:
            return 0.0
        return max(0.0, min(times) - now) if times else 0.0

    def pause(self, now: float, policy: Policy, poll: float) -> float:
        """The sleep of a timer loop after a step: until the next timer, at most ``poll``."""
        return min(max(self.seconds_to_next(now, policy), MIN_PAUSE), poll)
