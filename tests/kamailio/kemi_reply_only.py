"""The example's KEMI routing with the store left out: every offline MESSAGE is answered 202
and stored nowhere. benchmarks/kamailio_store_rate.py measures Kamailio + app_python3 with it,
the floor under Kamailio + libmsilo."""

from __future__ import annotations

import sys
from pathlib import Path

import KSR

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "kamailio"))

import msilo_kemi


def _reply_only(owner: str | None = None, *, notify: bool = True, reply: bool = True) -> int:
    KSR.sl.send_reply(202, "Accepted")
    return 1


def mod_init() -> msilo_kemi.Router:
    router = msilo_kemi.mod_init()
    router.msilo.store = _reply_only
    return router
