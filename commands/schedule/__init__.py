"""``schedule list``: the checks app.yaml's ``schedules:`` runs on a timer, their last run and their next.

The group owns the ``schedules`` setting (:mod:`commands.schedule.settings`), gives every
runtime a :class:`~commands.schedule.runner.ScheduleRunner` and a sweep that runs what is due
(claimed once across replicas, see :mod:`commands.schedule.store`), and keeps each run in
``opsbot.schedule_runs``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from bot.core.group import Check, CheckWarning, Color, Group, StatusLine, Sweep
from bot.core.invocation import CommandError, Invocation
from bot.core.markup import Mrkdwn, code, md
from bot.core.registry import Command
from bot.core.result import Result, Section
from commands.schedule.runner import ScheduleRunner, next_due
from commands.schedule.settings import ScheduleSettings, check_schedules

__all__ = ["COMMANDS", "GROUP"]

SWEEP_EVERY = 5.0  # seconds between looks for due schedules (the workers' heartbeat pace)


def _when(at: datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M:%S} UTC" if at else "never"


def _timing(schedule: ScheduleSettings) -> str:
    if schedule.cron is not None:
        return f"cron {schedule.cron} (UTC)"
    from bot.core.durations import format_duration

    return f"every {format_duration(schedule.every)}"


def list_schedules(inv: Invocation) -> Result:
    runner = inv.services.find(ScheduleRunner)
    schedules = list(inv.settings.schedules)
    if not schedules:
        return Result.ok("no schedules: add `schedules:` to app.yaml", data={"schedules": []})
    if runner is None:
        raise CommandError("schedules are not available here (no state database)")
    now = runner.clock()
    rows = runner.store.overview([s.key for s in schedules])
    items, lines, failing = [], [], 0
    for schedule in schedules:
        row = rows.get(schedule.key, {})
        run = row.get("latest_run")
        due = row.get("next_due_at") or next_due(schedule, now)
        item = {"name": schedule.key, "run": schedule.run, "timing": _timing(schedule), "post": schedule.post,
                "next_run": due.isoformat(),
                "last_status": row.get("last_status"), "last_summary": row.get("last_summary"),
                "last_finished_at": row["last_finished_at"].isoformat() if row.get("last_finished_at") else None,
                "last_ok_at": row["last_ok_at"].isoformat() if row.get("last_ok_at") else None,
                "running": bool(run and run["status"] == "running"),
                "latest_run": None if run is None else {
                    "status": run["status"], "due_at": run["due_at"].isoformat(), "attempt": run["attempt"],
                    "summary": run["summary"]}}
        items.append(item)
        failing += item["last_status"] not in (None, "ok")
        last = md("last {} {} at {}", code(item["last_status"] or "none"), item["last_summary"] or "",
                  _when(row.get("last_finished_at")))
        if item["running"]:
            last = last + md(" · running now (slot {}, attempt {})", _when(run["due_at"]), run["attempt"])
        elif run is not None and run["status"] == "interrupted":
            last = last + md(" · slot {} interrupted: {}", _when(run["due_at"]), run["summary"] or "")
        lines.append(md("*{}* · {} · {} · post {}\n{} · next {}", schedule.key, code(schedule.run), _timing(schedule),
                        schedule.post, last, _when(due)))
    summary = f"{len(schedules)} schedule{'s' if len(schedules) != 1 else ''}"
    summary += f", {failing} not ok at the last run" if failing else ""
    make = Result.warn if failing else Result.ok
    return make(summary, data={"schedules": items}, sections=[Section(text=Mrkdwn("\n").join(lines))])


COMMANDS = [
    Command("schedule list", "Scheduled checks (app.yaml `schedules:`): each one's last run, result and next run",
            run=list_schedules, examples=("schedule list",)),
]


def status_lines(inv: Invocation) -> list[StatusLine]:
    """`status`: amber while a scheduled check's last run was not ok (it names them)."""
    runner = inv.services.find(ScheduleRunner)
    names = [s.key for s in inv.settings.schedules]
    if runner is None or not names:
        return []
    try:
        rows = runner.store.overview(names)
    except Exception as exc:
        return [StatusLine.unknown("scheduled checks", exc)]
    bad = [f"{name} ({rows[name]['last_status']})" for name in names
           if rows.get(name, {}).get("last_status") not in (None, "ok")]
    if bad:
        return [StatusLine(Color.AMBER, "scheduled checks", f"{len(bad)} of {len(names)} not ok: {', '.join(bad)}",
                           {"not_ok": len(bad)})]
    return [StatusLine(Color.GREEN, "scheduled checks", f"{len(names)} ok at their last run (or not run yet)",
                       {"not_ok": 0})]


def checks(runtime: Any) -> list[Check]:
    """`opsbot check`: the schedules' state is readable, and which one runs next; a check not ok last time warns."""
    schedules = list(runtime.settings.schedules)
    if not schedules:
        return []

    def state() -> str:
        runner = runtime.services.get(ScheduleRunner)
        rows = runner.store.overview([s.key for s in schedules])
        now = runner.clock()
        upcoming = min(schedules, key=lambda s: (rows.get(s.key, {}).get("next_due_at") or next_due(s, now)))
        due = rows.get(upcoming.key, {}).get("next_due_at") or next_due(upcoming, now)
        bad = [s.key for s in schedules if rows.get(s.key, {}).get("last_status") not in (None, "ok")]
        if bad:
            raise CheckWarning(f"{len(bad)} of {len(schedules)} not ok at their last run: {', '.join(bad)}")
        return f"ok, {len(schedules)} read-only, next: {upcoming.key} at {_when(due)}"

    return [Check("scheduled checks", state)]


def _services(runtime: Any) -> list[object]:
    return [ScheduleRunner(runtime)]


GROUP = Group(
    "schedule",
    commands=COMMANDS,
    settings={"schedules": (list[ScheduleSettings], [])},
    validate=check_schedules,
    services=_services,
    sweep=Sweep("scheduled checks", every=lambda settings: SWEEP_EVERY,
                run=lambda runtime: runtime.services.get(ScheduleRunner).sweep()),
    migrations=Path(__file__).with_name("migrations"),
    status=status_lines,
    checks=checks,
)
