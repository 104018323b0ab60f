"""Helpers to fill and inspect dead-letter lists the way producers and workers do (SPEC §7)."""

from __future__ import annotations

import json
import time
from collections import Counter

import redis

TYPES = ("send_email", "render_pdf", "sync_crm")
ERRORS = ("SMTP timeout after 30s", "429 rate limit exceeded", "KeyError: 'tenant'")


def dead_letter(index: int, *, failed_ago: float = 3600.0, type_: str | None = None, error: str | None = None,
                now: float | None = None) -> bytes:
    failed = (now or time.time()) - failed_ago
    return json.dumps({
        "id": f"job-{index}", "type": type_ or TYPES[index % 3], "attempts": 5, "error": error or ERRORS[index % 3],
        "failedAt": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(failed)) + f".{int(failed * 1000) % 1000:03d}Z",
        "payload": {"to": f"user{index}@example.com", "smtp_password": "hunter2"},
    }).encode()


def kill(client: redis.Redis, entries: list[bytes], dead: str = "jobs:dead") -> None:
    """Dead letters are LPUSHed, so the first given ends up oldest (rightmost)."""
    for start in range(0, len(entries), 1000):
        client.lpush(dead, *entries[start:start + 1000])


def oldest_first(client: redis.Redis, key: str) -> list[bytes]:
    return list(reversed(client.lrange(key, 0, -1)))


def everything(client: redis.Redis, *keys: str) -> Counter:
    """The multiset of entries across lists (and the requeue's held lists)."""
    total: Counter = Counter()
    for key in list(keys) + [k.decode() for k in client.keys("opsbot:dlq:held:*")]:
        total.update(client.lrange(key, 0, -1))
    return total
