"""Kamailio adapter: libmsilo in Kamailio's app_python3 (KEMI) instead of its msilo module.

The KEMI script builds one :class:`KamailioMsilo` in ``mod_init`` and calls it from its routes
(``examples/kamailio/`` is a complete configuration)::

    msilo = KamailioMsilo(MsiloSettings.from_kamailio_cfg(...))   # in mod_init, before the fork
    msilo.child_init(rank)           # in child_init: forget whatever the parent had opened
    msilo.store()                    # request route, lookup failed: 202 + offline notice
    msilo.store_failed()             # failure route of a relayed MESSAGE (408/480/503)
    msilo.dump()                     # request route, after save() of a REGISTER
    msilo.on_uac_reply()             # uac module's event_callback (event_route[uac:reply])
    msilo.on_timer()                 # an rtimer route: reminders and the expiry purge

Every Kamailio process (SIP workers, rtimer processes) opens its own database connection on
first use after the fork; the leases make several processes safe on one store. Dumped MESSAGEs
and reminders leave through ``uac_req_send`` with ``mid:token`` in ``$uac_req(evparam)``, so the
final reply reaches :meth:`Silo.on_reply` in whichever worker receives it.
"""

from __future__ import annotations

import importlib
import os
import site
import sys
import sysconfig
from collections.abc import Callable, Mapping
from typing import Any

from .core import StoreResult
from .errors import InvalidRequest, MsiloError
from .message import AvpValue, OutgoingMessage, SipRequest
from .settings import MsiloSettings
from .silo import ReplyOutcome, Silo

__all__ = ["KamailioMsilo", "pythonpath"]

#: The replies of a relayed MESSAGE after which the failure route stores it, as in msilo's sample.
STORE_ON_FAILURE = frozenset({408, 480, 503})

SiloFactory = Callable[[MsiloSettings], Silo]


def _ksr() -> Any:
    """The ``KSR`` module app_python3 provides (only inside Kamailio)."""
    return importlib.import_module("KSR")


def _open(settings: MsiloSettings) -> Silo:
    return Silo.from_settings(settings, create_schema=False)


