"""``alerts ...`` and ``POST /alerts``: Alertmanager and Grafana alerts become threads with their runbook.

The group offers a webhook (``POST /alerts``, :class:`bot.core.group.Webhook`) whose
bodies the workers hand to the :class:`~commands.alerts.desk.AlertDesk`: one thread per
alert group in the incident channel, the matched runbook's steps as Run buttons, its
read-only steps already run, escalation to an incident by severity, and a guarded
``alerts silence`` behind the Silence buttons. Settings: ``alerts:``
(:mod:`commands.alerts.settings`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bot.core.group import Check, Group, Webhook
from bot.core.invocation import BadArgument, Invocation
from bot.core.markup import md
from bot.core.registry import Arg, Command, Guard, duration, lazy
from bot.core.result import Button, Result, Section
from commands.alerts.settings import AlertSettings
from commands.alerts.state import AlertGroups

__all__ = ["COMMANDS", "GROUP"]


def show_group(inv: Invocation) -> Result:
    """The group's status and counts, what its thread holds, and its runbook's steps as Run buttons."""
    record = AlertGroups(inv.state.redis, inv.settings.state.prefix).get(inv.args["group"])
    if not record:
        raise BadArgument(f"no alert group {inv.args['group']!r} is known here")
    when = lambda epoch: f"{datetime.fromtimestamp(epoch, UTC):%Y-%m-%d %H:%M:%S} UTC" if epoch else "—"  # noqa: E731
    fields = [("Notifications", str(record.get("count", 0))), ("First seen", when(record.get("first"))),
              ("Last seen", when(record.get("last")))]
    if record.get("incident"):
        fields.append(("Incident", record["incident"]))
    if record.get("silences"):
        fields.append(("Silences", ", ".join(record["silences"])))
    labels = " ".join(f"{k}={v}" for k, v in sorted((record.get("labels") or {}).items()))
    sections = [Section(fields=tuple(fields)), Section(title="Labels", text=labels[:2000] or "none")]
    if record.get("thread"):
        sections.append(Section(title="In its thread", text="\n".join(f"• {line}" for line in record["thread"])))
    buttons = [Button(f"Run: {command}"[:75], "run", command) for command in record.get("steps", [])[:10]]
    make = Result.ok if record.get("status") == "resolved" else Result.fail
    return make(md("{} {}", (record.get("status") or "?").upper(), record.get("name", "?")),
                data={k: v for k, v in record.items() if k != "digest"}, sections=sections, buttons=buttons)


COMMANDS = [
    Command("alerts silence", "Silence an alert group in Alertmanager for a while (the alert's Silence buttons)",
            args=(Arg("group", "the alert group's id (on its Silence buttons)", positional=True, required=True),
                  Arg("for", "how long, e.g. 4h", type=duration, default=3600.0)),
            guard=Guard(plan=lazy("commands.alerts.silence", "plan_silence"),
                        execute=lazy("commands.alerts.silence", "execute_silence")), role="oncall",
            examples=("alerts silence 3f2a9c0d1e2b4a5c --for 4h",)),
    Command("alerts show", "What opsbot knows of an alert group: status, notifications, thread, incident",
            args=(Arg("group", "the alert group's id", positional=True, required=True),), run=show_group,
            examples=("alerts show 3f2a9c0d1e2b4a5c",)),
]


def credentials(settings: Any) -> tuple[str | None, tuple[str, str] | None]:
    config: AlertSettings = settings.alerts
    token = config.token.get_secret_value() if config.token else None
    basic = (config.username, config.password.get_secret_value()) if config.username and config.password else None
    return token or None, basic


def receive(runtime: Any, body: dict) -> None:
    from commands.alerts.desk import AlertDesk

    runtime.services.get(AlertDesk).receive(body)


def _services(runtime: Any) -> list[object]:
    from commands.alerts.desk import AlertDesk  # the desk and what it needs load when a runtime is built

    return [AlertDesk(runtime)]


def checks(runtime: Any) -> list[Check]:
    """`opsbot check`: the intake has credentials, and the Alertmanager for silences answers."""
    config: AlertSettings = runtime.settings.alerts

    def intake() -> str:
        token, basic = credentials(runtime.settings)
        if not token and not basic:
            return "off: set alerts.token (or alerts.username and alerts.password) to take POST /alerts"
        return "ok, POST /alerts takes " + " or ".join(n for n, on in (("a bearer token", token), ("basic auth", basic))
                                                       if on)

    found = [Check("alerts intake", intake)]
    if config.alertmanager_url:
        def alertmanager() -> str:
            import httpx

            response = httpx.get(f"{config.alertmanager_url}/api/v2/status", timeout=5)
            response.raise_for_status()
            return f"ok, Alertmanager {response.json().get('versionInfo', {}).get('version', '?')}"

        found.append(Check(f"alertmanager {config.alertmanager_url}", alertmanager))
    return found


def validate(settings: Any) -> None:
    severities = getattr(getattr(settings, "incidents", None), "severities", None)
    for label, severity in settings.alerts.declare.items():
        if severities is not None and severity.lower() not in severities:
            raise ValueError(f"alerts.declare.{label}: {severity!r} is not a severity in incidents.severities"
                             f" ({', '.join(severities)})")


def _malformed(body: dict) -> str | None:
    """:func:`commands.alerts.payload.malformed`, loaded with the first webhook: `help` reads only the declarations."""
    from commands.alerts.payload import malformed

    return malformed(body)


GROUP = Group(
    "alerts",
    commands=COMMANDS,
    settings={"alerts": (AlertSettings, AlertSettings())},
    validate=validate,
    services=_services,
    checks=checks,
    webhooks=(Webhook("/alerts", credentials=credentials, handle=receive,
                      max_bytes=lambda settings: settings.alerts.max_body, check=_malformed),),
)
