"""Everything the engine records: errors mapped to results, the action log, metrics, announcements.

Usage::

    recorder = Recorder(settings, state, redactor, metrics, notifier, context)
    result = recorder.call(command, lambda: command.run(inv))    # never raises: errors become results
    recorder.log("request", actor, where, command="dlq status")  # kept in Redis if PostgreSQL is down
    recorder.log("confirm", actor, where, strict=True, ...)      # committed, or it raises
    recorder.announce(result, where)                             # the incident channel, or the context's thread
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg
import psycopg_pool
import redis

from bot.config.settings import Settings
from bot.core.group import Context
from bot.core.invocation import Actor, BadArgument, CommandError, Where
from bot.core.markup import plain
from bot.core.redact import Redactor
from bot.core.registry import Command
from bot.core.result import Result
from bot.engine.outcome import Notifier
from bot.runtime.metrics import Metrics
from bot.store.state import State

__all__ = ["Recorder"]

log = logging.getLogger("opsbot.engine")


class Recorder:
    def __init__(self, settings: Settings, state: State, redactor: Redactor, metrics: Metrics,
                 notifier: Notifier | None = None, context: Context | None = None,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.state = state
        self.redactor = redactor
        self.metrics = metrics
        self.notifier = notifier
        self.context = context
        self.clock = clock

    def call(self, command: Command, fn: Callable[[], Any]) -> Any:
        """``fn()``, with every failure turned into a Result that explains it."""
        try:
            result = fn()
        except BadArgument as exc:  # a value that names nothing configured: a usage error (exit 2)
            return Result.error(str(exc), command=command.name, data={"error": "usage"})
        except CommandError as exc:
            return Result.error(str(exc), command=command.name)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.metrics.backend_errors.labels(backend="redis").inc()
            return Result.error(f"Redis is unreachable: {exc}", command=command.name)
        except redis.ResponseError as exc:
            return Result.error(f"Redis refused the operation: {exc}", command=command.name)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            self.metrics.backend_errors.labels(backend="postgres").inc()
            return Result.error(f"PostgreSQL is unreachable: {str(exc).strip()}", command=command.name)
        except psycopg.errors.QueryCanceled:
            return Result.error("PostgreSQL cancelled the query: the statement timeout was reached.",
                                command=command.name)
        except psycopg.errors.UndefinedTable as exc:
            schema = self.settings.state.db_schema
            if f'"{schema}.' not in str(exc):  # the application's table: the command explains it, or this does
                return Result.error(f"`{command.name}` needs a table that does not exist: {str(exc).splitlines()[0]}",
                                    command=command.name)
            return Result.error(f"The bot's schema {schema!r} is not migrated: run `opsbot migrate` (RUN_MIGRATIONS"
                                " is off, so it is not done automatically).", command=command.name)
        except Exception as exc:
            log.exception("command %s failed", command.name)
            return Result.error(f"`{command.name}` failed unexpectedly: {type(exc).__name__}: {exc}",
                                command=command.name)
        if isinstance(result, Result) and not result.command:
            result = result.with_(command=command.name)
        return result

    def outcome(self, actor: Actor, where: Where, command: str, result: Result, started: float, **extra: Any) -> None:
        """Count, time and log what a command produced."""
        seconds = max(self.clock() - started, 0.0)
        self.metrics.commands.labels(command=command, outcome=result.status).inc()
        self.metrics.command_seconds.labels(command=command).observe(seconds)
        log.info("command %s: %s", command, result.status,
                 extra={"command": command, "status": result.status, "duration_ms": round(seconds * 1000)})
        if "changed_ids" in result.data:  # rows a guarded command changed, so the change can be traced
            extra["changed_ids"] = result.data["changed_ids"]
        self.log(
            "outcome", actor, where, command=command, status=result.status, summary=plain(result.summary),
            duration_ms=round(seconds * 1000), **extra,
        )

    def log(self, action: str, actor: Actor, where: Where, strict: bool = False, **payload: Any) -> None:
        """Append to the action log. ``strict``: committed, or an exception (nothing may happen without it);
        otherwise committed or kept in Redis and appended later, never lost and never waited for twice."""
        context: dict[str, Any] = {"channel": where.channel, "thread_ts": where.thread_ts,
                                   "local_admin": actor.local_admin}
        if where.context and self.context is not None:
            context[self.context.name] = where.context
        document = self.redactor.data({**payload, **context})
        if not strict:
            self.state.action_log.append_or_keep(action, actor=actor.user_id, payload=document, tenant=actor.team)
            return
        try:
            self.state.action_log.append(action, actor=actor.user_id, payload=document, tenant=actor.team)
        except Exception:
            self.metrics.backend_errors.labels(backend="postgres").inc()
            raise

    def post(self, result: Result, where: Where) -> tuple[Result, bool]:
        """Post a command's result into the conversation it ran in; what is left to reply, and whether it went."""
        if where.context and self.context is not None:
            return self.context.post(result, where)
        return result, False

    def announce(self, result: Result, where: Where) -> None:
        """A guarded request or outcome, for everyone: into the conversation's thread, else the incident channel."""
        if where.context and self.context is not None:
            self.context.post(result, where)
            return
        if self.notifier is None:
            return
        try:
            self.notifier.announce(result, where)
        except Exception as exc:
            log.error("could not announce to the incident channel: %s", exc)
            self.log("announce_failed", Actor("opsbot"), where, summary=plain(result.summary), error=str(exc))
