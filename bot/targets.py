"""Clients for the targets named in app.yaml, created on first use.

Usage::

    targets = Targets(settings)
    targets.redis("main").llen("jobs")
    with targets.database("main") as conn:       # read-only, statement timeout
        conn.execute("SELECT 1")

Only configured names are accepted: anything else is a CommandError that lists
the configured ones (SPEC §8).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import redis

from bot.config import Settings
from bot.invocation import CommandError

__all__ = ["Targets"]


class Targets:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._redis: dict[str, redis.Redis] = {}
        self._lock = threading.Lock()

    def redis(self, name: str) -> redis.Redis:
        target = self.settings.redis.get(name)
        if target is None:
            raise CommandError(f"unknown redis connection {name!r}; configured: {', '.join(self.settings.redis) or 'none'}")
        with self._lock:
            if name not in self._redis:
                self._redis[name] = redis.Redis.from_url(target.url, socket_timeout=10, socket_connect_timeout=3)
            return self._redis[name]

    @contextmanager
    def database(self, name: str, *, read_only: bool = True, repeatable_read: bool = False,
                 statement_timeout: float | None = None) -> Iterator[psycopg.Connection]:
        """A connection in one transaction (read-only unless asked), with the configured statement timeout.

        ``repeatable_read`` gives every query of the transaction one snapshot; ``statement_timeout``
        (seconds) replaces the database's own for long, deliberate reads.
        """
        target = self.settings.databases.get(name)
        if target is None:
            raise CommandError(
                f"unknown database {name!r}; configured: {', '.join(self.settings.databases) or 'none'}"
            )
        timeout_ms = int((statement_timeout or target.statement_timeout) * 1000)
        with psycopg.connect(target.url, connect_timeout=5, application_name="opsbot") as conn:
            conn.read_only = read_only
            if repeatable_read:
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with conn.transaction():
                conn.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
                yield conn

    def close(self) -> None:
        with self._lock:
            for client in self._redis.values():
                client.close()
            self._redis.clear()
