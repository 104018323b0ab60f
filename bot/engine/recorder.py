"""Everything the engine records: errors mapped to results, the action log, metrics, announcements.

Usage::

    recorder = Recorder(settings, state, redactor, metrics, notifier, context)
    result = recorder.call(command, lambda: command.run(inv))    # never raises: errors become results
    recorder.log("request", actor, where, command="dlq status")  # kept in Redis if PostgreSQL is down
    recorder.log("confirm", actor, where, strict=True, ...)      # committed, or it raises (and `not_acted_on` is kept)
    recorder.announce(result, where)                             # the incident channel, or the context's thread
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from bot.config.settings import Settings
from bot.core.group import Context
from bot.core.invocation import Actor, Where
from bot.core.markup import plain
from bot.core.redact import Redactor
from bot.core.registry import Command
from bot.core.result import Result
from bot.engine.calls import call
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
        """``fn()``, with every failure turned into a Result that explains it (:func:`bot.engine.calls.call`)."""
        return call(command, fn, self.settings, self.metrics)

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
        otherwise committed or kept in Redis and appended later, never lost and never waited for twice.

        A strict row that raises may be in the log all the same (its commit's answer was lost), naming a request
        that was never offered or a confirm that never ran; so a ``not_acted_on`` entry follows it, kept until the
        log is back, naming the row (``of``, its ``pending_id``, and ``row`` and ``row_hash`` where the row is known:
        a COMMIT that failed after all frees its id for the next row, so only the hash tells whether it is that row)."""
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
        except Exception as exc:
            self.metrics.backend_errors.labels(backend="postgres").inc()
            self._not_acted_on(action, actor, where, payload, exc)
            raise

    def _not_acted_on(self, action: str, actor: Actor, where: Where, payload: dict[str, Any], error: Exception) -> None:
        maybe = getattr(error, "maybe", None)  # ActionLogUnavailable: the row PostgreSQL may have committed
        try:
            self.log("not_acted_on", actor, where, of=action, pending_id=payload.get("pending_id"),
                     command=payload.get("command"), error=str(error).strip() or type(error).__name__,
                     **({"row": maybe.id, "row_hash": maybe.hash} if maybe is not None else {}))
        except Exception:  # the refusal the caller is about to give matters more than this entry
            log.exception("could not keep the not_acted_on entry of a %s", action)

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
