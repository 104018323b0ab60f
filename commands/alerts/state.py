"""What opsbot remembers of each alert group, in Redis: shared by every replica, claimed one worker at a time.

Usage::

    groups = AlertGroups(redis_client, "opsbot:")
    with groups.holding(gid, timeout=60):          # one worker per group at a time, across replicas
        seen = groups.get(gid)                     # {} the first time
        groups.save(gid, {"ts": "1700.1", "count": 3, ...})

The hold is a lock with an owner token and an expiry (``SET NX PX``), released only by its
owner (compare-and-delete), so a worker that dies frees the group when the lock expires and
Alertmanager's retries, repeats and several replicas still give one thread per group.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TYPE_CHECKING

if TYPE_CHECKING:
    import redis

__all__ = ["AlertGroups", "Busy"]

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
KEEP = 30 * 86400  # seconds a group's record is kept after its last notification


class Busy(Exception):
    """Another worker held the group for longer than we waited (its body is queued again)."""


class AlertGroups:
    def __init__(self, client: redis.Redis, prefix: str):
        self.client = client
        self.prefix = prefix

    def _key(self, gid: str) -> str:
        return f"{self.prefix}alerts:group:{gid}"

    @contextmanager
    def holding(self, gid: str, timeout: float, wait: float | None = None) -> Iterator[None]:
        lock, token = f"{self.prefix}alerts:lock:{gid}", secrets.token_hex(8)
        deadline = time.monotonic() + (timeout if wait is None else wait)
        while not self.client.set(lock, token, nx=True, px=int(timeout * 1000)):
            if time.monotonic() > deadline:
                raise Busy(f"alert group {gid} is held by another worker")
            time.sleep(0.05)
        try:
            yield
        finally:
            self.client.eval(_RELEASE, 1, lock, token)

    def get(self, gid: str) -> dict[str, Any]:
        raw = self.client.get(self._key(gid))
        return json.loads(raw) if raw else {}

    def save(self, gid: str, record: dict[str, Any]) -> None:
        self.client.set(self._key(gid), json.dumps(record), ex=KEEP)
