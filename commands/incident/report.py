"""An incident's timeline (its events and the action log's entries made in its context) and postmortem draft.

Usage::

    entries = timeline(store, incident)              # [Entry(at, who, what, result)], oldest first
    text = postmortem(settings, incident, entries)   # Markdown from runbooks/<incidents.postmortem_template>
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bot.config.settings import Settings
from bot.core.durations import format_duration
from bot.core.invocation import CommandError
from commands.incident.store import Incident, IncidentStore

__all__ = ["Entry", "timeline", "postmortem"]

FOLLOW_UP = ("follow-up:", "followup:", "todo:", "action:")


@dataclass(frozen=True)
class Entry:
    at: datetime
    who: str
    what: str
    result: str = ""
    kind: str = ""  # declared | severity | phase | note | resolved | reminder | page | command | confirm | cancel

    @property
    def bot_action(self) -> bool:
        return self.kind in ("command", "confirm", "cancel")


def timeline(store: IncidentStore, incident: Incident) -> list[Entry]:
    entries = [Entry(e.at, e.actor, e.text, kind=e.kind) for e in store.events(incident)]
    for at, actor, action, payload in store.actions(incident):
        if str(payload.get("command", "")).startswith("incident "):
            continue  # the incident's own commands are on the timeline as its events
        command = payload.get("text") or payload.get("command", "")
        if action == "outcome":
            entries.append(Entry(at, actor, f"`{payload.get('command', '')}`",
                                 f"{payload.get('status', '')}: {payload.get('summary', '')}", "command"))
        elif action == "request" and payload.get("pending_id"):
            entries.append(Entry(at, actor, f"requested `{command}`", f"awaiting confirmation: {payload.get('plan', '')}",
                                 "command"))
        elif action in ("confirm", "cancel"):
            entries.append(Entry(at, actor, f"{action}ed `{command}`", kind=action))
        elif action == "denied":
            entries.append(Entry(at, actor, f"was refused `{command}`", payload.get("reason", ""), "command"))
        elif action == "not_acted_on":  # its request or confirm row could not be committed: nothing ran
            what = "confirmed" if payload.get("of") == "confirm" else "requested"
            entries.append(Entry(at, actor, f"{what} `{command}`: not run, the action log could not be written",
                                 payload.get("error", ""), "command"))
    return sorted(entries, key=lambda e: e.at)


def postmortem(settings: Settings, incident: Incident, entries: list[Entry]) -> str:
    import jinja2

    path = Path(settings.runbooks_path, settings.incidents.postmortem_template)
    if not path.is_file():
        raise CommandError(f"postmortem template {path} not found (incidents.postmortem_template)")
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                     autoescape=False)
    template = environment.from_string(path.read_text(encoding="utf-8"))
    notes = [e for e in entries if e.kind == "note"]
    follow_ups = [e for e in notes if e.what.lower().startswith(FOLLOW_UP)]
    duration = ((incident.resolved_at or entries[-1].at) - incident.declared_at).total_seconds() if entries else 0
    level = settings.incidents.severities.get(incident.severity)
    try:
        return template.render(
            incident=incident, severity=incident.severity.upper(),
            severity_description=level.description if level else "",
            duration=format_duration(duration), timeline=entries,
            actions=[e for e in entries if e.bot_action], notes=[e for e in notes if e not in follow_ups],
            follow_ups=follow_ups, due=incident.postmortem_due_at)
    except jinja2.TemplateError as exc:
        raise CommandError(f"postmortem template {path.name}: {exc}") from None
