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
from ..records import DriverOptions, NewMessage, ReleaseResult, StoredMessage, StoreLayout
from . import schemes
from .base import Driver
from .schemes import SCHEMES

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

_registered: dict[str, DriverFactory] = {}


def register_driver(scheme: str, factory: DriverFactory) -> None:
    """Make ``scheme://`` URLs open with ``factory(url, layout, options)``."""
    _registered[scheme.lower()] = factory


def url_scheme(url: str) -> str:
    """The scheme of a driver URL, lower-cased, without a SQLAlchemy ``+dbapi`` suffix
    (``redis+cluster``, ``mongodb+srv`` and registered schemes are schemes of their own)."""
    return schemes.url_scheme(url, set(_registered))


def _find(scheme: str) -> DriverFactory:
    if scheme in _registered:
        return _registered[scheme]
    builtin = SCHEMES.get(scheme)
    if builtin is not None:
        extra = builtin.extra
        try:
            module = importlib.import_module(builtin.module)
        except ImportError as exc:
            if (exc.name or "").startswith("libmsilo"):
                raise  # a broken libmsilo module, not a missing optional package
            hint = f"; install it with: pip install 'libmsilo[{extra}]'" if extra else ""
            raise SettingsError(
                f"db_url: the {scheme!r} driver needs a missing package ({exc.name}){hint}"
            ) from exc
        factory: DriverFactory = getattr(module, builtin.factory)
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
