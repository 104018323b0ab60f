"""The root message of an alert group's thread, as a Result: status, name, summary, labels, links and buttons.

Usage::

    root = root_message(group, record, match, settings, steps)   # steps: the runbook steps shown as Run buttons
    color = color_of(group, settings)

Every label, annotation and URL came from outside: they are values (escaped by the
renderer), links only when they are plain http(s) URLs, and long lists are cut with a
count, so a hostile or huge alert still makes a message Slack takes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from urllib.parse import quote

from bot.core.durations import format_duration
from bot.core.markup import Mrkdwn, code, link, md
from bot.core.result import Button, Result, Section
from bot.core.runbooks import Step
from commands.alerts.matching import Match
from commands.alerts.payload import AlertGroup
from commands.alerts.settings import AlertSettings

__all__ = ["color_of", "root_message", "silence_buttons"]

RED, AMBER, GREEN = "#E01E5A", "#ECB22E", "#2EB67D"
MAX_LABELS_SHOWN = 20
MAX_STEP_BUTTONS = 10


def color_of(group: AlertGroup, settings: AlertSettings) -> str:
    if group.status == "resolved":
        return GREEN
    severity = group.labels.get(settings.severity_label, "").lower()
    return RED if severity in ("critical", "page", "error") or severity in settings.declare else AMBER


def _when(epoch: float | None) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if epoch else "—"


def _labels(labels: dict[str, str]) -> Mrkdwn:
    shown = [code(f"{key}={value}") for key, value in sorted(labels.items())[:MAX_LABELS_SHOWN]]
    more = len(labels) - len(shown)
    return Mrkdwn(" ").join(shown) + (md(" and {} more", more) if more > 0 else "")


def _alert_lines(group: AlertGroup, limit: int) -> Mrkdwn:
    common = group.labels
    lines = []
    for alert in group.alerts[:limit]:
        own = {k: v for k, v in alert.labels.items() if common.get(k) != v}
        text = md("• {} {}", "resolved" if alert.status == "resolved" else "firing", alert.name)
        if own:
            text += md(" ") + _labels(own)
        summary = alert.annotations.get("summary") or alert.annotations.get("description")
        if summary:
            text += md(": {}", summary[:300])
        lines.append(text)
    more = len(group.alerts) - len(lines) + group.truncated
    if more > 0:
        lines.append(md("… and {} more alerts in this group", more))
    return Mrkdwn("\n").join(lines)


def _links(group: AlertGroup) -> Mrkdwn:
    links = []
    generator = next((a.generator_url for a in group.alerts if a.generator_url), "")
    if generator:
        links.append(link(generator, "Source"))
    silence = next((a.silence_url for a in group.alerts if a.silence_url), "")
    if not silence and group.external_url and group.labels:
        matchers = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(group.labels.items()))
        silence = f"{group.external_url.rstrip('/')}/#/silences/new?filter={quote('{' + matchers + '}')}"
    if silence:
        links.append(link(silence, "Silence in " + ("Grafana" if group.source == "grafana" else "Alertmanager")))
    return Mrkdwn(" · ").join(links)


def silence_buttons(gid: str, settings: AlertSettings) -> list[Button]:
    if not settings.alertmanager_url:
        return []
    return [Button(f"Silence {format_duration(seconds)}", "run", f"alerts silence {gid} --for {int(seconds)}s")
            for seconds in settings.silence_for]


def root_message(group: AlertGroup, record: dict, match: Match | None, settings: AlertSettings,
                 steps: list[Step]) -> Result:
    firing = group.status != "resolved"
    word = "FIRING" if firing else "RESOLVED"
    summary = md("{} {}", word, group.name) + (md(": {}", group.summary[:300]) if group.summary else "")
    fields = [("Alerts", f"{len(group.firing)} firing of {len(group.alerts) + group.truncated}"),
              ("Notifications", f"{record.get('count', 1)} · last {_when(record.get('last'))}"),
              ("First seen", _when(record.get("first")))]
    severity = group.labels.get(settings.severity_label)
    if severity:
        fields.append(("Severity", severity))
    if record.get("incident"):
        fields.append(("Incident", md("{} (its thread in the incident channel)", record["incident"])))
    sections = [Section(fields=tuple(fields))]
    if group.labels:
        sections.append(Section(text=md("*Labels:* ") + _labels(group.labels)))
    sections.append(Section(text=_alert_lines(group, settings.max_shown)))
    links = _links(group)
    if links:
        sections.append(Section(text=links))
    if match is None:
        sections.append(Section(text=md("No runbook answers {}: add {} to a runbook's front matter to get its steps"
                                        " and diagnosis here.", code(group.name),
                                        code(f"alerts: [{group.name}]"))))
    else:
        params = " ".join(f"{k}={v}" for k, v in match.params.items())
        sections.append(Section(text=md("*Runbook:* {} {}", code(f"{match.book.name} {params}".strip()),
                                        match.book.title)))
    buttons = [Button(f"Run: {step.run}"[:75], "run", step.run) for step in steps[:MAX_STEP_BUTTONS]]
    if firing:
        buttons += silence_buttons(group.gid, settings)
    make = Result.fail if firing else Result.ok
    return make(summary, sections=sections, buttons=buttons,
                data={"alert_group": group.gid, "status": group.status, "alertname": group.name,
                      "labels": group.labels, "runbook": match.book.name if match else None})
