"""SQLite store files are private: a new database and its -wal/-shm are 0600 whatever the umask;
an existing file keeps the mode its owner gave it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from libmsilo import MsiloSettings, Silo
from libmsilo.errors import StorageError

ALICE = "sip:alice@example.com"


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}


def _use(url: str) -> None:
    """Open the store, write (so the WAL exists) and read while still open."""
    with Silo.from_settings(MsiloSettings(db_url=url, timezone="UTC")) as silo:
        silo.driver.delete_expired(0)  # a write: the -wal file now exists
        assert silo.count(ALICE) == 0


@pytest.mark.parametrize("umask", [0o022, 0o000, 0o277])
def test_new_database_and_its_wal_and_shm_are_owner_only(tmp_path: Path, umask: int) -> None:
    with _umask(umask):
        _use(f"sqlite:///{tmp_path / 'store.db'}")
        modes = _modes(tmp_path)  # -wal and -shm exist while a connection is open; check after
    assert modes.get("store.db") == 0o600, modes
    assert all(mode == 0o600 for mode in modes.values()), modes


def test_wal_and_shm_are_private_while_open(tmp_path: Path) -> None:
    with (
        _umask(0o022),
        Silo.from_settings(
            MsiloSettings(db_url=f"sqlite:///{tmp_path / 'store.db'}", timezone="UTC")
        ) as silo,
    ):
        silo.driver.delete_expired(0)
        silo.count(ALICE)
        modes = _modes(tmp_path)
    assert {"store.db", "store.db-wal", "store.db-shm"} <= set(modes), modes
    assert set(modes.values()) == {0o600}, modes


def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    path.touch()
    path.chmod(0o640)
    with (
        _umask(0o022),
        Silo.from_settings(MsiloSettings(db_url=f"sqlite:///{path}", timezone="UTC")) as silo,
    ):
        silo.driver.delete_expired(0)
        modes = _modes(tmp_path)
    assert modes["shared.db"] == 0o640
    assert modes.get("shared.db-wal") == 0o640  # SQLite copies the database's mode


def test_uri_form_and_read_only_databases(tmp_path: Path) -> None:
    path = tmp_path / "uri.db"
    with _umask(0o022):
        _use(f"sqlite:///file:{path}?uri=true")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    missing = tmp_path / "ro.db"
    with pytest.raises(StorageError):  # SQLite refuses to open a missing read-only file
        _use(f"sqlite:///file:{missing}?mode=ro&uri=true")
    assert not missing.exists()
