"""What every ``dlq`` command shares: choosing the queue, rendering scans and entries.

The queue's backend comes from :func:`commands.dlq.factory.backend_of`.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from typing import Any

from commands.dlq.settings import QueueSettings, find_queue
from bot.core.durations import format_duration
from bot.core.invocation import BadArgument, Invocation
from bot.core.result import Section
from commands.dlq.backend import ScanSummary
from commands.dlq.entries import DeadEntry, safe_text

__all__ = ["settings_of", "owner", "ago", "entry_line", "summary_sections",
           "summary_data", "SAMPLE"]

SAMPLE = 3


def settings_of(inv: Invocation) -> QueueSettings:
    try:
        return find_queue(inv.settings, inv.args.get("queue"))
    except KeyError as exc:
        raise BadArgument(str(exc.args[0])) from None


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


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
    within = f" (in a sample of {summary.scanned:,} of {summary.total:,}, spread over the queue)" \
        if summary.sampled else ""
    sections = [
        Section("By type" + within, code=_groups(summary.types)),
        Section("By error" + within, code=_groups(summary.errors)),
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
        **({"sampled": summary.scanned} if summary.sampled else {}),
    }
