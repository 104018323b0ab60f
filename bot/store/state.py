"""Connections to the bot's own state: Redis (pending actions, caches) and PostgreSQL (action log).

Usage::

    state = State(settings)
    state.redis.ping(); state.action_log.append(...)
    state.close()

Connections are created lazily, so commands that need neither (``help``) and
the ``/healthz`` probe work with both down. The bot owns its schema: the first
connection of a process applies any pending migration (under an advisory lock, so
replicas starting together are safe), unless ``state.run_migrations`` is off; then
commands that need a missing table say in one line to run ``opsbot migrate``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import psycopg
import redis
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from bot.config.pgurl import pg_params
from bot.store.actionlog import ActionLog
from bot.config.settings import Settings, installed_groups
from bot.store.postgres import open_pool, state_params
from bot.store.schema import migrate, pending_migrations

__all__ = ["State"]

POOL_NAME = "opsbot-state"


class _QuietReconnects(logging.Filter):
    """The pool retries a PostgreSQL that is down in the background and warns at every attempt; the action
    log says it once, naming the host (see :class:`bot.store.actionlog.ActionLog`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith(("discarding closed connection", "discarding broken connection")):
            return False  # after a restart or during an outage: said once, by the action log
        return not (message.startswith(("error connecting in", "reconnection attempt in pool"))
                    and POOL_NAME in map(str, record.args or ()))


_quiet = _QuietReconnects()


def describe_database(url: str) -> str:
    """``host:port/dbname`` of a PostgreSQL URL, without credentials."""
    try:
        info = conninfo_to_dict(pg_params(url).conninfo)  # a Prisma URL's parameters are not libpq's
    except Exception:
        return "PostgreSQL"
    return f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


class State:
    """``migrations``: the groups' migration folders (default: those of the installed groups)."""

    def __init__(self, settings: Settings, metrics=None, migrations: Sequence[Path] | None = None):
        self.settings = settings
        self.metrics = metrics
        self.migrations = list(migrations) if migrations is not None else [
            group.migrations for group in installed_groups() if group.migrations]
        self._schema_checked = False
        self._schema_lock = threading.Lock()

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.settings.state.redis_url, socket_timeout=5, socket_connect_timeout=3, health_check_interval=30
        )

    @cached_property
    def ack_redis(self) -> redis.Redis:
        """The state Redis for what must be done before Slack's 3 s are up (queueing a delivery before
        its ack): one attempt with 1 s timeouts, so a Redis that hangs is reported to the user in
        time, where the general client would wait out its 5 s timeout."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return redis.Redis.from_url(self.settings.state.redis_url, socket_timeout=1, socket_connect_timeout=1,
                                    retry=Retry(NoBackoff(), 0))

    @cached_property
    def pool(self) -> ConnectionPool:
        pool_log = logging.getLogger("psycopg.pool")
        if _quiet not in pool_log.filters:
            pool_log.addFilter(_quiet)
        return open_pool(state_params(self.settings.state), name=POOL_NAME, configure=self._ensure_schema,
                         min_size=1, max_size=8, timeout=5)

    def _ensure_schema(self, conn: psycopg.Connection) -> None:
        """On a process's first connection: migrate the bot's schema if it is behind (and that is allowed)."""
        if self._schema_checked:
            return
        with self._schema_lock:
            if self._schema_checked:
                return
            schema = self.settings.state.db_schema
            pending = pending_migrations(conn, schema, self.migrations)
            conn.rollback()  # the pool wants the connection idle, outside any transaction
            if pending and self.settings.state.run_migrations:
                migrate(conn, schema, self.migrations)
            self._schema_checked = True

    @cached_property
    def action_log(self) -> ActionLog:
        state = self.settings.state
        secret = state.log_secret.get_secret_value() if state.log_secret else None
        return ActionLog(self.pool, state.db_schema, self.redis, secret=secret, prefix=state.prefix,
                         metrics=self.metrics, where=describe_database(state.database_url))

    def migrate(self) -> list[str]:
        with self.pool.connection() as conn:
            return migrate(conn, self.settings.state.db_schema, self.migrations)

    def pending_migrations(self, conn: psycopg.Connection) -> list[str]:
        return pending_migrations(conn, self.settings.state.db_schema, self.migrations)

    def close(self, timeout: float = 5.0) -> None:
        """``timeout``: how long to wait for each of the pool's threads (one stuck connecting is left behind)."""
        if "pool" in self.__dict__:
            self.pool.close(timeout=timeout)
        for client in ("redis", "ack_redis"):
            if client in self.__dict__:
                self.__dict__[client].close()