class KamailioMsilo:
    """msilo for a Kamailio KEMI script; see the module docstring for where each call goes."""

    def __init__(
        self,
        settings: MsiloSettings,
        *,
        ksr: Any = None,
        factory: SiloFactory = _open,
        create_schema: bool = True,
        reply_code: int = 202,
        reply_reason: str = "Accepted",
    ) -> None:
        self.settings = settings
        # A Kamailio process runs one request at a time: the group commit, which batches the
        # concurrent callers of one Silo, would only ever flush a batch of one (and costs a
        # little per call), so each process's Silo runs without it.
        self._process_settings = settings.model_copy(update={"group_commit": False})
        self._ksr = ksr
        self._factory = factory
        self._silo: Silo | None = None
        self._pid = 0
        self.reply_code = reply_code
        self.reply_reason = reply_reason
        if create_schema:  # once, in the parent: workers do not race to create tables
            with Silo.from_settings(settings, create_schema=True):
                pass

    # ---- process handling

    @property
    def ksr(self) -> Any:
        """The ``KSR`` object (injected in tests, imported inside Kamailio)."""
        if self._ksr is None:
            self._ksr = _ksr()
        return self._ksr

    @property
    def silo(self) -> Silo:
        """This process's :class:`Silo`, opened on first use after a fork."""
        pid = os.getpid()
        if self._silo is None or self._pid != pid:
            # A Silo inherited through fork shares the parent's sockets: drop it unclosed.
            self._silo = self._factory(self._process_settings)
            self._pid = pid
        return self._silo

    def child_init(self, rank: int) -> int:
        """Call from the KEMI object's ``child_init``: the worker opens its own connection."""
        if rank > 0 or rank == -1:  # SIP workers and the timer process; others open lazily
            _ = self.silo
        return 0

    def close(self) -> None:
        """Close this process's store, if open."""
        if self._silo is not None and self._pid == os.getpid():
            self._silo.close()
        self._silo = None

    # ---- the current request

    def request(self, avp_names: tuple[str, ...] = ()) -> SipRequest:
        """The request Kamailio is routing (``$mb``), with its source and the named AVPs."""
        pv = self.ksr.pv
        raw = pv.get("$mb")
        if not isinstance(raw, str):
            raise InvalidRequest("no SIP message in $mb")
        avps: dict[str, AvpValue] = {}
        names = avp_names
        if self.settings.snd_time_avp is not None:
            names = (*names, self.settings.snd_time_avp)
        for name in names:
            value = pv.get(f"$avp({name})")
            if isinstance(value, str | int):
                avps[name] = value
        port = pv.get("$sp")
        source = (str(pv.get("$si")), int(port)) if isinstance(port, int) else None
        dst = pv.get("$du")
        return SipRequest.parse(
            raw.encode("utf-8", "surrogateescape"),
            avps=avps,
            source=source,
            dst_uri=dst if isinstance(dst, str) else None,
        )

    # ---- m_store

    def store(self, owner: str | None = None, *, notify: bool = True, reply: bool = True) -> int:
        """Store the current MESSAGE (``m_store``); reply 202 statelessly when ``reply``.

        Returns 1 when stored, -1 when not (bad request, quota, storage error): the script then
        answers as it sees fit, as it would after msilo's ``m_store`` failed.
        """
        result = self._store(owner, notify)
        if result is None:
            return -1
        if reply:
            self.ksr.sl.send_reply(self.reply_code, self.reply_reason)
        if result.notice is not None:
            self.send(result.notice)
        return 1

    def store_failed(self, owner: str | None = None, *, notify: bool = True) -> int:
        """From a failure route: store the MESSAGE whose relay failed with 408/480/503 and
        answer 202 in its transaction. Returns -1 for other replies or when not stored."""
        tm = self.ksr.tm
        if self.from_self():
            return -1  # our own dump or reminder looped through the proxy: its reply decides
        if _true(tm.t_is_canceled()) or not any(
            _true(tm.t_check_status(str(code))) for code in sorted(STORE_ON_FAILURE)
        ):
            return -1
        if owner is None:
            ouri = self.ksr.pv.get("$ou")
            owner = ouri if isinstance(ouri, str) else None
        result = self._store(owner, notify)
        if result is None:
            return -1
        tm.t_reply(self.reply_code, self.reply_reason)
        if result.notice is not None:
            self.send(result.notice)
        return 1

    def from_self(self) -> bool:
        """Whether the current request was sent by this Kamailio (a dump, reminder or notice
        routed back through it): its source is the socket it arrived on."""
        pv = self.ksr.pv
        return bool(pv.get("$si") == pv.get("$Ri") and pv.get("$sp") == pv.get("$Rp"))

    def _store(self, owner: str | None, notify: bool) -> StoreResult | None:
        flag = self.settings.skip_notification_flag
        if notify and flag >= 0 and _true(self.ksr.isflagset(flag)):
            notify = False  # msilo's skip_notification_flag, set on the request by the script
        try:
            result = self.silo.store(self.request(), owner, notify=notify)
        except MsiloError as exc:
            self.ksr.err(f"msilo: message not stored: {exc}\n")
            return None
        if not result.stored:
            self.ksr.info("msilo: mailbox full, message not stored\n")
            return None
        return result

    # ---- m_dump

    def dump(self, owner: str | None = None) -> int:
        """After ``save()`` of a REGISTER: send the owner's stored messages (``m_dump``).

        Returns how many were sent, or -1 on an error."""
        try:
            messages = self.silo.dump(self.request(), owner)
        except MsiloError as exc:
            self.ksr.err(f"msilo: dump failed: {exc}\n")
            return -1
        for msg in messages:
            self.send(msg)
        return len(messages)

    # ---- sending and replies

    def send(self, msg: OutgoingMessage) -> None:
        """Send ``msg`` with ``uac_req_send``; its final reply comes back to
        :meth:`on_uac_reply` (``mid:token`` ride in ``$uac_req(evparam)``)."""
        pv = self.ksr.pv
        headers = "".join(f"{name}: {value}\r\n" for name, value in msg.headers)
        if msg.content_type and not any(n.lower() == "content-type" for n, _ in msg.headers):
            headers += f"Content-Type: {msg.content_type}\r\n"
        pv.sets("$uac_req(method)", "MESSAGE")
        pv.sets("$uac_req(ruri)", msg.ruri)
        pv.sets("$uac_req(furi)", msg.from_uri)
        pv.sets("$uac_req(turi)", msg.to_uri)
        pv.sets("$uac_req(ouri)", msg.next_hop or "")
        pv.sets("$uac_req(hdrs)", headers)
        pv.sets("$uac_req(body)", msg.body.decode("utf-8", "replace"))
        pv.sets("$uac_req(callid)", msg.call_id or "")  # empty: tm makes a new one
        if msg.mid is not None:
            pv.sets("$uac_req(evparam)", f"{msg.mid}:{msg.lease_token or ''}")
            pv.seti("$uac_req(evroute)", 1)
        else:
            pv.sets("$uac_req(evparam)", "")
            pv.seti("$uac_req(evroute)", 0)
        if self.ksr.uac.uac_req_send() < 0:
            self.ksr.err(f"msilo: uac_req_send failed for {msg.ruri}\n")
            if msg.mid is not None:
                self.silo.send_failed(msg)

    def on_uac_reply(self) -> ReplyOutcome:
        """From the uac ``event_callback``: hand the final reply to :meth:`Silo.on_reply`."""
        pv = self.ksr.pv
        param = pv.get("$uac_req(evparam)")
        code = pv.get("$uac_req(evcode)")
        mid, token = _parse_evparam(param)
        if mid is None:
            return ReplyOutcome.IGNORED
        status = int(code) if isinstance(code, int | str) and str(code).isdigit() else 500
        return self.silo.on_reply(mid, status or 408, token=token)

    # ---- timers

    def on_timer(self) -> int:
        """From an rtimer route: run the due purge and reminder sweep; send due reminders."""
        try:
            messages = self.silo.tick()
        except MsiloError as exc:
            self.ksr.err(f"msilo: timer tick failed: {exc}\n")
            return -1
        for msg in messages:
            self.send(msg)
        return len(messages)


