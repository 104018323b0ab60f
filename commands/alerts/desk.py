"""The alert desk: one thread per alert group, with its runbook, its diagnosis, escalation and resolution.

Usage (the ``POST /alerts`` webhook's handler, in a worker)::

    AlertDesk(runtime).receive(body)     # an Alertmanager or Grafana webhook body

The first notification of a group posts the root message (status colour, name, summary,
labels, links, the runbook's steps as Run buttons, Silence buttons), then in its thread
the runbook and the results of its read-only steps; a severity named in ``alerts.declare``
declares an incident (through the ``incident declare`` command) and links the two. Later
notifications of the group edit the root (count, last seen, status); a change of status
(resolved, firing again) is also posted in the thread. The same body delivered twice
within a minute (an Alertmanager retry, or two replicas) is handled once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shlex
import time
from typing import Any

from bot.core.invocation import Actor, Where
from bot.core.markup import channel, code, md, plain
from bot.core.parser import UsageError
from bot.core.result import Result
from bot.core.runbooks import Step
from commands.alerts.matching import Match, match_runbook
from commands.alerts.message import color_of, root_message
from commands.alerts.payload import AlertGroup, read_group
from commands.alerts.settings import AlertSettings
from commands.alerts.state import AlertGroups
from commands.runbook import library_for

__all__ = ["AlertDesk", "BOT"]

log = logging.getLogger("opsbot.alerts")

BOT = Actor("opsbot-alerts", team="alerts")  # runs the diagnosis: no role, so only what anyone may run
ESCALATOR = Actor.local("alertmanager")  # declares incidents as app.yaml's alerts.declare says
THREAD_KEPT = 30  # summaries of the thread's posts kept with the group (`alerts show`)
RETRY_WINDOW = 60.0  # seconds: the same body again within this is a retry, not a repeat
_CHANNEL_ID = re.compile(r"[CG][A-Z0-9]{1,30}")


class AlertDesk:
    def __init__(self, runtime: Any, clock=time.time):
        self.runtime = runtime
        self.settings = runtime.settings
        self.config: AlertSettings = runtime.settings.alerts
        self.channel = self.config.channel or self.settings.slack.incident_channel
        self.board = runtime.board(self.channel, setting="alerts.channel (or slack.incident_channel)")
        self.groups = AlertGroups(runtime.state.redis, self.settings.state.prefix)
        self.clock = clock

    def receive(self, body: dict) -> str:
        """Handle one webhook body; returns what was done (posted, updated, duplicate). Raises when Slack refused
        the root message (the body is queued again)."""
        group = read_group(body)
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        with self.groups.holding(group.gid, timeout=self.config.lock_timeout):
            record = self.groups.get(group.gid)
            now = self.clock()
            if record.get("digest") == digest and now - record.get("last", 0) < RETRY_WINDOW:
                return "duplicate"
            before = record.get("status")
            record.update(key=group.key[:500], name=group.name, labels=group.labels, status=group.status,
                          digest=digest, last=now, count=record.get("count", 0) + 1,
                          first=record.get("first", now))
            match = self._match(group)
            steps = self._steps(match)
            if not record.get("opened"):
                record["opened"] = now
                return self._open(group, record, match, steps)
            self._refresh(group, record, match, steps)
            if before != group.status:
                self._post(record, Result.ok(md("Resolved: {}", group.name)) if group.status == "resolved"
                           else Result.fail(md("Firing again: {}", group.name)))
                self._timeline(record, f"alert {group.name} {group.status}")
            self.groups.save(group.gid, record)
            return "updated"

    # -- the first notification -----------------------------------------------------------
    def _open(self, group: AlertGroup, record: dict, match: Match | None, steps: list[Step]) -> str:
        record["steps"] = [step.run for step in steps]
        if self.board is None:  # no Slack (the demo, a terminal): the thread is kept with the group, for `alerts show`
            log.info("alert %s received, but Slack is not configured: its thread is kept for `alerts show`",
                     group.name)
        else:
            channel, ts = self.board.post_root(root_message(group, record, match, self.config, steps),
                                               color_of(group, self.config))
            record.update(channel=channel, ts=ts)
        self.groups.save(group.gid, record)  # from here on, every replica updates this thread
        if match is not None:
            self._post(record, self._runbook(match))
            if group.status != "resolved" and self.config.diagnose:
                self._diagnose(record, match)
        if group.status != "resolved":
            self._escalate(group, record, match, steps)
        self.groups.save(group.gid, record)
        return "posted"

    def _runbook(self, match: Match) -> Result:
        text = " ".join([f"runbook {match.book.name}", *(f"{k}={v}" for k, v in match.params.items())])
        outcome = self.runtime.engine.handle(text, BOT, Where("cli"))
        result = outcome.result
        if match.notes:
            result = result.with_(summary=result.summary + md(" ({})", "; ".join(match.notes)))
        return result

    def _diagnose(self, record: dict, match: Match) -> None:
        where = self._where(record)
        ran = 0
        for step in match.rendered.steps:
            if ran >= self.config.max_diagnosis:
                break
            parsed = self._diagnosis(step)
            if parsed is None:
                continue
            ran += 1
            outcome = self.runtime.engine.handle(parsed, BOT, where)
            result = outcome.result
            self._post(record, result.with_(summary=md("Diagnosis, step {} {}: ", step.number, code(step.run))
                                            + result.summary))

    def _diagnosis(self, step: Step):
        """The step's command when it only reads (alerts.diagnosis, not guarded, no role needed); else None."""
        if not step.run:
            return None
        try:
            parsed = self.runtime.engine.parse(step.run)
        except UsageError:
            return None
        name = parsed.command.name
        allowed = any(name == word or name.startswith(word + " ") for word in self.config.diagnosis)
        role, _ = self.runtime.engine.policy.role_for(parsed)
        return parsed if allowed and not parsed.command.guarded and role is None else None

    def _escalate(self, group: AlertGroup, record: dict, match: Match | None, steps: list[Step]) -> None:
        severity = self.config.declare.get(group.labels.get(self.config.severity_label, "").lower())
        if not severity or record.get("incident") or "incident declare" not in self.runtime.registry:
            return
        title = f"{group.name}: {group.summary}" if group.summary else group.name
        outcome = self.runtime.engine.handle(f"incident declare {severity} {_quoted(title[:150])}", ESCALATOR,
                                             Where("cli"))
        incident = (outcome.result.data or {}).get("incident") or {}
        if outcome.result.status != "ok" or not incident.get("id"):
            self._post(record, Result.warn(md("Could not declare an incident for this alert: {}",
                                              outcome.result.summary)))
            return
        record["incident"] = incident["id"]
        self.groups.save(group.gid, record)
        self._refresh(group, record, match, steps)
        where = md(" in {}", channel(incident["channel"])) if _CHANNEL_ID.fullmatch(incident.get("channel") or "") \
            else md("")
        self._post(record, Result.warn(md("{} declared ({}) from this alert: its thread{} has its timeline.",
                                          incident["id"], severity.upper(), where)))
        self._timeline(record, f"alert {group.name} firing ({len(group.firing)} alerts): {group.summary}"[:500])

    def _timeline(self, record: dict, text: str) -> None:
        """Put the alert on the incident's timeline, when the group declared one."""
        if record.get("incident"):
            self.runtime.engine.handle(f"incident note {_quoted(text)} --incident {record['incident']}", ESCALATOR,
                                       Where("cli"))

    # -- later notifications ------------------------------------------------------------
    def _refresh(self, group: AlertGroup, record: dict, match: Match | None, steps: list[Step]) -> None:
        self.groups.save(group.gid, record)
        if self.board is None or not record.get("ts"):
            return
        try:  # the thread's posts matter more than the root's figures: a refused edit is logged, not retried
            self.board.update_root(record["channel"], record["ts"],
                                   root_message(group, record, match, self.config, steps), color_of(group, self.config))
        except Exception as exc:
            log.error("could not update the root message of alert %s: %s", group.name, exc)

    def _post(self, record: dict, result: Result) -> None:
        record["thread"] = [*record.get("thread", []), plain(result.summary)[:300]][-THREAD_KEPT:]
        if self.board is not None and record.get("ts"):
            self.board.post_thread(record["channel"], record["ts"], result)

    def _where(self, record: dict) -> Where:
        if not record.get("ts"):
            return Where("cli")
        return Where(record["channel"], thread_ts=record["ts"], channel_name=self.channel.lstrip("#"))

    def _match(self, group: AlertGroup) -> Match | None:
        labels = {**(group.firing or group.alerts or [None])[0].labels, **group.labels} if group.alerts \
            else dict(group.labels)
        try:
            return match_runbook(library_for(self.settings), labels)
        except Exception as exc:  # a broken runbook must not lose the alert: it is posted without one
            log.error("runbook matching failed for %s: %s", group.name, exc)
            return None

    def _steps(self, match: Match | None) -> list[Step]:
        """The runbook's steps with a command this bot knows: they become Run buttons."""
        if match is None:
            return []
        steps = []
        for step in match.rendered.steps:
            if step.run:
                try:
                    self.runtime.engine.parse(step.run)
                except UsageError:
                    continue
                steps.append(step)
        return steps


def _quoted(text: str) -> str:
    return shlex.quote(" ".join(text.split()))
