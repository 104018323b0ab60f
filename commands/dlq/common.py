"""What every ``dlq`` command shares: choosing the queue and its backend, scanning, rendering entries."""

from __future__ import annotations

from commands.dlq.settings import find_queue

import os
import socket
import time
from collections import Counter
from typing import Any

from commands.dlq.settings import QueueSettings
from bot.core.durations import format_duration
from bot.core.invocation import BadArgument, Invocation
from bot.core.result import Section
from commands.dlq.entries import DeadEntry, Filters, safe_text
from commands.dlq.http_api import HttpDeadLetters
from commands.dlq.redis_list import RedisListQueue, ScanSummary

__all__ = ["settings_of", "backend_of", "http_scan", "scan", "owner", "ago", "entry_line", "summary_sections",
           "summary_data", "SAMPLE"]

SAMPLE = 3


def settings_of(inv: Invocation) -> QueueSettings:
    try:
        return find_queue(inv.settings, inv.args.get("queue"))
    except KeyError as exc:
        raise BadArgument(str(exc.args[0])) from None


def backend_of(inv: Invocation, queue: QueueSettings | None = None) -> RedisListQueue | HttpDeadLetters:
    queue = queue or settings_of(inv)
    if queue.backend == "http":
        return HttpDeadLetters(queue)
    return RedisListQueue(queue, inv.targets.redis(queue.redis), inv.settings.state.prefix)


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def http_scan(backend: HttpDeadLetters, filters: Filters, samples: int) -> tuple[ScanSummary, list[DeadEntry]]:
    summary, matching = ScanSummary(), []
    now = time.time()
    for entry in backend.entries():
        summary.total += 1
        summary.scanned += 1
        if not filters.matches(entry, now):
            continue
        matching.append(entry)
        summary.matched += 1
        if entry.opaque:
            summary.opaque += 1
        summary.types["(opaque)" if entry.opaque else safe_text(entry.type or "(none)")] += 1
        summary.errors["(opaque)" if entry.opaque else safe_text((entry.error or "(none)")[:120])] += 1
        failed = entry.failed_at
        if failed is not None:
            summary.oldest = failed if summary.oldest is None else min(summary.oldest, failed)
            summary.newest = failed if summary.newest is None else max(summary.newest, failed)
        if len(summary.samples) < samples:
            summary.samples.append(entry)
    return summary, matching


def scan(backend, filters: Filters, samples: int) -> ScanSummary:
    if isinstance(backend, HttpDeadLetters):
        return http_scan(backend, filters, samples)[0]
    return backend.scan(filters, samples=samples)


# -- rendering ----------------------------------------------------------------------------

def ago(moment: float | None, now: float) -> str:
    return "-" if moment is None else f"{format_duration(max(now - moment, 0))} ago"


def _groups(counter: Counter, top: int = 10) -> str:
    rows = counter.most_common(top)
    if not rows:
        return "(none)"
    width = max(len(str(count)) for _, count in rows)
    lines = [f"{str(count).rjust(width)}  {safe_text(name, 120)}" for name, count in rows]
    if len(counter) > top:
        lines.append(f"{''.rjust(width)}  … and {len(counter) - top} more")
    return "\n".join(lines)


def _moment(epoch: float | None, now: float) -> str:
    """``2026-01-31 09:15:02 UTC (3h12m ago)``, or "" when there is no time a calendar can show."""
    if epoch is None:
        return ""
    try:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))
    except (OverflowError, OSError, ValueError):
        return ""
    ago = now - epoch
    return f"{stamp} UTC ({format_duration(ago)} ago)" if ago >= 0 else f"{stamp} UTC (in the future)"


def entry_line(entry: DeadEntry, now: float | None = None) -> str:
    """One dead letter for a person: what it is, how often it was tried, when it failed (time and age), why."""
    view = entry.describe()
    if view.get("opaque"):
        return f"(opaque, {view['bytes']} bytes) {view['hex']}"
    flag = " (partly decoded: not UTF-8)" if view.get("partial") else ""
    head = f"{view['id'] or '(no id)'}  {view['type'] or '(no type)'}"
    if view["attempts"] is not None:
        head += f"  {view['attempts']} attempts"
    when = _moment(entry.failed_at, now or time.time())
    if when:
        head += f"  failed {when}"
    elif view["failedAt"] is not None:
        head += f"  failed at {view['failedAt']!r} (not a time opsbot reads)"
    lines = [head + flag]
    if view["error"] is not None:
        lines.append(f"    error: {view['error']}")
    if view["payload"] not in (None, "null"):
        lines.append(f"    payload: {view['payload']}")
    return "\n".join(lines)


def summary_sections(summary: ScanSummary, now: float, samples_title: str) -> list[Section]:
    sections = [
        Section("By type", code=_groups(summary.types)),
        Section("By error", code=_groups(summary.errors)),
        Section(fields=(("oldest", ago(summary.oldest, now)), ("newest", ago(summary.newest, now)),
                        ("not JSON (opaque)", str(summary.opaque)))),
    ]
    if summary.samples:
        sections.append(Section(samples_title, code="\n".join(entry_line(e) for e in summary.samples)))
    return sections


def summary_data(summary: ScanSummary) -> dict[str, Any]:
    return {
        "dead": summary.total, "matching": summary.matched, "opaque": summary.opaque,
        "by_type": dict(summary.types.most_common()), "by_error": dict(summary.errors.most_common()),
        "oldest_failed_at": summary.oldest, "newest_failed_at": summary.newest,
        "entries": [e.describe() for e in summary.samples],
    }
