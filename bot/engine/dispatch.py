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
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Literal, Protocol

import psycopg
import psycopg_pool
import redis

from bot.config.settings import Settings
from bot.core.durations import format_duration
from bot.engine.executions import Execution, Executions, ExecutionState
from bot.engine.pending import PendingAction, PendingStore
from bot.core.invocation import Actor, BadArgument, CommandError, Invocation, Where
from bot.core.markup import Mrkdwn, code, md, mention, plain
from bot.core.markup import channel as slack_channel
from bot.runtime.metrics import Metrics
from bot.core.parser import Parsed, UsageError, parse
from bot.core.policy import Policy
from bot.core.progress import finish
from bot.core.ratelimit import RateLimiter
from bot.core.redact import Redactor
from bot.core.registry import Command, Registry
from bot.core.result import Button, Plan, Result, Section
from bot.core.roles import Denied, Roles
from bot.store.state import State

__all__ = ["Engine", "Outcome", "Notifier"]

log = logging.getLogger("opsbot.engine")

OutcomeKind = Literal["result", "preview", "usage", "denied", "expired", "taken", "refused", "waiting", "cancelled",
                      "unavailable", "interrupted"]
_OWNER = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    result: Result
    pending: PendingAction | None = None
    command: Command | None = None
    in_thread: str | None = None  # the incident whose thread the result was posted to

    @property
    def exit_code(self) -> int:
        """0 ran, 1 failed (or could not run: the action log is down, the executor died), 2 usage error, 3 denied
        or not confirmed."""
        if self.kind == "result":
            return 1 if self.result.status == "error" else 0
        if self.kind in ("unavailable", "interrupted"):
            return 1
        return 2 if self.kind == "usage" else 3

    @property
    def ephemeral(self) -> bool:
        """Whether only the requester should see it (usage, denials, help, a confirm the log could not take)."""
        if self.kind in ("usage", "denied", "waiting", "unavailable"):
            return True
        return bool(self.command and self.command.visibility == "ephemeral")


