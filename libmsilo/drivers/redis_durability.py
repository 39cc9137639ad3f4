"""Whether a write the Redis driver acknowledges survives a restart or a failover.

On first connection :func:`check_persistence` reads the server's ``appendonly`` and ``save``
settings (where ``CONFIG GET`` is allowed) and logs a warning when both are off: such a server
loses every stored message when it restarts. :class:`WaitPolicy` makes each write wait until
replicas (``WAIT``) or the append-only file (``WAITAOF``, Redis 7.2+) hold it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis.exceptions as rexc

from ..errors import SettingsError, StorageError

__all__ = ["WaitPolicy", "check_persistence", "has_waitaof", "prepare"]

log = logging.getLogger("libmsilo")


@dataclass(frozen=True, slots=True)
class WaitPolicy:
    """Each write waits for ``replicas`` replicas (and, with ``aof``, the local append-only
    file) to hold it, at most ``timeout`` seconds; fewer acknowledgements are an error."""

    replicas: int = 0
    timeout: float = 1.0
    aof: bool = False

    @property
    def enabled(self) -> bool:
        """Whether writes wait at all."""
        return self.replicas > 0 or self.aof

    def command(self) -> tuple[str | int, ...]:
        """``WAITAOF 1 replicas ms`` with ``aof``, else ``WAIT replicas ms``."""
        ms = max(1, round(self.timeout * 1000))
        if self.aof:
            return ("WAITAOF", 1, self.replicas, ms)
        return ("WAIT", self.replicas, ms)

    def check(self, reply: Any) -> None:
        """Raise :class:`StorageError` when ``reply`` (of :meth:`command`) falls short."""
        if isinstance(reply, Exception):
            raise StorageError(f"redis: waiting for the write to be durable failed: {reply}")
        if self.aof:
            local, replicas = (int(v) for v in reply)
        else:
            local, replicas = 1, int(reply)
        if local < 1 or replicas < self.replicas:
            where = [] if local >= 1 else ["the append-only file"]
            if replicas < self.replicas:
                where.append(f"{self.replicas} replicas ({replicas} did)")
            raise StorageError(
                f"redis: the write was applied but not confirmed by {' and '.join(where)} "
                f"within {self.timeout:g} s; it may be lost if the server fails now"
            )


def _config(client: Any, name: str) -> str | None:
    """One ``CONFIG GET`` value, or None when the server does not let us read it."""
    try:
        values = client.config_get(name)
    except (rexc.ResponseError, rexc.NoPermissionError):
        return None  # CONFIG renamed or disabled, or not allowed by an ACL
    value = values.get(name) if isinstance(values, dict) else None
    return None if value is None else str(value)


def check_persistence(client: Any, where: str) -> None:
    """Log a warning naming the risk when the server at ``where`` keeps neither an
    append-only file nor RDB snapshots; say nothing when its settings cannot be read."""
    appendonly, save = _config(client, "appendonly"), _config(client, "save")
    if appendonly is None or save is None:
        log.info("redis at %s: cannot read its persistence settings (CONFIG GET)", where)
        return
    if appendonly.lower() == "no" and not save.strip():
        log.warning(
            'redis at %s has neither AOF (appendonly no) nor RDB snapshots (save ""): '
            "a restart of the server loses every stored message; turn on appendonly "
            "(see docs/PRODUCTION.md)",
            where,
        )


def has_waitaof(client: Any) -> bool:
    """Whether the server knows ``WAITAOF`` (Redis 7.2+)."""
    try:
        client.execute_command("WAITAOF", 0, 0, 1)
    except rexc.ResponseError:
        return False  # unknown command (or refused)
    return True


def prepare(client: Any, policy: WaitPolicy | None, where: str, *, clustered: bool) -> None:
    """What the driver checks once connected: persistence, and that ``policy`` can be met."""
    policy = policy or WaitPolicy()
    if clustered:
        if policy.enabled:
            raise SettingsError(
                "redis_wait_replicas/redis_wait_aof: not supported on redis+cluster:// "
                "(use them with redis:// or rediss://)"
            )
        for node in client.get_primaries():
            check_persistence(client.get_redis_connection(node), f"{where} ({node.name})")
        return
    check_persistence(client, where)
    if policy.aof:
        if not has_waitaof(client):
            raise SettingsError(
                f"redis_wait_aof: the server at {where} has no WAITAOF (Redis 7.2 or later)"
            )
        if (_config(client, "appendonly") or "").lower() != "yes":
            raise SettingsError(f"redis_wait_aof: the server at {where} has appendonly off")
