"""``health [service]`` and ``status``: is everything up, and how does the system look right now?"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bot.core.invocation import BadArgument, CommandError, Invocation
from bot.core.registry import Arg, Command
from bot.core.result import Result, Section
from bot.core.group import Color, Group, StatusLine
from pydantic import Field

__all__ = ["COMMANDS", "GROUP"]

def health(inv: Invocation) -> Result:
    from bot.core.probes import as_dict, check_services, scrape_all  # here: `help` reads only the declarations

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


def _service_lines(inv: Invocation, checks: list, metrics: dict) -> list[StatusLine]:
    limits = inv.settings.status
    lines = []
    for name in inv.settings.services:
        mine = [c for c in checks if c.service == name]
        failing = [c for c in mine if not c.ok]
        text = "; ".join(f"{c.kind} {c.detail}" for c in failing) or ", ".join(f"{c.kind} ok" for c in mine)
        lines.append(StatusLine(Color.RED if failing else Color.GREEN, f"service {name}",
                                text or "no checks configured"))
        figures = metrics.get(name)
        if figures is not None and figures.error_rate is not None:
            rate = figures.error_rate
            lines.append(StatusLine(Color.RED if rate > limits.error_rate else Color.GREEN, f"error rate {name}",
                                    f"{rate:.1%} (red above {limits.error_rate:.0%})", {"error_rate": rate}))
        if figures is not None and "queue_depth" in figures.values:
            depth = figures.values["queue_depth"]
            lines.append(StatusLine(Color.AMBER if depth > limits.queue_depth else Color.GREEN, f"worker queue {name}",
                                    f"{depth:g} (amber above {limits.queue_depth})", {"queue_depth": depth}))
    return lines


def _group_lines(group: Group, inv: Invocation) -> list[StatusLine]:
    """A group's lines; a group that fails to say is one unknown line, never the end of `status`."""
    assert group.status is not None
    try:
        return group.status(inv)
    except Exception as exc:
        return [StatusLine.unknown(group.name, exc)]


def status(inv: Invocation) -> Result:
    """Services first, then every group's lines, in the order the groups are installed; read concurrently."""
    from bot.core.probes import check_services, scrape_all

    contributors = [group for group in inv.groups if group.status is not None]
    with ThreadPoolExecutor(max_workers=2 + len(contributors)) as pool:
        checks = pool.submit(check_services, inv.settings.services)
        metrics = pool.submit(scrape_all, inv.settings.services)
        contributed = [pool.submit(_group_lines, group, inv) for group in contributors]
        lines = _service_lines(inv, checks.result(), metrics.result())
        for future in contributed:
            lines += future.result()
    reds = [line.what for line in lines if line.color is Color.RED]
    ambers = [line.what for line in lines if line.color is Color.AMBER]
    summary = (f"{len(reds)} red: {', '.join(reds)}" if reds else
               f"{len(ambers)} amber: {', '.join(ambers)}" if ambers else "all green")
    data: dict[str, Any] = {"lines": [{"color": line.color.value, "what": line.what, "detail": line.detail,
                                       **line.data} for line in lines]}
    make = Result.fail if reds else Result.warn if ambers else Result.ok
    return make(summary, data=data, sections=[Section(text="\n".join(f"{line.color.emoji} *{line.what}*: {line.detail}"
                                                                      for line in lines))])


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
