"""``dlq status``, ``dlq peek`` and ``dlq cancel``: read the queues, stop a requeue."""

from __future__ import annotations

import sys
import time
from typing import Any

from bot.core.durations import format_duration
from bot.core.invocation import CommandError, Invocation
from bot.core.result import Result, Section
from commands.dlq.backend import CANCEL, RESUME, TRIM, DeadLetterBackend
from commands.dlq.common import settings_of, summary_data, summary_sections
from commands.dlq.entries import Filters
from commands.dlq.factory import backend_of

__all__ = ["status", "peek", "cancel", "queue_figures"]


def _unreachable(exc: BaseException) -> bool:
    """A queue that could not be read: a refusal, Redis or HTTP down. A client library not loaded raised nothing."""
    kinds = [CommandError, OSError]
    for module, name in (("redis", "RedisError"), ("httpx", "HTTPError")):
        if module in sys.modules:
            kinds.append(getattr(sys.modules[module], name))
    return isinstance(exc, tuple(kinds))


def queue_figures(inv: Invocation, queue, now: float) -> dict[str, Any]:
    """One queue's depths, and the requeue or trim it has under way or interrupted."""
    backend = backend_of(inv, queue)
    try:
        return _figures(backend, queue, now)
    finally:
        backend.close()


def _figures(backend: DeadLetterBackend, queue, now: float) -> dict[str, Any]:
    can = backend.capabilities
    depth = backend.depth()
    figures: dict[str, Any] = {"queue": queue.name, "backend": queue.backend, **backend.locations(),
                               "ready": depth.ready, "dead": depth.dead}
    if can.supports(RESUME):
        figures["held_by_requeue"] = depth.held
    figures["oldest_age_seconds"] = None if depth.oldest is None else now - depth.oldest
    if can.supports(RESUME):
        task = backend.task()
        figures["requeue"] = None if task is None else {"id": task.id, "status": task.status,
                                                        "moved": task.moved, "target": task.target}
    if can.supports(TRIM):
        trim = backend.trim_task()
        holder = backend.lease_holder()
        figures["trim"] = None if trim is None or not trim.unfinished else {
            "id": trim.id, "keep": trim.keep, "dropped": trim.dropped, "to_drop": trim.to_drop,
            "running": bool(holder and holder.task == trim.id)}
    return figures


def _detail(item: dict[str, Any]) -> str:
    if "error" in item:
        return f"unreachable: {item['error']}"
    detail = f"ready {item['ready'] if item['ready'] is not None else 'n/a'} · dead {item['dead']}"
    if item.get("held_by_requeue"):
        detail += f" (+{item['held_by_requeue']} set aside by an unfinished requeue)"
    if item["oldest_age_seconds"] is not None:
        detail += f" · oldest {format_duration(max(item['oldest_age_seconds'], 0))}"
    if item.get("requeue") and item["requeue"]["status"] in ("running", "cancelling"):
        detail += f" · requeue {item['requeue']['status']}: {item['requeue']['moved']}/{item['requeue']['target']}"
    trim = item.get("trim")
    if trim:
        state = "running" if trim["running"] else "interrupted (`dlq trim` resumes or replaces it)"
        detail += f" · trim {state}: {trim['dropped']}/{trim['to_drop']} dropped, keep {trim['keep']}"
    return detail


def status(inv: Invocation) -> Result:
    queues = [settings_of(inv)] if inv.args["queue"] else list(inv.settings.queues)
    if not queues:
        raise CommandError("no queues are configured in app.yaml")
    now = time.time()
    data, failures = [], []
    for queue in queues:
        try:
            data.append(queue_figures(inv, queue, now))
        except Exception as exc:  # one queue down does not hide the others
            if not _unreachable(exc):
                raise
            failures.append(exc)
            data.append({"queue": queue.name, "backend": queue.backend, "error": str(exc)})
    if len(failures) == len(queues):
        raise failures[0]
    dead_total = sum(item["dead"] + item.get("held_by_requeue", 0) for item in data if "error" not in item)
    summary = f"{dead_total} dead letters in {len(queues)} queue{'s' if len(queues) != 1 else ''}"
    if failures:
        summary += f"; {len(failures)} unreachable: " + ", ".join(i["queue"] for i in data if "error" in i)
    make = Result.warn if dead_total or failures else Result.ok
    rows = tuple((item["queue"], _detail(item)) for item in data)
    return make(summary, data={"queues": data}, sections=[Section(fields=rows)])


def peek(inv: Invocation) -> Result:
    queue = settings_of(inv)
    filters = Filters.from_args(inv.args)
    backend = backend_of(inv, queue)
    summary = backend.scan(filters, inv.args["limit"])
    now = time.time()
    text = f"{summary.matched} of {summary.total} dead letters in `{backend.where()}` match {filters.describe()}"
    sections = summary_sections(summary, now, f"Oldest {len(summary.samples)}")
    return Result.ok(text, data={"queue": queue.name, "filters": filters.to_dict(), **summary_data(summary)},
                     sections=sections)


def cancel(inv: Invocation) -> Result:
    queue = settings_of(inv)
    backend = backend_of(inv, queue)
    backend.capabilities.require(CANCEL, queue.name)
    task = backend.cancel()
    if task is None:
        return Result.ok(f"No requeue of `{queue.name}` is running.", data={"queue": queue.name, "cancelled": False})
    return Result.ok(f"Cancelling the requeue of `{queue.name}` at {task.moved}/{task.target}: it stops after its "
                     "current batch and puts the entries it set aside back in order.",
                     data={"queue": queue.name, "cancelled": True, "task": task.id, "moved": task.moved})
