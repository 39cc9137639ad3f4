"""Test helpers shipped with libmsilo.

- The policy-testing kit (pytest plugin in :mod:`libmsilo.testing.plugin`, active once libmsilo
  is installed): :class:`FakeClock`, the :mod:`~libmsilo.testing.sip` request builders,
  simulated phones, :func:`assert_stored`, :func:`assert_notice`, snapshot checks.
- The driver conformance suite for third-party drivers: :class:`DriverConformance`.
"""

from . import sip
from .assertions import assert_no_notice, assert_notice, assert_stored
from .clock import FakeClock
from .conformance import DriverConformance, make_message, unique_table
from .phone import PhoneNetwork, SimulatedPhone
from .silos import isolated_settings, open_test_silo
from .snapshots import SnapshotChecker, render_messages

__all__ = [
    "DriverConformance",
    "FakeClock",
    "PhoneNetwork",
    "SimulatedPhone",
    "SnapshotChecker",
    "assert_no_notice",
    "assert_notice",
    "assert_stored",
    "isolated_settings",
    "make_message",
    "open_test_silo",
    "render_messages",
    "sip",
    "unique_table",
]
