"""Clients for the targets named in app.yaml, created on first use.

Usage::

    targets = Targets(settings)
    targets.redis("main").llen("jobs")           # redis.Redis, or redis.RedisCluster (cluster: true)
    with targets.database("main") as conn:       # read-only, statement timeout (bot/store/postgres.py connects)
        conn.execute("SELECT 1")

Only configured names are accepted: anything else is a CommandError that lists
the configured ones.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import redis
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from bot.config.pgurl import pg_params
from bot.config.settings import Settings
from bot.core.invocation import BadArgument, CommandError
from bot.runtime.redisconn import connect as connect_redis
from bot.store.deadline import Silence
from bot.store.postgres import connect, database_params, search_path, set_local

__all__ = ["SILENCE_GRACE", "Targets", "describe_postgres", "first_line"]

SILENCE_GRACE = 10.0  # seconds past the statement timeout with no answer at all: the database froze, and is cut

def describe_postgres(url: str) -> str:
    """``host:port/dbname`` of a PostgreSQL URL or conninfo, never its password."""
    try:
        info = conninfo_to_dict(pg_params(url).conninfo)  # a Prisma URL's parameters are not libpq's
    except psycopg.ProgrammingError:
        return "(an unreadable database URL)"
    host = info.get("host") or info.get("hostaddr") or "localhost"
    return f"{host}:{info.get('port') or 5432}/{info.get('dbname') or info.get('user') or ''}"


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class Targets:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._redis: dict[str, redis.Redis] = {}
        self._lock = threading.Lock()

    def redis(self, name: str) -> redis.Redis:
        target = self.settings.redis.get(name)
        if target is None:
            raise BadArgument(f"unknown redis connection {name!r}; configured: {', '.join(self.settings.redis) or 'none'}")
        with self._lock:
            if name not in self._redis:
                self._redis[name] = connect_redis(name, target, self.settings.base_dir)
            return self._redis[name]

    @contextmanager
    def database(self, name: str, *, read_only: bool = True, repeatable_read: bool = False,
                 statement_timeout: float | None = None, snapshot: str | None = None) -> Iterator[psycopg.Connection]:
        """A connection in one transaction (read-only unless asked), with the configured statement timeout.

        ``repeatable_read`` gives every query of the transaction one snapshot; ``statement_timeout``
        (seconds) replaces the database's own for long, deliberate reads. ``snapshot`` (from another
        transaction's ``pg_export_snapshot()``, see :meth:`shares_snapshots`) makes this repeatable-read
        transaction see exactly what that one sees.
        """
        target = self._target(name)
        timeout_ms = int((statement_timeout or target.statement_timeout) * 1000)
        params = database_params(target, self.settings.base_dir)
        try:
            conn = connect(params)
        except psycopg.OperationalError as exc:
            raise CommandError(f"database {name!r} at {describe_postgres(target.url)} is unreachable:"
                               f" {first_line(exc)}") from None
        silence = Silence(timeout_ms / 1000 + SILENCE_GRACE)
        with conn:
            conn.read_only = read_only
            if repeatable_read:
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            if snapshot is not None:
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            try:
                with silence.on(conn), conn.transaction():  # settings are the transaction's own: safe behind a
                    if snapshot is not None:  # transaction-mode pooler; a snapshot before any query, as required
                        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
                    set_local(conn, "statement_timeout", str(timeout_ms))
                    if params.schema:
                        search_path(conn, params.schema)
                    yield conn
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if not silence.cut:
                    raise
                raise CommandError(f"database {name!r} at {describe_postgres(target.url)} stopped answering: nothing"
                                   f" came back for {silence.seconds:.0f}s after a query (frozen, or the network"
                                   " drops everything); the connection was cut") from exc

    def shares_snapshots(self, name: str) -> bool:
        """Whether more connections (up to three in all) may join a transaction's exported snapshot
        (``snapshot=``) to read alongside it: not behind a transaction-mode pooler, whose pool may have no
        other server session to give while the first transaction holds one, nor with ``connection_limit``
        under 3."""
        params = database_params(self._target(name), self.settings.base_dir)
        return params.pooler != "transaction" and (params.pool_size is None or params.pool_size >= 3)

    def _target(self, name: str):
        target = self.settings.databases.get(name)
        if target is None:
            raise BadArgument(
                f"unknown database {name!r}; configured: {', '.join(self.settings.databases) or 'none'}"
            )
        return target

    def close(self) -> None:
        with self._lock:
            for client in self._redis.values():
                client.close()
            self._redis.clear()
