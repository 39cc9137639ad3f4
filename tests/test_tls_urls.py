"""TLS settings in a store URL reach the database client unchanged (and are never masked):
``rediss://`` against a TLS-only redis-server, PostgreSQL ``sslmode=`` against the local server,
MongoDB ``tls=true`` and ``mongodb+srv://`` as parsed by pymongo (no MongoDB server here)."""

from __future__ import annotations

from typing import Any

import pytest

from libmsilo import MsiloSettings, Silo
from libmsilo.drivers import open_driver
from libmsilo.errors import StorageUnavailable
from libmsilo.masking import mask_url
from libmsilo.testing.conformance import unique_table
from tests.backends import backend_url
from tests.helpers import message
from tests.redis_cluster import redis_tls_url

__all__ = ["redis_tls_url"]  # fixture, imported for pytest

ALICE = "sip:alice@example.com"


def _silo(url: str) -> Silo:
    settings = MsiloSettings(db_url=url, db_table=unique_table(), timezone="UTC", db_timeout=2)
    return Silo.from_settings(settings)


@pytest.mark.parametrize(
    "url",
    [
        "rediss://:pw@cache.example.net:6380/0?ssl_ca_certs=/etc/ssl/ca.pem&ssl_cert_reqs=required",
        "postgresql+psycopg://app:pw@db/msilo?sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem",
        "mongodb+srv://app:pw@cluster0.example.net/msilo?tls=true&retryWrites=true",
        "mongodb://app:pw@h1,h2/msilo?tls=true&tlsCAFile=/etc/ssl/ca.pem&replicaSet=rs0",
    ],
)
def test_masking_keeps_tls_settings(url: str) -> None:
    masked = mask_url(url)
    assert masked == url.replace(":pw@", ":***@", 1)


def test_rediss_stores_and_reads_over_tls(redis_tls_url: str) -> None:
    assert redis_tls_url.startswith("rediss://")
    with _silo(redis_tls_url) as silo:
        silo.driver.drop_schema()
        silo.driver.create_schema()
        assert silo.store(message(body=b"over TLS")).stored
        (row,) = silo.list(ALICE)
        assert row.body.endswith(b"over TLS")
        silo.driver.drop_schema()


def test_rediss_to_a_plain_port_fails_as_unavailable(redis_tls_url: str) -> None:
    """The same server and port without the ``s``: plain text is refused, so TLS is what
    ``rediss://`` gave the test above."""
    plain = redis_tls_url.replace("rediss://", "redis://", 1).partition("?")[0]
    with pytest.raises(StorageUnavailable):
        _silo(plain)


def test_postgresql_sslmode_reaches_libpq() -> None:
    url = backend_url("postgresql")
    with _silo(f"{url}?sslmode=disable") as silo:
        assert silo.count(ALICE) == 0
        silo.driver.drop_schema()
    # The local server has ssl = off: libpq refuses when told TLS is required, which shows
    # the parameter arrived (an ignored sslmode would have connected in plain text).
    with pytest.raises(StorageUnavailable, match="SSL"):
        _silo(f"{url}?sslmode=require")


def _client(url: str) -> Any:
    driver = open_driver(url)
    return driver._client  # type: ignore[attr-defined]


def test_mongodb_tls_true_is_parsed_by_pymongo() -> None:
    on = _client("mongodb://app:pw@127.0.0.1:1/msilo?tls=true&tlsAllowInvalidHostnames=true")
    off = _client("mongodb://app:pw@127.0.0.1:1/msilo?tls=false")
    try:
        assert on.options.pool_options._ssl_context is not None
        assert off.options.pool_options._ssl_context is None
        assert on.options.pool_options._credentials.username == "app"
    finally:
        on.close()
        off.close()


def test_mongodb_srv_is_resolved_with_tls_by_pymongo(monkeypatch: pytest.MonkeyPatch) -> None:
    """``mongodb+srv://`` reaches pymongo unchanged: it asks DNS for the SRV hosts (answered
    here with a closed loopback port, no traffic leaves the machine) and turns TLS on."""
    from pymongo.synchronous.srv_resolver import _SrvResolver

    asked: list[str] = []

    def hosts(resolver: Any) -> list[tuple[str, int]]:
        asked.append(resolver._SrvResolver__fqdn)
        return [("localhost", 1)]

    monkeypatch.setattr(_SrvResolver, "get_hosts", hosts)
    monkeypatch.setattr(_SrvResolver, "get_options", lambda resolver: None)
    client = _client("mongodb+srv://app:pw@cluster0.example.net/msilo?retryWrites=true")
    try:
        assert asked == ["cluster0.example.net"]
        assert client.options.pool_options._ssl_context is not None  # SRV implies tls=true
        servers = client.topology_description.server_descriptions()
        assert list(servers) == [("localhost", 1)]
    finally:
        client.close()
