"""Run ``/ops`` command text for an actor: parse, authorize, run, or plan and hand over to the confirmation flow.

Usage::

    engine = Engine(settings, registry, state, targets, roles, notifier)
    outcome = engine.handle("dlq requeue jobs --limit 100", actor, Where("C1"))
    outcome.kind           # 'preview'
    outcome = engine.confirm(outcome.pending.id, actor, Where("C1"))
    outcome.kind, outcome.result.status      # ('result', 'ok')

Transports (Slack, the CLI) only translate: they never decide who may do what.
The engine knows no command group: groups reach it as a registry, services their
handlers find by type, and at most one conversation (:class:`bot.core.group.Context`)
commands can run in. Every request, confirmation, cancellation, denial and outcome
goes to the action log (:mod:`bot.engine.recorder`); guarded commands go through
:mod:`bot.engine.confirmation`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from bot.config.settings import Settings
from bot.core.group import Context, Group, Services
from bot.core.invocation import Actor, CommandError, Invocation, Where
from bot.core.markup import Mrkdwn, code, md, plain
from bot.core.markup import channel as slack_channel
from bot.core.parser import Parsed, parse
from bot.core.policy import Policy
from bot.core.progress import finish
from bot.core.ratelimit import RateLimiter
from bot.core.redact import Redactor
from bot.core.registry import Registry
from bot.core.result import Result
from bot.core.roles import Denied, Roles
from bot.engine.confirmation import Confirmations
from bot.engine.declared import parse_or_usage, shown
from bot.engine.executions import Executions
from bot.engine.outcome import Notifier, Outcome
from bot.engine.pending import PendingStore
from bot.engine.recorder import Recorder
from bot.runtime.metrics import Metrics
from bot.store.state import State

__all__ = ["Engine", "Notifier", "Outcome"]

log = logging.getLogger("opsbot.engine")

Progress = Callable[[Result], None] | None


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
        groups: Sequence[Group] = (),
        services: Services | None = None,
        context: Context | None = None,
        gauges: Any = None,
    ):
        self.settings = settings
        self.registry = registry
        self.state = state
        self.targets = targets
        self.roles = roles
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.limiter = limiter
        self.policy = policy or Policy(registry)
        self.groups = tuple(groups)
        self.services = services or Services()
        self.gauges = gauges  # bot.runtime.gauges.GaugeBoard: results of read-only commands feed /metrics
        self.prefix = settings.slack.command
        self.stopping: Callable[[], bool] = lambda: False  # set by a transport that shuts down gracefully
        self.recorder = Recorder(settings, state, redactor or Redactor(), self.metrics, notifier, context, clock)
        self.flow = Confirmations(settings, registry, self.recorder, self._authorize, self.invocation, clock)

    @property
    def context(self) -> Context | None:
        """The conversation commands can run in (a thread of the group offering it), if any."""
        return self.recorder.context

    @property
    def pending(self) -> PendingStore:
        return self.flow.pending

    @property
    def executions(self) -> Executions:
        return self.flow.executions

    # -- entry points -----------------------------------------------------------------

    def parse(self, text: str) -> Parsed:
        return parse(text, self.registry, self.prefix)

    def handle(self, command: str | Parsed, actor: Actor, where: Where, progress: Progress = None) -> Outcome:
        """Run command text, or a command the transport parsed already (the ack did; it is not parsed again)."""
        parsed = command if isinstance(command, Parsed) else parse_or_usage(command, self.registry, self.prefix)
        if isinstance(parsed, Outcome):
            return parsed  # text that does not parse: its usage, nothing run (bot.engine.declared answers it too)
        context = self.context
        if context is not None:
            try:
                where = context.resolve(parsed.context, where)
            except CommandError as exc:
                return Outcome("usage", Result.error(str(exc), command=shown(parsed.text)))
            except Exception as exc:
                log.error("%s context unavailable: %s", context.name, exc)
                if parsed.context:
                    return Outcome("result", Result.error(f"The {context.name} cannot be looked up: {exc}"))
        limited = self.limiter.check(actor, parsed.command) if self.limiter else None
        if limited:
            self.metrics.denials.labels(reason="rate_limit").inc()
            self.recorder.log("rate_limited", actor, where, command=parsed.command.name, text=parsed.canonical(),
                              reason=limited)
            log.warning("rate limited", extra={"command": parsed.command.name, "reason": limited})
            return Outcome("denied", Result.error(limited, command=parsed.command.name), command=parsed.command)
        try:
            self._authorize(parsed, actor, where)
        except Denied as exc:
            log.warning("denied", extra={"command": parsed.command.name, "reason": plain(exc.text)})
            self.recorder.log("denied", actor, where, command=parsed.command.name, text=parsed.canonical(),
                              reason=plain(exc.text))
            return Outcome("denied", Result.error(exc.text, command=parsed.command.name), command=parsed.command)
        if parsed.command.guarded:
            return self.flow.preview(parsed, actor, where)
        return self._run(parsed, actor, where, progress)

    def confirm(self, pending_id: str, actor: Actor, where: Where, progress: Progress = None) -> Outcome:
        outcome = self.flow.confirm(pending_id, actor, where, progress)
        result = {"result": "confirmed", "refused": "refused"}.get(outcome.kind, outcome.kind)
        self.metrics.confirmations.labels(result=result).inc()
        return outcome

    def cancel(self, pending_id: str, actor: Actor, where: Where) -> Outcome:
        outcome = self.flow.cancel(pending_id, actor, where)
        if outcome.kind == "cancelled":
            self.metrics.confirmations.labels(result="cancelled").inc()
        return outcome

    def report_interrupted(self) -> int:
        """Report confirmed actions whose executor died (a worker's sweep calls this); each is reported once."""
        return self.flow.report_interrupted()

    # -- steps ------------------------------------------------------------------------

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
            groups=self.groups,
            services=self.services,
        )

    def _run(self, parsed: Parsed, actor: Actor, where: Where, progress: Progress = None) -> Outcome:
        command = parsed.command
        self.recorder.log("request", actor, where, command=command.name, text=parsed.canonical())
        started = self.clock()
        invocation = self.invocation(parsed, actor, where)
        if progress is not None:
            invocation.progress = progress
        result = self.recorder.call(command, lambda: command.run(invocation))
        finish(progress, result)
        self.recorder.outcome(actor, where, command.name, result, started)
        if self.gauges is not None:
            self.gauges.observe(command.name, result)
        if result.data.get("error") == "usage":
            return Outcome("usage", result, command=command)
        result, posted = self.recorder.post(result, where)
        return Outcome("result", result, command=command, in_thread=where.context if posted else None)
