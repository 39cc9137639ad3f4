"""Settings and Silos for tests: hermetic (no ``MSILO_*`` variables, no ``.env``), UTC."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from ..drivers import open_driver
from ..drivers.base import Driver
from ..settings import MsiloSettings
from ..silo import Clock, Silo
from .conformance import unique_table

__all__ = ["isolated_settings", "open_test_silo"]


class _IsolatedSettings(MsiloSettings):
    """MsiloSettings read from the keyword arguments only."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def isolated_settings(**values: Any) -> MsiloSettings:
    """``MsiloSettings(**values)`` that ignores the environment and ``.env`` files, so a
    developer's ``MSILO_*`` variables cannot change a test; ``timezone`` defaults to UTC."""
    values.setdefault("timezone", "UTC")
    return _IsolatedSettings(**values)


def _open_driver(settings: MsiloSettings) -> Driver:
    # No MongoDB TTL index (other drivers ignore ttl_delay): it deletes by the real clock, and
    # a fake clock's times may lie in the real past, so the rows would vanish under the test.
    options = replace(settings.driver_options(), ttl_delay=None)
    driver = open_driver(settings.db_url, settings.layout(), options)
    driver.create_schema()
    return driver


@contextmanager
def open_test_silo(url: str, clock: Clock, **values: Any) -> Iterator[Silo]:
    """A Silo on ``url`` in a table (collection, key prefix) of its own, dropped on exit.

    On MongoDB the TTL index backstop is left out (``DriverOptions.ttl_delay=None``): it
    deletes by the real clock."""
    values = {**values, "db_url": url, "db_table": unique_table("msilo_t")}
    settings = isolated_settings(**values)
    silo = Silo(_open_driver(settings), settings, clock=clock)
    try:
        yield silo
    finally:
        try:
            silo.driver.drop_schema()
        finally:
            silo.close()
