"""Test helpers shipped with libmsilo: the driver conformance suite for third-party drivers."""

from .conformance import DriverConformance, make_message, unique_table

__all__ = ["DriverConformance", "make_message", "unique_table"]
