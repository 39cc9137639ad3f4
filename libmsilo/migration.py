"""``libmsilo.migrate()``, what ``msilo migrate`` runs: take a store to this libmsilo's schema.

Run it once per store when upgrading libmsilo (before or while the new workers start: they
refuse an older schema with :class:`~libmsilo.errors.SchemaOutdated`), or to let libmsilo share
an OpenSIPS/Kamailio ``silo`` table with the C module. Every step is idempotent and taken under
the store's schema lock, so any number of processes may run it at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from .drivers.schema_version import Versioned
from .settings import MsiloSettings
from .silo import Silo

__all__ = ["Migration", "migrate"]


@dataclass(frozen=True, slots=True)
class Migration:
    """What :func:`migrate` found and left: schema versions (None: the driver keeps none)."""

    before: int | None
    after: int | None

    @property
    def changed(self) -> bool:
        """True when the store was at an older version."""
        return self.before != self.after


def migrate(settings: MsiloSettings | str | None = None) -> Migration:
    """Upgrade the store that ``settings`` (or a ``db_url``; default: the environment's
    settings) names to :data:`~libmsilo.drivers.schema_version.SCHEMA_VERSION`, step by step,
    keeping its rows. Raises :class:`~libmsilo.errors.StorageError` when there is nothing to
    migrate (no table) or the store is newer than this libmsilo."""
    if isinstance(settings, str):
        settings = MsiloSettings(db_url=settings)
    with Silo.from_settings(settings, create_schema=False) as silo:
        driver = silo.driver
        versioned = driver if isinstance(driver, Versioned) else None
        before = versioned.schema_version() if versioned else None
        driver.migrate()
        after = versioned.schema_version() if versioned else None
    return Migration(before, after)
