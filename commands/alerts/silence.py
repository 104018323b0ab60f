"""``alerts silence <group> --for 4h``: silence an alert group in Alertmanager (API v2), guarded.

Usage (the Silence buttons on an alert's root message run it; the engine previews and confirms)::

    plan = plan_silence(inv)          # the matchers (the group's common labels) and the window
    execute_silence(inv, plan)        # POST /api/v2/silences; the silence id is kept with the group

The silence matches the labels every alert of the group shares, exactly (no regex), from
now for the chosen duration; its comment names who asked and who confirmed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.core.durations import format_duration
from bot.core.httpretry import request
from bot.core.invocation import BadArgument, CommandError, Invocation
from bot.core.markup import code, md
from bot.core.result import Plan, Result, Section
from commands.alerts.state import AlertGroups

__all__ = ["execute_silence", "plan_silence"]

MAX_SILENCE = 14 * 86400.0


def _record(inv: Invocation) -> dict:
    gid = inv.args["group"]
    record = AlertGroups(inv.state.redis, inv.settings.state.prefix).get(gid) if gid.isalnum() else {}
    if not record:
        raise BadArgument(f"no alert group {gid!r} is known here (its id is on the alert's Silence buttons)")
    return record


def plan_silence(inv: Invocation) -> Plan:
    config = inv.settings.alerts
    if not config.alertmanager_url:
        raise CommandError("alerts.alertmanager_url is not set: opsbot does not know which Alertmanager to ask")
    seconds = inv.args["for"]
    if not 60 <= seconds <= MAX_SILENCE:
        raise BadArgument(f"silence for 1m to {format_duration(MAX_SILENCE)}, not {format_duration(seconds)}")
    record = _record(inv)
    labels = record.get("labels") or {}
    if not labels:
        raise CommandError("the alert group has no labels in common to silence on; silence it in Alertmanager")
    matchers = [{"name": k, "value": v, "isRegex": False, "isEqual": True} for k, v in sorted(labels.items())]
    shown = " ".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return Plan(md("silence {} for {} in Alertmanager", record.get("name", inv.args["group"]),
                   format_duration(seconds)),
                data={"group": inv.args["group"], "matchers": matchers, "seconds": seconds},
                sections=[Section(fields=(("Matchers", shown[:1500]), ("For", format_duration(seconds))))])


def execute_silence(inv: Invocation, plan: Plan) -> Result:
    import httpx

    config = inv.settings.alerts
    now = datetime.now(UTC)
    body = {
        "matchers": plan.data["matchers"],
        "startsAt": now.isoformat().replace("+00:00", "Z"),
        "endsAt": (now + timedelta(seconds=plan.data["seconds"])).isoformat().replace("+00:00", "Z"),
        "createdBy": f"opsbot ({inv.actor.user_id})",
        "comment": f"Silenced from opsbot by {inv.actor.user_id}, confirmed by {inv.confirmed_by or inv.actor.user_id}",
    }
    with httpx.Client(timeout=10) as client:
        response = request(client, "POST", f"{config.alertmanager_url}/api/v2/silences", retries=2, json=body)
    if response.status_code != 200:
        raise CommandError(f"Alertmanager refused the silence: HTTP {response.status_code} {response.text[:300]}")
    silence_id = str(response.json().get("silenceID", ""))
    groups = AlertGroups(inv.state.redis, inv.settings.state.prefix)
    record = groups.get(plan.data["group"])
    if record:
        record.setdefault("silences", []).append(silence_id)
        groups.save(plan.data["group"], record)
    until = f"{now + timedelta(seconds=plan.data['seconds']):%Y-%m-%d %H:%M} UTC"
    return Result.ok(md("Silenced {} until {} (silence {})", record.get("name", plan.data["group"]), until,
                        code(silence_id)),
                     data={"silence_id": silence_id, "group": plan.data["group"], "until": until,
                           "matchers": plan.data["matchers"]})
