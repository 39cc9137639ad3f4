"""Driver registry: a URL scheme names the backend that stores messages.

Built-in backends are imported lazily, so a missing optional dependency only matters when its
scheme is used, and then it is reported as a :class:`~libmsilo.errors.SettingsError` naming the
extra to install. Third-party drivers register through the ``libmsilo.drivers`` entry-point group
(the entry point's name is the scheme, its value a factory) or :func:`register_driver`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points

from ..errors import SettingsError
from ..masking import mask_url
from ..records import DriverOptions, NewMessage, ReleaseResult, StoredMessage, StoreLayout
from .base import Driver

__all__ = [
    "Driver",
    "DriverOptions",
    "NewMessage",
    "ReleaseResult",
    "StoreLayout",
    "StoredMessage",
    "open_driver",
    "register_driver",
    "url_scheme",
]


DriverFactory = Callable[[str, StoreLayout, DriverOptions], Driver]

# scheme -> (module, factory name, extra that installs its dependency)
_BUILTIN: dict[str, tuple[str, str, str | None]] = {
    "memory": ("libmsilo.drivers.memory", "open_memory", None),
    "sqlite": ("libmsilo.drivers.sql", "open_sql", None),
    "postgresql": ("libmsilo.drivers.sql", "open_sql", "postgres"),
    "postgres": ("libmsilo.drivers.sql", "open_sql", "postgres"),
    "mysql": ("libmsilo.drivers.sql", "open_sql", "mysql"),
    "mariadb": ("libmsilo.drivers.sql", "open_sql", "mysql"),
    "mongodb": ("libmsilo.drivers.mongo", "open_mongo", "mongo"),
    "mongodb+srv": ("libmsilo.drivers.mongo", "open_mongo", "mongo"),
    "mongomock": ("libmsilo.drivers.mongo", "open_mongo", "mongo"),
    "redis": ("libmsilo.drivers.redis", "open_redis", "redis"),
    "rediss": ("libmsilo.drivers.redis", "open_redis", "redis"),
    "redis+cluster": ("libmsilo.drivers.redis", "open_redis", "redis"),
}

_registered: dict[str, DriverFactory] = {}


def register_driver(scheme: str, factory: DriverFactory) -> None:
    """Make ``scheme://`` URLs open with ``factory(url, layout, options)``."""
    _registered[scheme.lower()] = factory


def url_scheme(url: str) -> str:
    """The scheme of a driver URL, lower-cased, without a SQLAlchemy ``+dbapi`` suffix
    (``redis+cluster`` and ``mongodb+srv`` are schemes of their own)."""
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        raise SettingsError(f"db_url: {mask_url(url)!r} is not a URL (scheme://...)")
    scheme = scheme.lower()
    if scheme in _BUILTIN or scheme in _registered:
        return scheme
    return scheme.split("+", 1)[0]


def _find(scheme: str) -> DriverFactory:
    if scheme in _registered:
        return _registered[scheme]
    if scheme in _BUILTIN:
        module_name, attr, extra = _BUILTIN[scheme]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if (exc.name or "").startswith("libmsilo"):
                raise  # a broken libmsilo module, not a missing optional package
            hint = f"; install it with: pip install 'libmsilo[{extra}]'" if extra else ""
            raise SettingsError(
                f"db_url: the {scheme!r} driver needs a missing package ({exc.name}){hint}"
            ) from exc
        factory: DriverFactory = getattr(module, attr)
        return factory
    for ep in entry_points(group="libmsilo.drivers"):
        if ep.name.lower() == scheme:
            loaded: DriverFactory = ep.load()
            _registered[scheme] = loaded
            return loaded
    raise SettingsError(f"db_url: no driver for the URL scheme {scheme!r}")


def open_driver(
    url: str, layout: StoreLayout | None = None, options: DriverOptions | None = None
) -> Driver:
    """Open the driver that ``url`` names."""
    factory = _find(url_scheme(url))
    return factory(url, layout or StoreLayout(), options or DriverOptions())
