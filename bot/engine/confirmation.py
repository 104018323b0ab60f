"""The confirmation flow of guarded commands: preview → Confirm (or Cancel) → re-validate → execute, once.

Usage (the engine owns one; transports call the engine)::

    flow = Confirmations(settings, registry, recorder, authorize, invocation)
    outcome = flow.preview(parsed, actor, where)              # a plan and a pending action with Confirm/Cancel
    outcome = flow.confirm(outcome.pending.id, actor, where)  # claimed once, logged first, re-planned, executed

Exactly once: a pending action is claimed atomically in Redis, its confirm row is
committed before anything runs, the plan is made again and compared with what was
previewed, and the execution is tracked so that a dead executor is reported as
interrupted rather than hidden.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from functools import cached_property

from bot.config.settings import Settings
from bot.core.durations import format_duration
from bot.core.invocation import Actor, Invocation, Where
from bot.core.markup import code, md, mention, plain
from bot.core.parser import Parsed, UsageError, parse
from bot.core.progress import finish
from bot.core.registry import Command, Registry
from bot.core.result import Button, Plan, Result, Section
from bot.core.roles import Denied
from bot.engine.executions import Execution, Executions, ExecutionState
from bot.engine.outcome import Outcome
from bot.engine.pending import PendingAction, PendingStore
from bot.engine.recorder import Recorder

__all__ = ["Confirmations"]

log = logging.getLogger("opsbot.engine")

_OWNER = f"{socket.gethostname()}:{os.getpid()}"
Progress = Callable[[Result], None] | None


class Confirmations:
    def __init__(self, settings: Settings, registry: Registry, recorder: Recorder,
                 authorize: Callable[[Parsed, Actor, Where, str | None], None],
                 invocation: Callable[[Parsed, Actor, Where], Invocation], clock: Callable[[], float] = time.time):
        self.settings = settings
        self.registry = registry
        self.recorder = recorder
        self.authorize = authorize
        self.invocation = invocation
        self.clock = clock
        self.prefix = settings.slack.command

    @cached_property
    def pending(self) -> PendingStore:
        return PendingStore(self.recorder.state.redis, self.settings.state.prefix)

    @cached_property
    def executions(self) -> Executions:
        return Executions(self.recorder.state.redis, self.settings.state.prefix, self.settings.guard.executor_timeout)

    # -- preview ------------------------------------------------------------------------------

    def preview(self, parsed: Parsed, actor: Actor, where: Where, notice: str = "") -> Outcome:
        command = parsed.command
        plan = self._plan(parsed, actor, where)
        if isinstance(plan, Result):
            self.recorder.outcome(actor, where, command.name, plan, self.clock())
            return Outcome("usage" if plan.data.get("error") == "usage" else "result", plan, command=command)
        pending = PendingAction(
            command=command.name, text=parsed.canonical(), requester=actor.user_id, team=actor.team,
            channel=where.channel, thread_ts=where.thread_ts, channel_name=where.channel_name, context=where.context,
            args=parsed.args, fingerprint=plan.fingerprint, plan=plan.data, two_person=command.two_person,
            created=self.clock(),
        )
        try:  # no confirmation without an audit trail
            self.recorder.log("request", actor, where, strict=True, command=command.name, text=pending.text,
                              pending_id=pending.id, fingerprint=plan.fingerprint, plan=plain(plan.summary))
        except Exception as exc:
            log.error("action log unavailable, refusing guarded request: %s", exc)
            return Outcome("result", Result.error(md("The action log cannot be written ({}); {} was not offered.",
                                                     str(exc).strip(), code(command.name)), command=pending.text),
                           command=command)
        pending = self.pending.create(pending, self.settings.guard.confirm_ttl)
        self.recorder.announce(
            Result.ok(md("{} requested {}, awaiting confirmation: {}", mention(actor.user_id), code(pending.text),
                         plan.summary), data={"pending_id": pending.id}, command=pending.text),
            where,
        )
        return Outcome("preview", self._preview_result(command, plan, pending, notice), pending, command)

    def _plan(self, parsed: Parsed, actor: Actor, where: Where, old: Plan | None = None) -> Plan | Result:
        """The plan of a new request; with ``old``, the fresh plan to confirm it against."""
        command = parsed.command
        guard = command.guard
        assert guard is not None
        invocation = self.invocation(parsed, actor, where)
        if old is not None and guard.replan is not None:
            return self.recorder.call(command, lambda: guard.replan(invocation, old))
        return self.recorder.call(command, lambda: guard.plan(invocation))

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
            data={"confirmed": False, "pending_id": pending.id, "fingerprint": pending.fingerprint,
                  "expires_at": pending.expires, "two_person": pending.two_person, "plan": plan.data},
            sections=sections,
            buttons=[
                Button("Confirm", "confirm", pending.id, style="primary",
                       confirm=md("Run {} now?", code(f"{self.prefix} {pending.text}"))),
                Button("Cancel", "cancel", pending.id),
            ],
            command=pending.text,
        )

    # -- confirm and cancel ---------------------------------------------------------------------

    def confirm(self, pending_id: str, actor: Actor, where: Where, progress: Progress = None) -> Outcome:
        pending = self.pending.get(pending_id)
        if pending is None:
            return self._gone(pending_id, actor, where)
        where = replace(where, context=pending.context) if pending.context else where
        command = self.registry.get(pending.command)
        if command is None or command.guard is None:
            return Outcome("expired", Result.error(f"`{pending.command}` is no longer a guarded command here."))
        refusal = self._may_respond(pending, command, actor, where, "Confirming")
        if refusal:
            return refusal
        if pending.two_person and actor.user_id == pending.requester and not actor.local_admin:
            self.recorder.log("awaiting_second", actor, where, pending_id=pending.id, command=pending.command)
            return Outcome("waiting", Result.warn(
                md("{} is a two-person action: another holder of the {} role must confirm it.",
                   code(pending.command), code(command.role)), command=pending.text), pending, command)
        claim = self.pending.claim(pending.id, "confirmed", actor.user_id)
        if claim.state != "claimed":
            return self._gone(pending_id, actor, where)
        waived = pending.two_person and actor.user_id == pending.requester
        try:  # no side effect without its confirm row committed first
            self.recorder.log("confirm", actor, where, strict=True, pending_id=pending.id, command=pending.command,
                              two_person_waived=waived)
        except Exception as exc:
            log.error("action log unavailable, not executing %s: %s", pending.command, exc)
            try:
                given_back = self.pending.release(claim.pending, "confirmed", actor.user_id)
            except Exception as lost:  # the bot's Redis is gone too: the refusal must still reach the user
                log.error("could not give back the Confirm of %s: %s", pending.id, lost)
                given_back = False
            again = md("confirm again") if given_back else md("run {} again for a fresh preview", code(pending.text))
            return Outcome("unavailable", Result.error(
                md("The action log cannot be written ({}), so {} was not executed. Nothing changed; {} once it is"
                   " back.", str(exc).strip() or type(exc).__name__, code(pending.text), again),
                command=pending.text), pending, command)
        return self._execute(claim.pending, command, actor, where, progress)

    def cancel(self, pending_id: str, actor: Actor, where: Where) -> Outcome:
        pending = self.pending.get(pending_id)
        if pending is None:
            return self._gone(pending_id, actor, where)
        command = self.registry.get(pending.command)
        where = replace(where, context=pending.context) if pending.context else where
        if actor.user_id != pending.requester:
            refusal = self._may_respond(pending, command, actor, where, "Cancelling")
            if refusal:
                return refusal
        claim = self.pending.claim(pending.id, "cancelled", actor.user_id)
        if claim.state != "claimed":
            return self._gone(pending_id, actor, where)
        self.recorder.log("cancel", actor, where, pending_id=pending.id, command=pending.command)
        result = Result.warn(md("Cancelled {}: nothing was changed.", code(pending.text)),
                             data={"pending_id": pending.id}, command=pending.text)
        self.recorder.announce(result, where)
        return Outcome("cancelled", result, pending, command)

    def _parsed(self, pending: PendingAction) -> Parsed:
        """The pending command as it was parsed at the request (its text is parsed only if it came without)."""
        command = self.registry.get(pending.command)
        if pending.args is None or command is None:
            return parse(pending.text, self.registry, self.prefix)
        return Parsed(command, dict(pending.args), pending.text, pending.context)

    def _may_respond(self, pending: PendingAction, command: Command | None, actor: Actor, where: Where,
                     doing: str) -> Outcome | None:
        def deny(reason) -> Outcome:
            self.recorder.log("denied", actor, where, pending_id=pending.id, command=pending.command,
                              reason=plain(reason))
            return Outcome("denied", Result.error(reason), pending, command)

        if where.channel != pending.channel and not actor.local_admin:
            return deny(md("{} must happen in the channel where {} was requested.", doing, code(pending.text)))
        try:
            self.authorize(self._parsed(pending), actor, where, md("{} {}", doing, code(pending.text)))
        except UsageError as exc:
            return Outcome("refused", Result.error(f"The pending command no longer parses: {exc}"), pending, command)
        except Denied as exc:
            return deny(exc.text)
        if doing == "Confirming" and not pending.two_person and actor.user_id != pending.requester \
                and not actor.local_admin:
            return deny(md("Only {}, who requested {}, can confirm it.", mention(pending.requester),
                           code(pending.text)))
        return None

    # -- execution ------------------------------------------------------------------------------

    def _execute(self, pending: PendingAction, command: Command, actor: Actor, where: Where,
                 progress: Progress) -> Outcome:
        """Re-plan, then run the confirmed action once, tracked so that a dead executor is reported, not hidden."""
        try:
            tracked = self.executions.run(pending, owner=_OWNER)
            execution = tracked.__enter__()
        except Exception as exc:
            result = Result.error(md("{} was not executed: its run cannot be recorded in Redis ({}).",
                                     code(pending.text), str(exc)), command=pending.text)
            self.recorder.outcome(actor, where, command.name, result, self.clock(), pending_id=pending.id)
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
                        progress: Progress, execution: Execution) -> Outcome:
        assert command.guard is not None
        requester = Actor(pending.requester, team=pending.team)
        origin = Where(pending.channel, pending.thread_ts, pending.channel_name, pending.context)
        try:
            parsed = self._parsed(pending)
        except UsageError as exc:
            return Outcome("refused", Result.error(f"The pending command no longer parses: {exc}"), pending, command)
        started = self.clock()
        old = Plan("", data=pending.plan, fingerprint=pending.fingerprint)
        fresh = self._plan(parsed, requester, origin, old)
        if isinstance(fresh, Result):
            self.recorder.outcome(actor, where, command.name, fresh, started, pending_id=pending.id)
            return Outcome("result", fresh, pending, command)
        still_valid = command.guard.still_valid or (lambda before, after: before.fingerprint == after.fingerprint)
        if not still_valid(old, fresh):
            self.recorder.log("refused", actor, where, pending_id=pending.id, command=command.name,
                              old_fingerprint=old.fingerprint, new_fingerprint=fresh.fingerprint)
            outcome = self.preview(parsed, requester, origin, notice=":warning: *Not executed*: the world changed"
                                                                       " beyond the previewed plan. Here is the new plan.")
            return Outcome("refused", outcome.result, outcome.pending, command)
        invocation = self.invocation(parsed, requester, origin)
        invocation.confirmed_by, invocation.pending_id = actor.user_id, pending.id

        def show(update: Result) -> None:
            execution.progress(plain(update.summary))
            if progress is not None:
                progress(update)

        invocation.progress = show
        result = self.recorder.call(command, lambda: command.guard.execute(invocation, fresh))
        finish(progress, result)
        result = result.with_(data={**result.data, "pending_id": pending.id, "requested_by": pending.requester,
                                    "confirmed_by": actor.user_id}, command=pending.text)
        self.recorder.outcome(actor, where, command.name, result, started, pending_id=pending.id)
        self.recorder.announce(result, origin)
        return Outcome("result", result, pending, command)

    # -- what happened to it --------------------------------------------------------------------

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
            elif how == "confirmed" and running is None:  # its confirm row is being written, or could not be
                sections = [Section(text=md("It has not started running yet."))]
            return Outcome("taken", Result.warn(md("Already {} by {}; nothing more was done.", how, mention(user)),
                                                sections=sections))
        self.recorder.log("expired", actor, where, pending_id=pending_id)
        ttl = format_duration(self.settings.guard.confirm_ttl)
        return Outcome("expired", Result.warn(f"This confirmation has expired (they last {ttl}): nothing was changed."
                                              " Run the command again for a fresh preview."))

    def _interrupted(self, state: ExecutionState) -> Outcome:
        """A confirmed action whose executor died mid-run: say so (once in the log and the channel), run nothing."""
        progress = md(" Its last progress: {}.", state.progress) if state.progress else md(" It recorded no progress.")
        result = Result.warn(
            md("{} was interrupted: the process executing it ({}) stopped before it finished.", code(state.text),
               state.owner) + progress + md(" Nothing was run again: run {} again for a fresh plan.", code(state.text)),
            data={"pending_id": state.pending_id, "interrupted": True, "owner": state.owner,
                  "progress": state.progress}, command=state.text)
        if self.executions.claim_report(state.pending_id):
            origin = Where(state.channel or "cli", context=state.context)
            self.executions.close_interrupted(state, plain(result.summary))
            self.recorder.log("outcome", Actor("opsbot"), origin, command=state.command, status="interrupted",
                              summary=plain(result.summary), pending_id=state.pending_id, progress=state.progress)
            self.recorder.announce(result, origin)
        return Outcome("interrupted", result)

    def report_interrupted(self) -> int:
        """Report confirmed actions whose executor died (a worker's sweep calls this); each is reported once."""
        found = self.executions.stale()
        for state in found:
            self._interrupted(state)
        return len(found)