def _shown(text: str) -> str:
    """Command text as a usage reply shows it: one line, printable, short."""
    return "".join(ch if ch.isprintable() else " " for ch in text.strip())[:200]


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
        policy: Policy | None = None,
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
        self.policy = policy or Policy(registry)
        self.prefix = settings.slack.command
        self.stopping: Callable[[], bool] = lambda: False  # set by a transport that shuts down gracefully
        self.context: Any = None  # incident context (commands.incident.context.IncidentContext), set by Runtime
        self.extras: dict[str, Any] = {}  # services handed to every invocation (the incident desk)

    @cached_property
    def pending(self) -> PendingStore:
        return PendingStore(self.state.redis, self.settings.state.prefix)

    @cached_property
    def executions(self) -> Executions:
        return Executions(self.state.redis, self.settings.state.prefix, self.settings.guard.executor_timeout)

    # -- entry points -----------------------------------------------------------------

    def parse(self, text: str) -> Parsed:
        return parse(text, self.registry, self.prefix)

    def handle(self, text: str, actor: Actor, where: Where,
               progress: Callable[[Result], None] | None = None) -> Outcome:
        try:
            parsed = self.parse(text)
        except UsageError as exc:
            return Outcome("usage", Result.error(str(exc), command=_shown(text)))
        if self.context is not None:
            try:
                where = self.context.resolve(parsed.incident, where)
            except CommandError as exc:
                return Outcome("usage", Result.error(str(exc), command=_shown(text)))
            except Exception as exc:
                log.error("incident context unavailable: %s", exc)
                if parsed.incident:
                    return Outcome("result", Result.error(f"The incident cannot be looked up: {exc}"))
        command = parsed.command
        limited = self.limiter.check(actor, command) if self.limiter else None
        if limited:
            self.metrics.denials.labels(reason="rate_limit").inc()
            self._log("rate_limited", actor, where, command=command.name, text=parsed.canonical(), reason=limited)
            log.warning("rate limited", extra={"command": command.name, "reason": limited})
            return Outcome("denied", Result.error(limited, command=command.name), command=command)
        try:
            self._authorize(parsed, actor, where)
        except Denied as exc:
            log.warning("denied", extra={"command": command.name, "reason": plain(exc.text)})
            self._log("denied", actor, where, command=command.name, text=parsed.canonical(), reason=plain(exc.text))
            return Outcome("denied", Result.error(exc.text, command=command.name), command=command)
        if command.guarded:
            return self._preview(parsed, actor, where)
        return self._run(parsed, actor, where, progress)

    def _authorize(self, parsed: Parsed, actor: Actor, where: Where, doing: str | None = None) -> None:
        """Raise Denied unless ``actor`` may run ``parsed`` here: its channel rule, then its role (app.yaml policy)."""
        role, rule = self.policy.role_for(parsed)
        words = rule.words if rule and len(rule.words) > len(parsed.command.words) and rule.words[-1] != "*" \
            else parsed.command.words
        what = code(f"{self.prefix} {' '.join(words)}")
        channels, _ = self.policy.channels_for(parsed)
        if channels is not None and where.channel != "cli" and not any(where.is_channel(c) for c in channels):
            self.metrics.denials.labels(reason="channel").inc()
            raise Denied(md("{} may only run in {} (channels in app.yaml); nothing was run.", what,
                            Mrkdwn(", ").join(slack_channel(c) for c in channels)))
        try:
            self.roles.check(actor, role, doing or what)
        except Denied:
            self.metrics.denials.labels(reason="role").inc()
            raise

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
                    md("{} is a two-person action: another holder of the {} role must confirm it.",
                       code(pending.command), code(command.role)),
                    command=pending.text,
                ),
                pending,
                command,
            )
        claim = self.pending.claim(pending.id, "confirmed", actor.user_id)
        if claim.state != "claimed":
            return self._gone(pending_id, actor, where)
        waived = pending.two_person and actor.user_id == pending.requester
        try:  # no side effect without its confirm row committed first
            self._log("confirm", actor, where, strict=True, pending_id=pending.id, command=pending.command,
                      two_person_waived=waived)
        except Exception as exc:
            log.error("action log unavailable, not executing %s: %s", pending.command, exc)
            self.pending.release(claim.pending, "confirmed", actor.user_id)
            return Outcome("unavailable", Result.error(
                md("The action log cannot be written ({}), so {} was not executed. Nothing changed; confirm again"
                   " once it is back.", str(exc).strip() or type(exc).__name__, code(pending.text)),
                command=pending.text), pending, command)
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
            md("Cancelled {}: nothing was changed.", code(pending.text)), data={"pending_id": pending.id},
            command=pending.text,
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
            policy=self.policy,
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
        if result.data.get("error") == "usage":
            return Outcome("usage", result, command=command)
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
            return Outcome("usage" if plan.data.get("error") == "usage" else "result", plan, command=command)
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
                plan=plain(plan.summary),
            )
        except Exception as exc:  # no confirmation without an audit trail
            log.error("action log unavailable, refusing guarded request: %s", exc)
            return Outcome(
                "result",
                Result.error(md("The action log cannot be written ({}); {} was not offered.", str(exc).strip(),
                                code(command.name)), command=pending.text),
                command=command,
            )
        pending = self.pending.create(pending, self.settings.guard.confirm_ttl)
        self._announce(
            Result.ok(md("{} requested {}, awaiting confirmation: {}", mention(actor.user_id), code(pending.text),
                         plan.summary), data={"pending_id": pending.id}, command=pending.text),
            where,
        )
        return Outcome("preview", self._preview_result(command, plan, pending, notice), pending, command)

    def _preview_result(self, command: Command, plan: Plan, pending: PendingAction, notice: str) -> Result:
        ttl = format_duration(self.settings.guard.confirm_ttl)
        if pending.two_person:
            who = md("A second holder of the {} role (not {}) must confirm", code(command.role),
                     mention(pending.requester))
        else:
            who = md("Only {} can confirm", mention(pending.requester))
        footer = md("{} within {}. Nothing changes until then.", who, ttl)
        sections = ([Section(text=notice)] if notice else []) + list(plan.sections) + [Section(text=footer)]
        return Result.ok(
            md("Preview: {}", plan.summary),
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
                       confirm=md("Run {} now?", code(f"{self.prefix} {pending.text}"))),
                Button("Cancel", "cancel", pending.id),
            ],
            command=pending.text,
        )

    def _execute(self, pending: PendingAction, command: Command, actor: Actor, where: Where,
                 progress: Callable[[Result], None] | None = None) -> Outcome:
        """Re-plan, then run the confirmed action once, tracked so that a dead executor is reported, not hidden."""
        try:
            tracked = self.executions.run(pending, owner=_OWNER)
            execution = tracked.__enter__()
        except Exception as exc:
            result = Result.error(md("{} was not executed: its run cannot be recorded in Redis ({}).",
                                     code(pending.text), str(exc)), command=pending.text)
            self._log_outcome(actor, where, command.name, result, self.clock(), pending_id=pending.id)
            return Outcome("result", result, pending, command)
        outcome = None
        try:
            outcome = self._replan_and_run(pending, command, actor, where, progress, execution)
            return outcome
        finally:
            tracked.__exit__(None, None, None)
            status = outcome.result.status if outcome is not None else "error"
            try:
                execution.finish(status if outcome is None or outcome.kind == "result" else outcome.kind,
                                 plain(outcome.result.summary) if outcome is not None else "failed")
            except Exception as exc:  # the outcome is in the action log; only the live record is stale
                log.error("could not close the execution record of %s: %s", pending.id, exc)

    def _replan_and_run(self, pending: PendingAction, command: Command, actor: Actor, where: Where,
                        progress: Callable[[Result], None] | None, execution: Execution) -> Outcome:
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

        def show(update: Result) -> None:
            execution.progress(plain(update.summary))
            if progress is not None:
                progress(update)

        invocation.progress = show
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
            reason = md("{} must happen in the channel where {} was requested.", doing, code(pending.text))
            self._log("denied", actor, where, pending_id=pending.id, command=pending.command, reason=plain(reason))
            return Outcome("denied", Result.error(reason), pending, command)
        try:
            self._authorize(self.parse(pending.text), actor, where, md("{} {}", doing, code(pending.text)))
        except UsageError as exc:
            return Outcome("refused", Result.error(f"The pending command no longer parses: {exc}"), pending, command)
        except Denied as exc:
            self._log("denied", actor, where, pending_id=pending.id, command=pending.command, reason=plain(exc.text))
            return Outcome("denied", Result.error(exc.text), pending, command)
        if (
            doing == "Confirming"
            and not pending.two_person
            and actor.user_id != pending.requester
            and not actor.local_admin
        ):
            reason = md("Only {}, who requested {}, can confirm it.", mention(pending.requester), code(pending.text))
            self._log("denied", actor, where, pending_id=pending.id, command=pending.command, reason=plain(reason))
            return Outcome("denied", Result.error(reason), pending, command)
        return None

    def _gone(self, pending_id: str, actor: Actor, where: Where) -> Outcome:
        claimed = self.pending.outcome(pending_id)
        if claimed:
            how, _, user = claimed.partition(":")
            running = self.executions.state(pending_id) if how == "confirmed" else None
            if running is not None and (running.interrupted or running.status == "interrupted"):
                return self._interrupted(running)
            sections = []
            if running is not None and running.state == "running":
                sections = [Section(text=md("It is running now{}.", md(": {}", running.progress) if running.progress
                                            else ""))]
            return Outcome("taken", Result.warn(md("Already {} by {}; nothing more was done.", how, mention(user)),
                                                sections=sections))
        self._log("expired", actor, where, pending_id=pending_id)
        ttl = format_duration(self.settings.guard.confirm_ttl)
        return Outcome(
            "expired",
            Result.warn(
                f"This confirmation has expired (they last {ttl}): nothing was changed. "
                "Run the command again for a fresh preview."
            ),
        )

    def _interrupted(self, state: ExecutionState) -> Outcome:
        """A confirmed action whose executor died mid-run: say so (once in the log and the channel), run nothing."""
        progress = md(" Its last progress: {}.", state.progress) if state.progress else md(" It recorded no progress.")
        result = Result.warn(
            md("{} was interrupted: the process executing it ({}) stopped before it finished.", code(state.text),
               state.owner) + progress + md(" Nothing was run again: run {} again for a fresh plan.", code(state.text)),
            data={"pending_id": state.pending_id, "interrupted": True, "owner": state.owner,
                  "progress": state.progress}, command=state.text)
        if self.executions.claim_report(state.pending_id):
            origin = Where(state.channel or "cli", incident=state.incident)
            self.executions.close_interrupted(state, plain(result.summary))
            self._log("outcome", Actor("opsbot"), origin, command=state.command, status="interrupted",
                      summary=plain(result.summary), pending_id=state.pending_id, progress=state.progress)
            self._announce(result, origin)
        return Outcome("interrupted", result)

    def report_interrupted(self) -> int:
        """Report confirmed actions whose executor died (a worker's sweep calls this); each is reported once."""
        found = self.executions.stale()
        for state in found:
            self._interrupted(state)
        return len(found)

    # -- plumbing ---------------------------------------------------------------------

    def _call(self, command: Command, fn: Callable[[], Any]) -> Any:
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

    def _log_outcome(self, actor: Actor, where: Where, command: str, result: Result, started: float, **extra: Any):
        seconds = max(self.clock() - started, 0.0)
        self.metrics.commands.labels(command=command, outcome=result.status).inc()
        self.metrics.command_seconds.labels(command=command).observe(seconds)
        log.info("command %s: %s", command, result.status,
                 extra={"command": command, "status": result.status, "duration_ms": round(seconds * 1000)})
        if "changed_ids" in result.data:  # rows a guarded command changed, so the change can be traced
            extra["changed_ids"] = result.data["changed_ids"]
        self._log(
            "outcome", actor, where, command=command, status=result.status, summary=plain(result.summary),
            duration_ms=round(seconds * 1000), **extra,
        )

    def _log(self, action: str, actor: Actor, where: Where, strict: bool = False, **payload: Any) -> None:
        """Append to the action log. ``strict``: committed, or an exception (nothing may happen without it);
        otherwise committed or kept in Redis and appended later, never lost and never waited for twice."""
        context = {"channel": where.channel, "thread_ts": where.thread_ts, "local_admin": actor.local_admin}
        if where.incident:
            context["incident"] = where.incident
        document = self.redactor.data({**payload, **context})
        if not strict:
            self.state.action_log.append_or_keep(action, actor=actor.user_id, payload=document, tenant=actor.team)
            return
        try:
            self.state.action_log.append(action, actor=actor.user_id, payload=document, tenant=actor.team)
        except Exception:
            self.metrics.backend_errors.labels(backend="postgres").inc()
            raise

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
            self._log("announce_failed", Actor("opsbot"), where, summary=plain(result.summary), error=str(exc))
