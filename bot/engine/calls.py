"""Run a command's handler, every failure turned into a Result that explains it: the engine's and the terminal's.

Usage::

    result = call(command, lambda: command.run(inv), settings, metrics)   # never raises

The drivers' errors (Redis, PostgreSQL) are told apart only when the driver is loaded: a
library that was never imported raised nothing, so ``opsbot run help`` loads none of them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from bot.core.invocation import BadArgument, CommandError
from bot.core.registry import Command
from bot.core.result import Result

__all__ = ["call"]

log = logging.getLogger("opsbot.engine")


def call(command: Command, fn: Callable[[], Any], settings: Any, metrics: Any = None) -> Any:
    """``fn()``, or the Result explaining why it failed; a Result returned without a command is given this one."""
    try:
        result = fn()
    except Exception as exc:
        return _explained(command, exc, settings, metrics)
    if isinstance(result, Result) and not result.command:
        result = result.with_(command=command.name)
    return result


def _explained(command: Command, exc: Exception, settings: Any, metrics: Any) -> Result:
    name = command.name
    if isinstance(exc, BadArgument):  # a value that names nothing configured: a usage error (exit 2)
        return Result.error(str(exc), command=name, data={"error": "usage"})
    if isinstance(exc, CommandError):
        return Result.error(str(exc), command=name)
    redis, psycopg, pool = (sys.modules.get(module) for module in ("redis", "psycopg", "psycopg_pool"))
    if redis is not None and isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        _count(metrics, "redis")
        return Result.error(f"Redis is unreachable: {exc}", command=name)
    if redis is not None and isinstance(exc, redis.ResponseError):
        return Result.error(f"Redis refused the operation: {exc}", command=name)
    if (psycopg is not None and isinstance(exc, psycopg.OperationalError)) or (
            pool is not None and isinstance(exc, pool.PoolTimeout)):
        _count(metrics, "postgres")
        return Result.error(f"PostgreSQL is unreachable: {str(exc).strip()}", command=name)
    if psycopg is not None and isinstance(exc, psycopg.errors.QueryCanceled):
        return Result.error("PostgreSQL cancelled the query: the statement timeout was reached.", command=name)
    if psycopg is not None and isinstance(exc, psycopg.errors.UndefinedTable):
        schema = settings.state.db_schema
        if f'"{schema}.' not in str(exc):  # the application's table: the command explains it, or this does
            return Result.error(f"`{name}` needs a table that does not exist: {str(exc).splitlines()[0]}",
                                command=name)
        return Result.error(f"The bot's schema {schema!r} is not migrated: run `opsbot migrate` (RUN_MIGRATIONS"
                            " is off, so it is not done automatically).", command=name)
    log.error("command %s failed", name, exc_info=exc)
    return Result.error(f"`{name}` failed unexpectedly: {type(exc).__name__}: {exc}", command=name)


def _count(metrics: Any, backend: str) -> None:
    if metrics is not None:
        metrics.backend_errors.labels(backend=backend).inc()
