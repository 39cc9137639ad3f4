"""Kamailio KEMI script (app_python3): registrar + MESSAGE relay, with libmsilo as msilo.

Loaded by ``kamailio.cfg`` beside it. The settings come from ``MSILO_*`` environment variables
(``MSILO_DB_URL``, ``MSILO_FROM_ADDRESS``, ...; see the README), so one script serves every
backend. Kamailio's interpreter must be able to import libmsilo: see docs/kamailio.md.
"""

from __future__ import annotations

import KSR

from libmsilo import MsiloSettings
from libmsilo.kamailio import KamailioMsilo


def mod_init() -> Router:
    """Called once by app_python3 in Kamailio's main process, before the workers fork."""
    return Router(KamailioMsilo(MsiloSettings()))


class Router:
    """The routing logic; app_python3 calls its methods by name."""

    def __init__(self, msilo: KamailioMsilo) -> None:
        self.msilo = msilo

    def child_init(self, rank: int) -> int:
        return self.msilo.child_init(rank)

    def ksr_request_route(self, msg: object) -> int:
        if KSR.maxfwd.process_maxfwd(10) < 0:
            KSR.sl.send_reply(483, "Too Many Hops")
            return 1
        if KSR.is_method("REGISTER"):
            if KSR.registrar.save("location", 0) < 0:
                KSR.sl.reply_error()
                return 1
            self.msilo.dump()  # m_dump: the stored messages go to the new contact
            return 1
        if not KSR.is_method("MESSAGE"):
            KSR.sl.send_reply(405, "Method Not Allowed")
            return 1
        if not KSR.is_myself_ruri():  # not for a local user (e.g. a notice to a contact)
            if KSR.tm.t_relay() < 0:
                KSR.sl.reply_error()
            return 1
        reminder = KSR.pv.get("$hdr(X-Reminder-Time)")
        if reminder is not None:
            # A reminder: stored whatever the recipient's state, sent at its time (snd_time_avp).
            KSR.pv.sets("$avp(snd_time)", reminder)
            if self.msilo.store(notify=False) < 0:
                KSR.sl.send_reply(500, "Not Stored")
            return 1
        if KSR.registrar.lookup("location") < 0:
            if self.msilo.store() < 0:  # m_store; answers 202 and notifies the sender
                KSR.sl.send_reply(500, "Not Stored")
            return 1
        KSR.tm.t_on_failure("ksr_failure_message")
        if KSR.tm.t_relay() < 0:
            KSR.sl.reply_error()
        return 1

    # app_python3 looks these up for every reply and every sent request: define them.
    def ksr_reply_route(self, msg: object) -> int:
        return 1

    def ksr_onsend_route(self, msg: object) -> int:
        return 1

    def ksr_failure_message(self, msg: object) -> int:
        # As msilo's sample: a relayed MESSAGE answered 408/480/503 is stored for later.
        self.msilo.store_failed()
        return 1

    def ksr_uac_reply(self, msg: object, evname: str = "") -> int:
        # uac's event_callback: the final reply to a dumped MESSAGE or reminder.
        self.msilo.on_uac_reply()
        return 1

    def ksr_msilo_timer(self, msg: object, evname: str = "") -> int:
        # rtimer: reminders and the expiry purge (leases keep several processes apart).
        self.msilo.on_timer()
        return 1
