"""Run ``/ops`` command text for an actor: parse, authorize, run or plan → confirm → execute.

Usage::

    engine = Engine(settings, registry, state, targets, roles, notifier)
    outcome = engine.handle("dlq requeue jobs --limit 100", actor, Where("C1"))
    outcome.kind           # 'preview'
    outcome = engine.confirm(outcome.pending.id, actor, Where("C1"))
    outcome.kind, outcome.result.status      # ('result', 'ok')

Transports (Slack, the CLI) only translate: they never decide who may do what.
Every request, confirmation, cancellation, denial and outcome goes to the
action log; guarded outcomes are announced to the incident channel.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Literal, Protocol

import psycopg
import psycopg_pool
import redis

from bot.config import Settings
from bot.durations import format_duration
from bot.guard import PendingAction, PendingStore
from bot.invocation import Actor, CommandError, Invocation, Where
from bot.metrics import Metrics
from bot.parser import Parsed, UsageError, parse
from bot.progress import finish
from bot.ratelimit import RateLimiter
from bot.redact import Redactor
from bot.registry import Command, Registry
from bot.result import Button, Plan, Result, Section
from bot.roles import Denied, Roles
from bot.state import State

__all__ = ["Engine", "Outcome", "Notifier"]

log = logging.getLogger("opsbot.engine")

OutcomeKind = Literal["result", "preview", "usage", "denied", "expired", "taken", "refused", "waiting", "cancelled"]


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    result: Result
    pending: PendingAction | None = None
    command: Command | None = None
    in_thread: str | None = None  # the incident whose thread the result was posted to

    @property
    def exit_code(self) -> int:
        """SPEC §5: 0 ran, 1 failed, 2 usage error, 3 denied or not confirmed."""
        if self.kind == "result":
            return 1 if self.result.status == "error" else 0
        return 2 if self.kind == "usage" else 3

    @property
    def ephemeral(self) -> bool:
        """Whether only the requester should see it (usage, denials, help)."""
        if self.kind in ("usage", "denied", "waiting"):
            return True
        return bool(self.command and self.command.visibility == "ephemeral")


class Notifier(Protocol):
    def announce(self, result: Result, where: Where) -> None: ...


class Engine:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        state: State,
        targets: Any,
        roles: Roles,
        notifier: Notifier | None = None,
        redactor: Redactor | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        limiter: RateLimiter | None = None,
    ):
        self.settings = settings
        self.registry = registry
        self.state = state
        self.targets = targets
        self.roles = roles
        self.notifier = notifier
        self.redactor = redactor or Redactor()
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.limiter = limiter
        self.prefix = settings.slack.command
        self.stopping: Callable[[], bool] = lambda: False  # set by a transport that shuts down gracefully
        self.context: Any = None  # incident context (commands.incident.context.IncidentContext), set by Runtime
        self.extras: dict[str, Any] = {}  # services handed to every invocation (the incident desk)

    @cached_property
    def pending(self) -> PendingStore:
        return PendingStore(self.state.redis, self.settings.state.prefix)

    # -- entry points -----------------------------------------------------------------

    def parse(self, text: str) -> Parsed:
        return parse(text, self.registry, self.prefix)

    def handle(self, text: str, actor: Actor, where: Where,
               progress: Callable[[Result], None] | None = None) -> Outcome:
        if self.context is not None:
            try:
                text, where = self.context.resolve(text, where)
            except CommandError as exc:
                return Outcome("usage", Result.error(str(exc), command=text.strip()[:200]))
            except Exception as exc:
                log.error("incident context unavailable: %s", exc)
                if "--incident" in text:
                    return Outcome("result", Result.error(f"The incident cannot be looked up: {exc}"))
        try:
            parsed = self.parse(text)
        except UsageError as exc:
            return Outcome("usage", Result.error(str(exc), command=text.strip()[:200]))
        command = parsed.command
        limited = self.limiter.check(actor, command) if self.limiter else None
        if limited:
            self.metrics.denials.labels(reason="rate_limit").inc()
            self._log("rate_limited", actor, where, command=command.name, text=parsed.canonical(), reason=limited)
            log.warning("rate limited", extra={"command": command.name, "reason": limited})
            return Outcome("denied", Result.error(limited, command=command.name), command=command)
        try:
            self.roles.check(actor, command.role, f"`{self.prefix} {command.name}`")
        except Denied as exc:
            self.metrics.denials.labels(reason="role").inc()
            log.warning("denied", extra={"command": command.name, "reason": str(exc)})
            self._log("denied", actor, where, command=command.name, text=parsed.canonical(), reason=str(exc))
            return Outcome("denied", Result.error(str(exc), command=command.name), command=command)
        if command.guarded:
            return self._preview(parsed, actor, where)
        return self._run(parsed, actor, where, progress)

    def confirm(self, pending_id: str, actor: Actor, where: Where,
                progress: Callable[[Result], None] | None = None) -> Outcome:
        outcome = self._confirm(pending_id, actor, where, progress)
        result = {"result": "confirmed", "refused": "refused"}.get(outcome.kind, outcome.kind)
        self.metrics.confirmations.labels(result=result).inc()
        return outcome

    def _confirm(self, pending_id: str, actor: Actor, where: Where,
                 progress: Callable[[Result], None] | None) -> Outcome:
        pending = self.pending.get(pending_id)
        if pending is None:
            return self._gone(pending_id, actor, where)
        where = replace(where, incident=pending.incident) if pending.incident else where
        command = self.registry.get(pending.command)
        if command is None or command.guard is None:
            return Outcome("expired", Result.error(f"`{pending.command}` is no longer a guarded command here."))
        refusal = self._may_respond(pending, command, actor, where, "Confirming")
        if refusal:
            return refusal
        if pending.two_person and actor.user_id == pending.requester and not actor.local_admin:
            self._log("awaiting_second", actor, where, pending_id=pending.id, command=pending.command)
            return Outcome(
                "waiting",
                Result.warn(
                    f"`{pending.command}` is a two-person action: another holder of the `{command.role}` role "
                    "must confirm it.",
                    command=pending.text,
                ),
                pending,
                command,
            )
        claim = self.pending.claim(pending.id, "confirmed", actor.user_id)
        if claim.state != "claimed":
            return self._gone(pending_id, actor, where)
        waived = pending.two_person and actor.user_id == pending.requester
        self._log(
            "confirm", actor, where, pending_id=pending.id, command=pending.command, two_person_waived=waived
        )
        return self._execute(claim.pending, command, actor, where, progress)

    def cancel(self, pending_id: str, actor: Actor, where: Where) -> Outcome:
        pending = self.pending.get(pending_id)
        if pending is None:
            return self._gone(pending_id, actor, where)
        command = self.registry.get(pending.command)
        where = replace(where, incident=pending.incident) if pending.incident else where
        if actor.user_id != pending.requester:
            refusal = self._may_respond(pending, command, actor, where, "Cancelling")
            if refusal:
                return refusal
        claim = self.pending.claim(pending.id, "cancelled", actor.user_id)
        if claim.state != "claimed":
            return self._gone(pending_id, actor, where)
        self._log("cancel", actor, where, pending_id=pending.id, command=pending.command)
        result = Result.warn(
            f"Cancelled `{pending.text}`: nothing was changed.", data={"pending_id": pending.id}, command=pending.text
        )
        self._announce(result, where)
        self.metrics.confirmations.labels(result="cancelled").inc()
        return Outcome("cancelled", result, pending, command)

    # -- steps ------------------------------------------------------------------------

    def invocation(self, parsed: Parsed, actor: Actor, where: Where) -> Invocation:
        return Invocation(
            command=parsed.command,
            args=parsed.args,
            actor=actor,
            where=where,
            settings=self.settings,
            registry=self.registry,
            targets=self.targets,
            text=parsed.canonical(),
            state=self.state,
            stopping=lambda: self.stopping(),
            metrics=self.metrics,
            extras=dict(self.extras),
        )

    def _run(self, parsed: Parsed, actor: Actor, where: Where,
             progress: Callable[[Result], None] | None = None) -> Outcome:
        command = parsed.command
        self._log("request", actor, where, command=command.name, text=parsed.canonical())
        started = self.clock()
        invocation = self.invocation(parsed, actor, where)
        if progress is not None:
            invocation.progress = progress
        result = self._call(command, lambda: command.run(invocation))
        finish(progress, result)
        self._log_outcome(actor, where, command.name, result, started)
        if where.incident and self.context is not None:
            result, posted = self.context.post(result, where)
            return Outcome("result", result, command=command, in_thread=where.incident if posted else None)
        return Outcome("result", result, command=command)

    def _plan(self, parsed: Parsed, actor: Actor, where: Where) -> Plan | Result:
        command = parsed.command
        assert command.guard is not None
        return self._call(command, lambda: command.guard.plan(self.invocation(parsed, actor, where)))

    def _preview(self, parsed: Parsed, actor: Actor, where: Where, notice: str = "") -> Outcome:
        command = parsed.command
        plan = self._plan(parsed, actor, where)
        if isinstance(plan, Result):
            self._log_outcome(actor, where, command.name, plan, self.clock())
            return Outcome("result", plan, command=command)
        pending = PendingAction(
            command=command.name,
            text=parsed.canonical(),
            requester=actor.user_id,
            team=actor.team,
            channel=where.channel,
            thread_ts=where.thread_ts,
            channel_name=where.channel_name,
            incident=where.incident,
            fingerprint=plan.fingerprint,
            plan=plan.data,
            two_person=command.two_person,
            created=self.clock(),
        )
        try:
            self._log(
                "request",
                actor,
                where,
                strict=True,
                command=command.name,
                text=pending.text,
                pending_id=pending.id,
                fingerprint=plan.fingerprint,
                plan=plan.summary,
            )
        except Exception as exc:  # no confirmation without an audit trail
            log.error("action log unavailable, refusing guarded request: %s", exc)
            return Outcome(
                "result",
                Result.error(f"The action log cannot be written ({exc}); `{command.name}` was not offered.",
                             command=pending.text),
                command=command,
            )
        pending = self.pending.create(pending, self.settings.guard.confirm_ttl)
        self._announce(
            Result.ok(f"<@{actor.user_id}> requested `{pending.text}`, awaiting confirmation: {plan.summary}",
                      data={"pending_id": pending.id}, command=pending.text),
            where,
        )
        return Outcome("preview", self._preview_result(command, plan, pending, notice), pending, command)

    def _preview_result(self, command: Command, plan: Plan, pending: PendingAction, notice: str) -> Result:
        ttl = format_duration(self.settings.guard.confirm_ttl)
        if pending.two_person:
            who = f"A second holder of the `{command.role}` role (not <@{pending.requester}>) must confirm"
        else:
            who = f"Only <@{pending.requester}> can confirm"
        footer = f"{who} within {ttl}. Nothing changes until then."
        sections = ([Section(text=notice)] if notice else []) + list(plan.sections) + [Section(text=footer)]
        return Result.ok(
            f"Preview: {plan.summary}",
            data={
                "confirmed": False,
                "pending_id": pending.id,
                "fingerprint": pending.fingerprint,
                "expires_at": pending.expires,
                "two_person": pending.two_person,
                "plan": plan.data,
            },
            sections=sections,
            buttons=[
                Button("Confirm", "confirm", pending.id, style="primary",
                       confirm=f"Run `{self.prefix} {pending.text}` now?"),
                Button("Cancel", "cancel", pending.id),
            ],
            command=pending.text,
        )

    def _execute(self, pending: PendingAction, command: Command, actor: Actor, where: Where,
                 progress: Callable[[Result], None] | None = None) -> Outcome:
        assert command.guard is not None
        requester = Actor(pending.requester, team=pending.team)
        origin = Where(pending.channel, pending.thread_ts, pending.channel_name, pending.incident)
        try:
            parsed = self.parse(pending.text)
        except UsageError as exc:
            return Outcome("refused", Result.error(f"The pending command no longer parses: {exc}"), pending, command)
        started = self.clock()
        fresh = self._plan(parsed, requester, origin)
        if isinstance(fresh, Result):
            self._log_outcome(actor, where, command.name, fresh, started, pending_id=pending.id)
            return Outcome("result", fresh, pending, command)
        old = Plan("", data=pending.plan, fingerprint=pending.fingerprint)
        still_valid = command.guard.still_valid or (lambda before, after: before.fingerprint == after.fingerprint)
        if not still_valid(old, fresh):
            self._log(
                "refused", actor, where, pending_id=pending.id, command=command.name,
                old_fingerprint=old.fingerprint, new_fingerprint=fresh.fingerprint,
            )
            outcome = self._preview(
                parsed,
                requester,
                origin,
                notice=":warning: *Not executed*: the world changed beyond the previewed plan. Here is the new plan.",
            )
            return Outcome("refused", outcome.result, outcome.pending, command)
        invocation = self.invocation(parsed, requester, origin)
        invocation.extras.update(confirmed_by=actor.user_id, pending_id=pending.id)
        if progress is not None:
            invocation.progress = progress
        result = self._call(command, lambda: command.guard.execute(invocation, fresh))
        finish(progress, result)
        result = result.with_(
            data={**result.data, "pending_id": pending.id, "requested_by": pending.requester,
                  "confirmed_by": actor.user_id},
            command=pending.text,
        )
        self._log_outcome(actor, where, command.name, result, started, pending_id=pending.id)
        self._announce(result, origin)
        return Outcome("result", result, pending, command)

    def _may_respond(
        self, pending: PendingAction, command: Command | None, actor: Actor, where: Where, doing: str
    ) -> Outcome | None:
        if where.channel != pending.channel and not actor.local_admin:
            reason = f"{doing} must happen in the channel where `{pending.text}` was requested."
            self._log("denied", actor, where, pending_id=pending.id, command=pending.command, reason=reason)
            return Outcome("denied", Result.error(reason), pending, command)
        role = command.role if command else None
        try:
            self.roles.check(actor, role, f"{doing} `{pending.text}`")
        except Denied as exc:
            self.metrics.denials.labels(reason="role").inc()
            self._log("denied", actor, where, pending_id=pending.id, command=pending.command, reason=str(exc))
            return Outcome("denied", Result.error(str(exc)), pending, command)
        if (
            doing == "Confirming"
            and not pending.two_person
            and actor.user_id != pending.requester
            and not actor.local_admin
        ):
            reason = f"Only <@{pending.requester}>, who requested `{pending.text}`, can confirm it."
            self._log("denied", actor, where, pending_id=pending.id, command=pending.command, reason=reason)
            return Outcome("denied", Result.error(reason), pending, command)
        return None

    def _gone(self, pending_id: str, actor: Actor, where: Where) -> Outcome:
        claimed = self.pending.outcome(pending_id)
        if claimed:
            how, _, user = claimed.partition(":")
            return Outcome("taken", Result.warn(f"Already {how} by <@{user}>; nothing more was done."))
        self._log("expired", actor, where, pending_id=pending_id)
        ttl = format_duration(self.settings.guard.confirm_ttl)
        return Outcome(
            "expired",
            Result.warn(
                f"This confirmation has expired (they last {ttl}): nothing was changed. "
                "Run the command again for a fresh preview."
            ),
        )

    # -- plumbing ---------------------------------------------------------------------

    def _call(self, command: Command, fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
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
        except Exception as exc:
            log.exception("command %s failed", command.name)
            return Result.error(f"`{command.name}` failed unexpectedly: {type(exc).__name__}: {exc}",
                                command=command.name)
        if isinstance(result, Result) and not result.command:
            result = result.with_(command=command.name)
        return result

    def _log_outcome(self, actor: Actor, where: Where, command: str, result: Result, started: float, **extra: Any):
        seconds = max(self.clock() - started, 0.0)
        self.metrics.commands.labels(command=command, outcome=result.status).inc()
        self.metrics.command_seconds.labels(command=command).observe(seconds)
        log.info("command %s: %s", command, result.status,
                 extra={"command": command, "status": result.status, "duration_ms": round(seconds * 1000)})
        if "changed_ids" in result.data:  # rows a guarded command changed, so the change can be traced
            extra["changed_ids"] = result.data["changed_ids"]
        self._log(
            "outcome", actor, where, command=command, status=result.status, summary=result.summary,
            duration_ms=round(seconds * 1000), **extra,
        )

    def _log(self, action: str, actor: Actor, where: Where, strict: bool = False, **payload: Any) -> None:
        context = {"channel": where.channel, "thread_ts": where.thread_ts, "local_admin": actor.local_admin}
        if where.incident:
            context["incident"] = where.incident
        document = self.redactor.data({**payload, **context})
        try:
            self.state.action_log.append(action, actor=actor.user_id, payload=document, tenant=actor.team)
        except Exception as exc:
            self.metrics.backend_errors.labels(backend="postgres").inc()
            if strict:
                raise
            log.error("could not append %s to the action log: %s", action, exc)

    def _announce(self, result: Result, where: Where) -> None:
        if where.incident and self.context is not None:  # into the incident's thread instead of the channel
            self.context.post(result, where)
            return
        if self.notifier is None:
            return
        try:
            self.notifier.announce(result, where)
        except Exception as exc:
            log.error("could not announce to the incident channel: %s", exc)
            self._log("announce_failed", Actor("opsbot"), where, summary=result.summary, error=str(exc))
