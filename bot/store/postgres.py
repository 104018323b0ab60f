"""Every PostgreSQL connection opsbot opens goes through here: the targets', the bot's own pool, `check`'s.

Usage::

    params = database_params(settings.databases["main"], settings.base_dir)   # a target's URL and settings
    with connect(params) as conn: ...                                          # one connection
    pool = open_pool(params, name="opsbot-state", configure=...)               # the bot's own pool
    set_local(conn, "statement_timeout", "10000")                              # this transaction only

Behind a transaction-mode pooler (PgBouncer, Supavisor, RDS Proxy: ``pooler: transaction``
or ``?pgbouncer=true``) consecutive transactions of one connection may run on different
server sessions, so: psycopg's automatic prepared statements are off (``prepare_threshold=None``:
a statement prepared on one server session does not exist on the next, or already exists
there); settings are only ever transaction-scoped (:func:`set_local`); advisory locks are only
``pg_advisory_xact_lock``. opsbot keeps to the last two on every database, pooled or not.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from bot.config.pgurl import PgParams, pg_params, with_settings
from bot.store.deadline import Bound

__all__ = ["CONNECT_TIMEOUT", "connect", "connect_kwargs", "database_params", "open_pool", "pooler_in_use",
           "search_path", "set_local", "state_params"]

CONNECT_TIMEOUT = 2  # seconds: a database that does not answer by then is reported, not waited for
CHECK_WAIT = CONNECT_TIMEOUT  # seconds a pool's check() may take for all its idle connections together
_checking = threading.local()  # when the current thread's check() must be over


def connect_kwargs(params: PgParams) -> dict:
    """libpq/psycopg options opsbot adds: its name, a short connect timeout (unless the URL sets one), and no
    prepared statements where the pooler cannot keep them."""
    options: dict = {"application_name": "opsbot"}
    if "connect_timeout" not in params.conninfo:
        options["connect_timeout"] = CONNECT_TIMEOUT
    if not params.prepare:
        options["prepare_threshold"] = None
    return options


def connect(params: PgParams, **extra) -> psycopg.Connection:
    return psycopg.connect(params.conninfo, **{**connect_kwargs(params), **extra})


def open_pool(params: PgParams, *, name: str, configure=None, min_size: int = 1, max_size: int = 8,
              timeout: float = 5.0) -> ConnectionPool:
    """A pool whose every connection is made as :func:`connect` makes one (``connection_limit``/``pool_timeout``
    from a Prisma URL bound its size and wait)."""
    size = params.pool_size or max_size
    return BoundedPool(params.conninfo, min_size=min(min_size, size), max_size=size, open=True,
                       timeout=params.pool_timeout or timeout, configure=configure, kwargs=connect_kwargs(params),
                       name=name)


class BoundedPool(ConnectionPool):
    """A pool whose ``check()`` ends within ``CHECK_WAIT``: psycopg_pool's sends an empty query on each idle
    connection and waits for the answer, which a server that froze never gives; past the wait, the connection still
    being checked, and any after it, is cut (:mod:`bot.store.deadline`) and replaced like a broken one."""

    def check(self) -> None:
        _checking.until = time.monotonic() + CHECK_WAIT
        try:
            super().check()
        finally:
            _checking.until = None

    @staticmethod
    def check_connection(conn: psycopg.Connection) -> None:
        until = getattr(_checking, "until", None)
        with Bound(CHECK_WAIT if until is None else max(0.0, until - time.monotonic())).on(conn):
            ConnectionPool.check_connection(conn)


def set_local(conn: psycopg.Connection, name: str, value: str) -> None:
    """A setting for the current transaction only (``set_config(..., true)``, as ``SET LOCAL``)."""
    conn.execute("SELECT set_config(%s, %s, true)", (name, value))


def search_path(conn: psycopg.Connection, schema: str) -> None:
    """The application's tables in ``schema`` (a Prisma URL's ``schema=``), for this transaction."""
    set_local(conn, "search_path", sql.Identifier(schema).as_string(conn))


def _path(base_dir: str, value: str | None) -> str | None:
    if not value:
        return None
    return str(Path(base_dir, value)) if not Path(value).is_absolute() else value


def database_params(target, base_dir: str = ".") -> PgParams:
    """A database target's connection: its URL sorted (:func:`bot.config.pgurl.pg_params`), its settings on top."""
    params = pg_params(target.url, target.pooler)
    sslmode = target.sslmode or (("verify-full" if target.ca_file else "require") if target.tls else None)
    return with_settings(params, user=target.username,
                         password=target.password.get_secret_value() if target.password else None,
                         sslmode=sslmode, sslrootcert=_path(base_dir, target.ca_file),
                         sslcert=_path(base_dir, target.cert_file), sslkey=_path(base_dir, target.key_file))


def state_params(state) -> PgParams:
    """The bot's own database (``state.database_url``, ``state.database_pooler``)."""
    return pg_params(state.database_url, state.database_pooler)


def pooler_in_use(params: PgParams) -> tuple[bool, str]:
    """Whether a transaction-mode pooler answers, and the evidence.

    Two client connections are open at once and each asks for its server session's PID between
    transactions: directly, or through a session-mode pooler, each client keeps a session of its
    own for its whole life; through a transaction-mode pooler they share server sessions (PgBouncer
    hands the one just released to the next transaction) or one client moves between sessions.
    """
    pid = "SELECT pg_backend_pid()"
    with connect(params, autocommit=True) as first, connect(params, autocommit=True) as second:
        firsts = [first.execute(pid).fetchone()[0]]
        seconds = [second.execute(pid).fetchone()[0]]
        firsts.append(first.execute(pid).fetchone()[0])
        seconds.append(second.execute(pid).fetchone()[0])
        port = first.execute("SELECT inet_server_port()").fetchone()[0]
        client_port = str(first.info.port)
    if set(firsts) & set(seconds):
        return True, "two connections shared one server session"
    if len(set(firsts)) > 1 or len(set(seconds)) > 1:
        return True, "one connection moved between server sessions"
    if port is not None and str(port) != client_port:
        return False, f"a proxy answers on port {client_port} for PostgreSQL's {port} (session mode, or no pooling)"
    return False, "each connection kept its own server session"
