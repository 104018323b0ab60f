"""The incident desk: declare, update, remind and report, over a store and a board (the Slack side).

Usage::

    desk = IncidentDesk(settings, store, board)          # board: None when Slack is not configured
    incident = desk.declare("sev2", "Exports failing", "U1")
    desk.note(incident, "U2", "restarted the export worker")
    desk.sweep(now)                                       # reminders and overdue postmortems, each sent once

The desk knows nothing of Block Kit: it hands the board :class:`~bot.core.result.Result`
objects (the root message is one, with its buttons) and the board renders and posts.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Protocol

from bot.config.settings import Settings

from commands.incident.settings import IncidentSettings, SeveritySettings
from bot.core.durations import format_duration
from bot.core.httpretry import request
from bot.core.invocation import BadArgument, CommandError
from bot.core.markup import Mrkdwn, code, here, md, mention, plain, subteam
from bot.core.result import Attachment, Button, Form, Result, Section
from commands.incident.store import Incident, IncidentStore

__all__ = ["Board", "IncidentDesk", "PHASES", "NOTE_FORM"]

# "Add note" on the root message: what is written runs `incident note` as its author
NOTE_FORM = Form("incident_note", "Update {value}", "What happened, or what did you do?",
                 "incident note {text} --incident {value}", field="note")

log = logging.getLogger("opsbot.incidents")

PHASES = ("detect", "triage", "mitigate", "communicate", "postmortem")


class Board(Protocol):
    """Where incidents are shown: the Slack implementation is :class:`bot.slack.board.SlackBoard`."""

    def post_root(self, message: Result, color: str) -> tuple[str, str]: ...  # (channel id, ts)

    def update_root(self, channel: str, ts: str, message: Result, color: str) -> None: ...

    def post_thread(self, channel: str, ts: str, message: Result) -> None: ...

    def upload_thread(self, channel: str, ts: str, attachment: Attachment) -> None: ...


def _now() -> datetime:
    return datetime.now(UTC)


class IncidentDesk:
    def __init__(self, settings: Settings, store: IncidentStore, board: Board | None,
                 clock=_now, command: str = "/ops"):
        self.settings = settings
        self.config: IncidentSettings = settings.incidents
        self.store = store
        self.board = board
        self.clock = clock
        self.command = command

    # -- severities -------------------------------------------------------------------------
    def severity(self, name: str) -> SeveritySettings:
        key = name.lower()
        if key not in self.config.severities:
            raise BadArgument(f"unknown severity {name!r}; use one of {', '.join(self.config.severities)}")
        return self.config.severities[key]

    def target_text(self, name: str) -> str:
        level = self.severity(name)
        if level.page:
            how = "paged" if self.can_page(level) else "not paged: no notify groups, pager URL or Slack"
            return f"immediate ({how})" + (f", then updates every {format_duration(level.response)}"
                                           if level.response else "")
        return f"an update every {format_duration(level.response)}" if level.response else "backlog (no reminders)"

    def can_page(self, level: SeveritySettings) -> bool:
        """Whether declaring this severity reaches anyone: a pager webhook, or Slack (groups or @here)."""
        return bool(self.config.page_url) or self.board is not None

    def _responses(self) -> dict[str, float | None]:
        return {name: level.response for name, level in self.config.severities.items()}

    # -- the root message -------------------------------------------------------------------
    def root_message(self, incident: Incident) -> Result:
        level = self.severity(incident.severity)
        sev = incident.severity.upper()
        fields = [("Commander", mention(incident.commander)), ("Phase", incident.phase.title()),
                  ("Status", incident.status.title()), ("Target response", self.target_text(incident.severity))]
        if incident.summary:
            fields.append(("Resolution", incident.summary))
        sections = [Section(fields=tuple(fields)),
                    Section(text=md("{}. This thread is {}'s home: run commands here or with {}; {} posts an update.",
                                    level.description, incident.id, code(f"--incident {incident.id}"),
                                    code(f"{self.command} incident note <text>")))]
        buttons = []
        if incident.open:
            names = list(self.config.severities)
            index = names.index(incident.severity)
            if index > 0:
                buttons.append(Button(f"Escalate to {names[index - 1].upper()}", "run",
                                      f"incident sev {names[index - 1]} --incident {incident.id}", style="danger"))
            if index < len(names) - 1:
                buttons.append(Button(f"Lower to {names[index + 1].upper()}", "run",
                                      f"incident sev {names[index + 1]} --incident {incident.id}"))
            buttons.append(Button("Add note", "form", incident.id, form=NOTE_FORM.name))
            buttons.append(Button("Resolve", "run", f"incident resolve --incident {incident.id}", style="primary",
                                  confirm=f"Resolve {incident.id}?"))
        make = Result.ok if not incident.open else (Result.fail if level.page else Result.warn)
        return make(f"{sev} · {incident.id} · {incident.title}", sections=sections, buttons=buttons,
                    data={"incident": incident.as_dict()})

    def _refresh(self, incident: Incident) -> None:
        if self.board is None or not incident.root_ts:
            return
        try:
            self.board.update_root(incident.channel, incident.root_ts, self.root_message(incident),
                                   self.severity(incident.severity).color)
        except Exception as exc:
            log.error("could not update the root message of %s: %s", incident.id, exc)

    def post(self, incident: Incident, message: Result) -> bool:
        """Post into the incident's thread; False when there is no thread to post to."""
        if self.board is None or not incident.root_ts:
            return False
        self.board.post_thread(incident.channel, incident.root_ts, message)
        return True

    # -- declare and update -----------------------------------------------------------------
    def declare(self, severity: str, title: str, actor: str) -> tuple[Incident, list[str]]:
        level = self.severity(severity)
        if not title.strip():
            raise CommandError("give the incident a one-line title: incident declare sev2 Exports are failing")
        now = self.clock()
        incident = self.store.declare(severity.lower(), title.strip(), commander=actor, now=now,
                                      response=level.response)
        notes = []
        if self.board is None:
            notes.append("Slack is not configured: the incident is recorded, but no thread was opened")
        else:
            try:
                channel, ts = self.board.post_root(self.root_message(incident), level.color)
                incident = self.store.update(incident, channel=channel, root_ts=ts)
            except Exception as exc:
                log.error("could not post the root message of %s: %s", incident.id, exc)
                notes.append(f"the root message could not be posted ({exc}); use --incident {incident.id}")
        if level.page:
            notes.append(self.page(incident, actor, f"{incident.severity.upper()} declared"))
        return incident, notes

    def repost(self, incident: Incident, actor: str) -> Incident:
        """Post the root message again (Slack refused it at declare time, or it was deleted): a new home."""
        if self.board is None:
            raise CommandError("Slack is not configured: there is no channel to post the incident to")
        level = self.severity(incident.severity)
        channel, ts = self.board.post_root(self.root_message(incident), level.color)
        before = incident.root_ts
        incident = self.store.update(incident, channel=channel, root_ts=ts)
        self.store.event(incident, actor, "reposted", f"root message posted again (was {before or 'missing'})",
                         now=self.clock())
        return incident

    def page(self, incident: Incident, actor: str, why: str) -> str:
        import httpx

        who = _mentions(self.severity(incident.severity)) or here()
        self.post(incident, Result.fail(md("Paging {}: {} — {} {}", who, why, incident.id, incident.title)))
        sent = "paged in the thread"
        if self.config.page_url:
            page_url = self.config.page_url.get_secret_value()  # the URL itself is the secret: never shown
            try:
                with httpx.Client(timeout=10) as client:
                    response = request(client, "POST", page_url, retries=2, json={
                        "incident": incident.id, "severity": incident.severity, "title": incident.title,
                        "summary": why, "commander": incident.commander})
                sent += f", pager webhook answered HTTP {response.status_code}"
            except CommandError as exc:
                sent += f", pager webhook failed: {str(exc).replace(page_url, 'the pager webhook')}"
        self.store.event(incident, actor, "page", f"{why}: {sent}", now=self.clock())
        return sent

    def change_severity(self, incident: Incident, level: str, actor: str) -> tuple[Incident, list[str]]:
        new = self.severity(level)
        before = incident.severity
        if level.lower() == before:
            raise CommandError(f"{incident.id} is {before.upper()} already")
        now = self.clock()
        incident = self.store.update(incident, severity=level.lower())
        incident = self.store.touch(incident, now, new.response)
        self.store.event(incident, actor, "severity", f"{before.upper()} → {level.upper()}", now=now)
        self._refresh(incident)
        notes = []
        if new.page and not self.severity(before).page:
            notes.append(self.page(incident, actor, f"raised to {level.upper()}"))
        return incident, notes

    def set_phase(self, incident: Incident, phase: str, actor: str) -> Incident:
        phase = phase.lower()
        if phase not in PHASES:
            raise BadArgument(f"unknown phase {phase!r}; phases: {' → '.join(PHASES)}")
        now = self.clock()
        before = incident.phase
        incident = self.store.touch(self.store.update(incident, phase=phase), now,
                                    self.severity(incident.severity).response)
        self.store.event(incident, actor, "phase", f"{before} → {phase}", now=now)
        self._refresh(incident)
        return incident

    def note(self, incident: Incident, actor: str, text: str) -> Incident:
        if not text.strip():
            raise CommandError("the note is empty: incident note <what happened or what you did>")
        now = self.clock()
        incident = self.store.touch(incident, now, self.severity(incident.severity).response)
        self.store.event(incident, actor, "note", text.strip(), now=now)
        return incident

    def resolve(self, incident: Incident, actor: str, summary: str) -> Incident:
        if not incident.open:
            raise CommandError(f"{incident.id} was resolved already")
        now = self.clock()
        incident = self.store.update(
            incident, status="resolved", phase="postmortem", resolved_at=now, summary=summary.strip() or None,
            next_reminder_at=None, last_update_at=now,
            postmortem_due_at=now + timedelta(seconds=self.config.postmortem_within))
        self.store.event(incident, actor, "resolved", summary.strip() or "resolved", now=now)
        self._refresh(incident)
        return incident

    def touched(self, incident: Incident) -> None:
        """A command ran in the incident's context: that is an update too."""
        if incident.open:
            self.store.touch(incident, self.clock(), self.severity(incident.severity).response)

    # -- what falls due ---------------------------------------------------------------------
    def sweep(self, now: datetime | None = None) -> int:
        """Send due reminders and overdue-postmortem reminders; each is claimed by exactly one sweeper."""
        now = now or self.clock()
        due = [(incident, self._quiet_text(incident, now))
               for incident in self.store.claim_reminders(now, self._responses())]
        due += [(incident, self._postmortem_text(incident, now)) for incident in self.store.claim_postmortems(now)]
        for incident, text in due:
            self.post(incident, Result.warn(text))
            self.store.event(incident, "opsbot", "reminder", plain(text), now=now)
        return len(due)

    def _quiet_text(self, incident: Incident, now: datetime) -> Mrkdwn:
        who = _mentions(self.severity(incident.severity))
        quiet = format_duration((now - incident.last_update_at).total_seconds())
        return md("{} ({}) has had no update for {}; the target is {}. Post one: {}", incident.id,
                  incident.severity.upper(), quiet, self.target_text(incident.severity),
                  code(f"{self.command} incident note <text>")) + (md(" {}", who) if who else "")

    def _postmortem_text(self, incident: Incident, now: datetime) -> Mrkdwn:
        late = format_duration((now - incident.postmortem_due_at).total_seconds())
        within = format_duration(self.config.postmortem_within)
        return md("The postmortem of {} was due {} ago (within {} of resolving): {} drafts it. {}", incident.id, late,
                  within, code(f"{self.command} incident postmortem --incident {incident.id}"),
                  mention(incident.commander))


def _mentions(level: SeveritySettings) -> Mrkdwn:
    return Mrkdwn(" ").join(subteam(group) for group in level.notify)
