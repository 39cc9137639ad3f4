"""The pure core loads neither pydantic nor the drivers (checked in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from libmsilo import MsiloSettings
from libmsilo.core.policy import Policy

_FORBIDDEN = ("pydantic", "pydantic_settings", "libmsilo.drivers", "libmsilo.settings")


def _imported_modules(statement: str) -> list[str]:
    """Every module ``python -X importtime -c statement`` reports, plus what ``sys.modules``
    holds afterwards (importtime does not see modules loaded through ``importlib``)."""
    probe = f"{statement}\nimport sys\nprint('\\n'.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    names = done.stdout.split()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.append(line.rsplit("|", 1)[1].strip())
    return names


@pytest.mark.parametrize("statement", ["import libmsilo.core", "import libmsilo.records"])
def test_core_loads_no_pydantic_and_no_driver(statement: str) -> None:
    loaded = _imported_modules(statement)
    assert "libmsilo.core" in loaded or "libmsilo.records" in loaded
    bad = [m for m in loaded if m.startswith(_FORBIDDEN)]
    assert bad == []


def test_the_facade_still_loads_them() -> None:
    # The check above can fail: the same probe sees pydantic when the settings are imported.
    loaded = _imported_modules("import libmsilo; libmsilo.MsiloSettings")
    assert "pydantic" in loaded and "libmsilo.settings" in loaded


def test_default_settings_give_the_default_policy() -> None:
    policy = MsiloSettings(timezone="UTC").policy()
    assert policy == Policy(zone=policy.zone, templates=policy.templates)
    assert policy.templates == {}


def test_policy_carries_every_setting_the_core_reads() -> None:
    s = MsiloSettings(
        timezone="UTC",
        from_address="sip:registrar@example.com",
        offline_message="offline",
        content_type_hdr="Content-Type: text/plain\r\n",
        reminder="sip:reminder@example.com",
        send_time=10,
        check_time=40,
        clean_period=3,
        max_messages=4,
        max_attempts=2,
        profile="kamailio",
    )
    p = s.policy()
    assert p.notices_enabled and p.reminders_enabled
    assert p.purge_interval == 120 and p.lease_seconds == s.lease_seconds == 40
    assert (p.max_messages, p.max_attempts, p.dump_to_contact) == (4, 2, False)
    assert p.template("offline_message") is s.template("offline_message")