def _true(result: object) -> bool:
    """A KEMI function's verdict: True, or a positive return code."""
    return result is True or (type(result) is int and result > 0)


def _parse_evparam(value: object) -> tuple[int | None, str | None]:
    """``mid:token`` from ``$uac_req(evparam)``; (None, None) when it is not ours."""
    if not isinstance(value, str):
        return None, None
    mid, _, token = value.partition(":")
    if not mid.isdigit():
        return None, None
    return int(mid), token or None


def pythonpath(extra: Mapping[str, str] | None = None) -> str:
    """A ``PYTHONPATH`` that makes this environment's libmsilo and its dependencies importable
    by another interpreter of the same Python minor version (Kamailio's app_python3 embeds
    Debian's ``/usr/bin/python3``)."""
    paths: list[str] = []
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    scheme = sysconfig.get_paths()
    # A virtual environment made with --system-site-packages finds its dependencies in its base
    # interpreter's site-packages as well: site.getsitepackages() lists both.
    for entry in (package_root, scheme["purelib"], scheme["platlib"], *site.getsitepackages()):
        if entry not in paths:
            paths.append(entry)
    env = extra if extra is not None else os.environ
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    return os.pathsep.join(paths)


def _main(argv: list[str]) -> int:
    if argv[1:2] != ["pythonpath"]:
        print("usage: python -m libmsilo.kamailio pythonpath", file=sys.stderr)
        return 2
    print(pythonpath())
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv))
