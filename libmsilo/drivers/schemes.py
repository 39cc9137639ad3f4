"""The one table of built-in URL schemes: which backend each names, the module and factory that
open it, and the extra that installs its client. The registry, the drivers and ``msilo bench``
read it; nothing else spells out scheme names."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SettingsError
from ..masking import mask_url

__all__ = ["SCHEMES", "Scheme", "scheme_of", "url_scheme"]


@dataclass(frozen=True, slots=True)
class Scheme:
    """One built-in URL scheme."""

    name: str  #: as written in URLs, lower case
    family: str  #: the driver family: ``memory``, ``sql``, ``mongo`` or ``redis``
    backend: str  #: the backend it reaches: ``sqlite``, ``postgresql``, ``mysql``, ``redis``, ...
    module: str  #: the module holding the factory
    factory: str  #: the factory's name in ``module``: ``factory(url, layout, options)``
    extra: str | None = None  #: the ``libmsilo[extra]`` that installs the client, if any
    dbapi: str | None = None  #: SQL only: the SQLAlchemy DBAPI used without ``+dbapi``


def _sql(name: str, backend: str, extra: str | None, dbapi: str | None) -> Scheme:
    return Scheme(name, "sql", backend, "libmsilo.drivers.sql", "open_sql", extra, dbapi)


def _redis(name: str, backend: str) -> Scheme:
    return Scheme(name, "redis", backend, "libmsilo.drivers.redis", "open_redis", "redis")


def _mongo(name: str, backend: str, extra: str) -> Scheme:
    return Scheme(name, "mongo", backend, "libmsilo.drivers.mongo", "open_mongo", extra)


#: Every built-in scheme by name.
SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Scheme("memory", "memory", "memory", "libmsilo.drivers.memory", "open_memory"),
        _sql("sqlite", "sqlite", None, None),
        _sql("postgresql", "postgresql", "postgres", "psycopg"),
        _sql("postgres", "postgresql", "postgres", "psycopg"),
        _sql("mysql", "mysql", "mysql", "pymysql"),
        _sql("mariadb", "mysql", "mysql", "pymysql"),
        _mongo("mongodb", "mongodb", "mongo"),
        _mongo("mongodb+srv", "mongodb", "mongo"),
        _mongo("mongomock", "mongomock", "testing"),
        _redis("redis", "redis"),
        _redis("rediss", "redis"),
        _redis("redis+cluster", "redis+cluster"),
    )
}


def url_scheme(url: str, known: frozenset[str] | set[str] = frozenset()) -> str:
    """The scheme of a driver URL, lower-cased, without a SQLAlchemy ``+dbapi`` suffix
    (``redis+cluster``, ``mongodb+srv`` and the names in ``known`` are schemes of their own)."""
    scheme, sep, _ = url.partition("://")
    if not sep or not scheme:
        raise SettingsError(f"db_url: {mask_url(url)!r} is not a URL (scheme://...)")
    scheme = scheme.lower()
    if scheme in SCHEMES or scheme in known:
        return scheme
    return scheme.split("+", 1)[0]


def scheme_of(url: str, family: str | None = None) -> Scheme:
    """The built-in :class:`Scheme` of ``url``; :class:`SettingsError` when there is none (or
    it is not of ``family``)."""
    found = SCHEMES.get(url_scheme(url))
    if found is None or (family is not None and found.family != family):
        kind = f"a {family} " if family else "a built-in "
        raise SettingsError(f"db_url: {url.partition('://')[0]!r} is not {kind}URL scheme")
    return found
