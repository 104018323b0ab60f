"""``health [service]`` and ``status``: is everything up, and how does the system look right now?"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bot.core.durations import format_duration
from bot.core.invocation import BadArgument, CommandError, Invocation
from bot.core.registry import Arg, Command
from bot.core.result import Result, Section
from bot.core.probes import as_dict, check_services, scrape_all
from bot.core.group import Group
from pydantic import Field

__all__ = ["COMMANDS", "GROUP"]

GREEN, AMBER, RED, GREY = ":large_green_circle:", ":large_orange_circle:", ":red_circle:", ":white_circle:"


def health(inv: Invocation) -> Result:
    services = inv.settings.services
    only = inv.args["service"]
    if only and only not in services:
        raise BadArgument(f"unknown service {only!r}; configured: {', '.join(services) or 'none'}")
    if not services:
        raise CommandError("no services are configured in app.yaml (services:)")
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        checks_future = pool.submit(check_services, services, only)
        metrics_future = pool.submit(scrape_all, services, only)
        checks, metrics = checks_future.result(), metrics_future.result()
    elapsed = time.perf_counter() - started
    rows = []
    for check in checks:
        mark = "ok" if check.ok else "FAILING"
        text = f"{mark} · {check.status or '-'} · {check.ms:.0f} ms" + (f" · {check.detail}" if check.detail else "")
        rows.append((f"{check.service} {check.kind}", text))
    sections = [Section(fields=tuple(rows))]
    for check in checks:
        if not check.ok and check.body:
            sections.append(Section(f"{check.service} {check.kind} answered", code=check.body))
    for name, figures in metrics.items():
        if figures.ok:
            text = ", ".join(f"{key} {value:g}" for key, value in sorted(figures.values.items())) or "no known metrics"
        else:
            text = f"metrics unavailable: {figures.detail}"
        sections.append(Section(f"{name} metrics", text=text))
    failing = [c for c in checks if not c.ok]
    flapping = [c for c in checks if c.ok and c.retried]
    summary = (f"{len(failing)} of {len(checks)} checks failing: "
               + ", ".join(f"{c.service} {c.kind}" for c in failing)) if failing else f"all {len(checks)} checks pass"
    if flapping:
        summary += "; passed only on a retry: " + ", ".join(f"{c.service} {c.kind}" for c in flapping)
    data = {"checks": [as_dict(c) for c in checks], "seconds": round(elapsed, 3),
            "metrics": {n: {"ok": m.ok, "values": m.values, "detail": m.detail} for n, m in metrics.items()}}
    return (Result.fail if failing else Result.warn if flapping else Result.ok)(summary, data=data,
                                                                               sections=sections)


def _queue_lines(inv: Invocation) -> list[tuple[str, str, str, dict]]:
    from commands.dlq import _backend
    from commands.dlq.redis_list import RedisListQueue

    limits = inv.settings.status
    lines = []
    for queue in inv.settings.queues:
        try:
            backend = _backend(inv, queue)
            if not isinstance(backend, RedisListQueue):  # an http queue: its dead letters, or its error
                dead = sum(1 for _ in backend.entries())
                lines.append((RED if dead > limits.dead_letters else GREEN, f"dead letters {queue.name}",
                              f"{dead} dead (red above {limits.dead_letters})", {"dead": dead}))
                continue
            depth = backend.depth()
        except Exception as exc:
            lines.append((RED, f"queue {queue.name}", f"cannot read: {exc}", {}))
            continue
        ready_color = AMBER if depth.ready > limits.queue_depth else GREEN
        lines.append((ready_color, f"queue {queue.name}", f"{depth.ready} ready (amber above {limits.queue_depth})",
                      {"ready": depth.ready}))
        dead = depth.dead + depth.held
        dead_color = RED if dead > limits.dead_letters else GREEN
        age = f", oldest {format_duration(time.time() - depth.oldest)}" if depth.oldest else ""
        lines.append((dead_color, f"dead letters {queue.name}",
                      f"{dead} dead{age} (red above {limits.dead_letters})", {"dead": dead}))
    return lines


def _email_line(inv: Invocation) -> tuple[str, str, str, dict]:
    from commands.email import _Names, _stuck

    email = inv.settings.email
    if email.database not in inv.settings.databases:
        return GREY, "stuck email", "no email database configured", {}
    try:
        with inv.targets.database(email.database) as conn:
            rows = _stuck(conn, _Names(email), email.stuck_after, None)
    except Exception as exc:
        return GREY, "stuck email", f"unknown ({str(exc).splitlines()[0][:120]})", {}
    stuck = sum(row[2] for row in rows)
    color = RED if stuck > inv.settings.status.stuck_email else GREEN
    return color, "stuck email", (f"{stuck} pending beyond {format_duration(email.stuck_after)} "
                                  f"(red above {inv.settings.status.stuck_email})"), {"stuck": stuck}


def _audit_line(inv: Invocation) -> tuple[str, str, str, dict]:
    from commands.audit import records_for

    try:
        last = records_for(inv).last_run()
    except Exception as exc:
        return GREY, "audit verification", f"unknown ({str(exc).splitlines()[0][:120]})", {}
    if last is None:
        return AMBER, "audit verification", "never run: `audit verify --all`", {}
    age = time.time() - last.finished_at.timestamp()
    scope = "all tenants" if last.scope == "*" else last.scope
    when = f"{format_duration(age)} ago ({last.mode}, {scope}, {last.rows:,} rows)"
    extra = {"valid": last.valid, "age_seconds": round(age)}
    if not last.valid:
        found = ", ".join(f"{kind} ×{n}" for kind, n in sorted(last.counts.items()))
        return RED, "audit verification", f"INVALID {when}: {found}", extra
    stale = inv.settings.audit.stale_after
    if age > stale:
        return AMBER, "audit verification", f"valid {when} (amber after {format_duration(stale)})", extra
    return GREEN, "audit verification", f"valid {when}", extra


def _action_log_line(inv: Invocation) -> tuple[str, str, str, dict]:
    from commands.log import summary_line, verify_action_log

    try:
        report = verify_action_log(inv.state, quick=True)
    except Exception as exc:
        return RED, "action log", f"cannot verify ({str(exc).splitlines()[0][:160]})", {}
    color = RED if report.level == "fail" else AMBER if report.level == "warn" else GREEN
    return color, "action log", summary_line(report), {"level": report.level, "first_bad": report.first_bad}


def _incidents_line(inv: Invocation) -> tuple[str, str, str, dict]:
    desk = inv.extras.get("incidents")
    try:
        open_now = desk.store.open() if desk is not None else []
    except Exception as exc:
        return GREY, "incidents", f"unknown ({str(exc).splitlines()[0][:120]})", {}
    if not open_now:
        return GREEN, "incidents", "none open", {"open": 0}
    paging = [i for i in open_now if desk.severity(i.severity).page]
    text = ", ".join(f"{i.id} {i.severity.upper()} {i.title}" for i in open_now[:5])
    return (RED if paging else AMBER), "incidents", f"{len(open_now)} open: {text}", {"open": len(open_now)}


def _drift_lines(inv: Invocation) -> list[tuple[str, str, str, dict]]:
    from commands.drift import drift_reports

    if not any(db.migrations for db in inv.settings.databases.values()):
        return [(GREY, "migration drift", "no migrations configured (databases.<name>.migrations)", {})]
    try:
        reports = drift_reports(inv.settings, inv.targets)
    except Exception as exc:
        return [(GREY, "migration drift", f"unknown ({str(exc).splitlines()[0][:120]})", {})]
    lines = []
    for report in reports:
        color = {"green": GREEN, "amber": AMBER, "red": RED}[report.color]
        parts = [f"{len(getattr(report, attr))} {attr}" for attr in ("failed", "edited", "pending", "unknown")
                 if getattr(report, attr)]
        text = ", ".join(parts) or f"none, at {report.current or 'nothing applied'}"
        lines.append((color, f"migration drift {report.database}", text,
                      {"safe_for_audit_job": report.safe_for_audit_job}))
    return lines


def status(inv: Invocation) -> Result:
    limits = inv.settings.status
    lines: list[tuple[str, str, str, dict]] = []
    with ThreadPoolExecutor(max_workers=3) as pool:
        checks_f = pool.submit(check_services, inv.settings.services)
        metrics_f = pool.submit(scrape_all, inv.settings.services)
        email_f = pool.submit(_email_line, inv)
        queue_lines = _queue_lines(inv)
        checks, metrics, email_line = checks_f.result(), metrics_f.result(), email_f.result()
    for name in inv.settings.services:
        mine = [c for c in checks if c.service == name]
        failing = [c for c in mine if not c.ok]
        text = "; ".join(f"{c.kind} {c.detail}" for c in failing) or ", ".join(f"{c.kind} ok" for c in mine)
        lines.append((RED if failing else GREEN, f"service {name}", text or "no checks configured", {}))
        figures = metrics.get(name)
        if figures is not None and figures.error_rate is not None:
            rate = figures.error_rate
            lines.append((RED if rate > limits.error_rate else GREEN, f"error rate {name}",
                          f"{rate:.1%} (red above {limits.error_rate:.0%})", {"error_rate": rate}))
        if figures is not None and "queue_depth" in figures.values:
            depth = figures.values["queue_depth"]
            lines.append((AMBER if depth > limits.queue_depth else GREEN, f"worker queue {name}",
                          f"{depth:g} (amber above {limits.queue_depth})", {"queue_depth": depth}))
    lines += queue_lines
    lines.append(email_line)
    lines.append(_audit_line(inv))
    lines.append(_action_log_line(inv))
    lines += _drift_lines(inv)
    lines.append(_incidents_line(inv))
    reds = [label for color, label, _, _ in lines if color == RED]
    ambers = [label for color, label, _, _ in lines if color == AMBER]
    summary = (f"{len(reds)} red: {', '.join(reds)}" if reds else
               f"{len(ambers)} amber: {', '.join(ambers)}" if ambers else "all green")
    data: dict[str, Any] = {"lines": [{"color": {GREEN: "green", AMBER: "amber", RED: "red", GREY: "unknown"}[c],
                                       "what": label, "detail": text, **extra} for c, label, text, extra in lines]}
    make = Result.fail if reds else Result.warn if ambers else Result.ok
    return make(summary, data=data, sections=[Section(text="\n".join(f"{c} *{label}*: {text}"
                                                                      for c, label, text, _ in lines))])


COMMANDS = [
    Command("health", "Liveness and readiness of the configured services, checked concurrently",
            args=(Arg("service", "one service from app.yaml", positional=True),), run=health,
            examples=("health", "health api")),
    Command("status", "One glance: services, error rate, queues, dead letters, stuck email, audit, action log, drift,"
            " incidents",
            run=status),
]

GROUP = Group(
    "health",
    commands=COMMANDS,
    extends={"status": {"error_rate": (float, Field(0.05, ge=0))}},  # a service's error rate above this is red
)
