"""``Policy``: the settings the core decides with, as one frozen plain value.

:meth:`libmsilo.MsiloSettings.policy` builds it once, after validation; the core reads nothing
else, so it needs neither pydantic nor the settings module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from types import MappingProxyType

from ..templating import Template
from ..timefmt import local_zone

__all__ = ["TEMPLATE_NAMES", "TRANSACTION_TIMEOUT", "Policy"]

#: RFC 3261 Timer F for T1 = 500 ms: a non-INVITE transaction ends within 32 s.
TRANSACTION_TIMEOUT = 32

#: The settings that are templates, rendered per request.
TEMPLATE_NAMES = (
    "from_address", "contact_hdr", "offline_message", "content_type_hdr", "extra_hdrs",
)  # fmt: skip


def _no_templates() -> Mapping[str, Template]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Policy:
    """What store, dump, replies and timers follow; the defaults are ``MsiloSettings()``'s."""

    zone: tzinfo = field(default_factory=local_zone)
    templates: Mapping[str, Template] = field(default_factory=_no_templates)  # by name
    reminder: str | None = None  # From URI of reminders
    outbound_proxy: str | None = None
    expire_time: int = 259200  # seconds a stored message lives
    lease_seconds: int = TRANSACTION_TIMEOUT  # how long a sent message awaits its reply
    purge_interval: int = 150  # seconds between expiry purges (check_time * clean_period)
    send_time: int = 0  # seconds between reminder sweeps, 0 = no sweep
    max_messages: int = 0  # per-owner quota, 0 = none
    max_attempts: int = 0  # failed attempts before a row is dropped, 0 = never
    max_body_size: int = 65536
    snd_time_avp: str | None = None
    use_contact: bool = True
    add_date: bool = True
    add_contact: bool = True
    notify_loop_guard: bool = True
    dump_to_contact: bool = True  # deliver dumps to the REGISTER contact (libmsilo profile)
    kamailio_columns: bool = False  # keep extra header lines, store the bare Content-Type
    extra_hdrs_avp: str | None = None  # AVP whose string replaces the kept header lines
    keep_call_id: bool = False  # use_mode bit 1: keep the Call-ID, reuse it when dumping

    def template(self, name: str) -> Template | None:
        """The compiled template of a :data:`TEMPLATE_NAMES` setting (None when unset)."""
        return self.templates.get(name)

    @property
    def notices_enabled(self) -> bool:
        """Whether stores may produce an offline notice."""
        return "from_address" in self.templates and "offline_message" in self.templates

    @property
    def reminders_enabled(self) -> bool:
        """Whether the reminder sweep runs (``reminder`` set and ``send_time > 0``)."""
        return self.reminder is not None and self.send_time > 0
