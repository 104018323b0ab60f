"""Connections to the bot's own state: Redis (pending actions, caches) and PostgreSQL (action log).

Usage::

    state = State(settings)
    state.redis.ping(); state.action_log.append(...)
    state.close()

Connections are created lazily, so commands that need neither (``help``) and
the ``/healthz`` probe work with both down.
"""

from __future__ import annotations

from functools import cached_property

import redis
from psycopg_pool import ConnectionPool

from bot.actionlog import ActionLog
from bot.config import Settings
from bot.schema import migrate

__all__ = ["State"]


class State:
    def __init__(self, settings: Settings):
        self.settings = settings

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.settings.state.redis_url, socket_timeout=5, socket_connect_timeout=3, health_check_interval=30
        )

    @cached_property
    def pool(self) -> ConnectionPool:
        return ConnectionPool(
            self.settings.state.database_url,
            min_size=1,
            max_size=8,
            open=True,
            timeout=5,
            kwargs={"connect_timeout": 5, "application_name": "opsbot"},
            name="opsbot-state",
        )

    @cached_property
    def action_log(self) -> ActionLog:
        return ActionLog(self.pool, self.settings.state.db_schema)

    def migrate(self) -> list[str]:
        with self.pool.connection() as conn:
            return migrate(conn, self.settings.state.db_schema)

    def close(self) -> None:
        if "pool" in self.__dict__:
            self.pool.close()
        if "redis" in self.__dict__:
            self.redis.close()
