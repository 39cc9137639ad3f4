"""Issue 9, "Also": values the C modules accept keep their meaning through store and dump, on
every backend: a negative ``max_messages`` is no quota, a non-zero ``add_date`` turns the date
prefix on, a non-zero ``use_contact`` sends the notice to the sender's Contact."""

from __future__ import annotations

import pytest

from libmsilo import MsiloSettings
from tests.helpers import make_silo, message, register

pytestmark = pytest.mark.usefixtures("backend")  # every backend: tests/conftest.py

CFG = """
modparam("msilo", "max_messages", -1)
modparam("msilo", "add_date", 2)
modparam("msilo", "use_contact", 5)
"""


def test_kamailio_values_through_store_and_dump() -> None:
    cfg = MsiloSettings.from_kamailio_cfg(CFG)
    values = {k: getattr(cfg, k) for k in ("max_messages", "add_date", "use_contact")}
    assert values == {"max_messages": 0, "add_date": True, "use_contact": True}
    silo = make_silo(
        **values,
        from_address="sip:registrar@example.com",
        offline_message="offline",
        content_type_hdr="Content-Type: text/plain\r\n",
    )
    contact = [("Contact", "<sip:bob@192.0.2.44:5062>")]
    results = [silo.store(message(body=f"m{i}".encode(), extra=contact)) for i in range(5)]
    assert all(r.stored for r in results)  # no quota
    assert results[0].notice is not None and results[0].notice.ruri == "sip:bob@192.0.2.44:5062"
    out = silo.dump(register())
    assert len(out) == 5
    assert all(m.body.startswith(b"[Offline message - ") for m in out)
