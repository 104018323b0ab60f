"""``dlq requeue``: put dead letters back to work.

Either as one resumable task inside the backend (it moves them back to the ready list under
the queue's lease), or, for a backend with the ``replay`` capability, one entry at a time.
"""

from __future__ import annotations

import hashlib
import secrets
import time

from commands.dlq.settings import QueueSettings
from bot.core.durations import format_duration
from bot.core.invocation import Invocation
from bot.core.result import Button, Plan, Result, Section
from commands.dlq.archive import TrimArchive
from commands.dlq.backend import REPLAY, DeadLetterBackend, ScanSummary
from commands.dlq.common import SAMPLE, owner, settings_of, summary_sections
from commands.dlq.entries import Filters
from commands.dlq.factory import backend_of
from commands.dlq.redis_list import Task

__all__ = ["plan_requeue", "replan_requeue", "requeue_still_valid", "execute_requeue", "settle_interrupted_trim"]


def _busy_with_trim(queue: QueueSettings, backend: DeadLetterBackend) -> Result:
    trim = backend.trim_task()
    progress = f": {trim.dropped}/{trim.to_drop} dropped" if trim else ""
    return Result.warn(f"A trim of `{queue.name}` is running{progress}. A requeue can start when it ends "
                       "(one task per queue at a time).", data={"queue": queue.name, "busy": "trim"})


def settle_interrupted_trim(inv: Invocation, backend: DeadLetterBackend, queue: QueueSettings) -> int:
    """Under the lease, before a requeue moves anything: an interrupted trim's rows of entries it
    archived but never removed are deleted, so no archive row describes an entry that gets requeued."""
    trim = backend.trim_task()
    if trim is None or not trim.unfinished:
        return 0
    archive = TrimArchive(inv.state.pool, inv.settings.state.db_schema, queue)
    archive.begin(trim.id)
    return archive.settle(trim.id, backend.trim_task().dropped)  # read again, after taking the epoch


def _progress_result(queue: QueueSettings, task: Task, rate: float) -> Result:
    remaining = task.target - task.moved
    eta = format_duration(remaining / rate) if rate > 0 and remaining > 0 else "-"
    text = (f"Requeueing `{queue.name}`: {task.moved}/{task.target} moved · {task.scanned}/{task.total} scanned · "
            f"{rate:,.0f}/s · ETA {eta}")
    return Result.ok(text, data={"task": task.id, "moved": task.moved, "target": task.target,
                                 "scanned": task.scanned, "rate": rate},
                     buttons=[_cancel_button(queue)])


def _cancel_button(queue: QueueSettings) -> Button:
    return Button("Cancel requeue", "run", f"dlq cancel {queue.name}", style="danger",
                  confirm=f"Stop requeueing {queue.name}? What moved stays moved.")


def plan_requeue(inv: Invocation) -> Plan | Result:
    """The preview. Unfiltered, it reads no more than a sample: the count is the queue's length, the groups
    those of SAMPLE_ENTRIES entries spread over it. Filtered, it scans the queue once."""
    queue = settings_of(inv)
    backend = backend_of(inv, queue)
    filters = Filters.from_args(inv.args)
    busy = _busy(queue, backend)
    if busy is not None:
        return busy
    summary = backend.sample(SAMPLE) if filters.empty else backend.scan(filters, SAMPLE)
    return _plan_of(queue, backend, filters, inv.args["limit"], inv.args["rate"], summary)


def replan_requeue(inv: Invocation, old: Plan) -> Plan | Result:
    """At Confirm, without reading entries: the queue's state, then its length. Dead letters only arrive at
    the newest end, so the entries matching now are at most the previewed ones plus the arrivals; a plan
    that bound still fits is confirmed as it is (unfiltered, the length is the count). Only when the bound
    no longer fits the growth allowed (``requeue_still_valid``) is the queue scanned again, to say exactly."""
    queue = settings_of(inv)
    backend = backend_of(inv, queue)
    busy = _busy(queue, backend)
    if busy is not None:
        return busy
    if old.data.get("resume"):  # the interrupted task's plan reads no entries
        return plan_requeue(inv)
    backend.check_types()  # a dead key turned into another type is refused as the preview refuses it
    dead = backend.dead_count()
    if dead == 0:  # emptied meanwhile: said as the preview says it, and no task of 0 recorded
        return plan_requeue(inv)
    if Filters.from_args(inv.args).empty:
        matching = dead
    elif "dead" in old.data and _oldest_mark(backend) == old.data.get("oldest"):  # only arrivals since
        # (a plan of an earlier version names neither its length nor its oldest entry: it is scanned again)
        matching = old.data["matching"] + max(0, dead - old.data["dead"])
    else:
        return plan_requeue(inv)
    fresh = Plan(old.summary, data={**old.data, "matching": matching, "dead": dead})
    return fresh if requeue_still_valid(old, fresh) else plan_requeue(inv)


def _oldest_mark(backend: DeadLetterBackend) -> str | None:
    """Which entry is the oldest (a digest of its bytes): a filtered plan's count holds while it stays."""
    oldest = backend.oldest(1)
    return hashlib.sha256(oldest[0].raw).hexdigest()[:16] if oldest else None


def _busy(queue: QueueSettings, backend: DeadLetterBackend) -> Plan | Result | None:
    """What stands before a new requeue: a trim or a requeue running, or an interrupted requeue to finish."""
    holder = backend.lease_holder()  # None, and no task, where requeues are not tasks under a lease
    task = backend.task()
    if holder and holder.kind == "trim":
        return _busy_with_trim(queue, backend)
    if holder and not (task and task.unfinished):  # its lease taken, its task not written yet (or an earlier one's)
        return Result.warn(f"A requeue of `{queue.name}` is already running (just starting). "
                           f"`/ops dlq cancel {queue.name}` stops it.", data={"queue": queue.name, "busy": "requeue"},
                           buttons=[_cancel_button(queue)])
    if holder and task:
        return _progress_result(queue, task, 0.0).with_(
            status="warn", summary=f"A requeue of `{queue.name}` is already running: "
                                   f"{task.moved}/{task.target} moved. `/ops dlq cancel {queue.name}` stops it.")
    if task and task.unfinished:
        return Plan(
            f"resume the interrupted requeue of `{queue.name}` ({task.moved}/{task.target} moved so far, "
            f"{task.filters.describe()})",
            data={"queue": queue.name, "resume": task.id, "matching": task.target - task.moved,
                  "growth_bound": queue.requeue_growth},
            sections=[Section(text="An earlier requeue was interrupted (the bot stopped or was killed). "
                                   "Confirm to finish it; its entries set aside go back in order.")],
        )
    return None


def _plan_of(queue: QueueSettings, backend: DeadLetterBackend, filters: Filters, limit: int | None,
             rate: float | None, summary: ScanSummary) -> Plan | Result:
    if summary.matched == 0:
        return Result.ok(f"Nothing to requeue: no dead letters in `{queue.name}` match {filters.describe()}.",
                         data={"queue": queue.name, "matching": 0})
    target = min(summary.matched, limit) if limit else summary.matched
    destination = backend.destination()
    pace = f" at {rate}/s" if rate else ""
    return Plan(
        f"requeue {target} of {summary.matched} matching dead letters ({destination}){pace}",
        data={"queue": queue.name, "filters": filters.to_dict(), "limit": limit, "rate": rate,
              "matching": summary.matched, "dead": summary.total, "growth_bound": queue.requeue_growth,
              **({"sampled": summary.scanned} if summary.sampled else {}),
              **({} if filters.empty else {"oldest": _oldest_mark(backend)})},
        sections=[Section(fields=(("matching", f"{summary.matched} of {summary.total}"),
                                  ("will move", str(target)), ("filter", filters.describe())))]
                 + summary_sections(summary, time.time(), "Sample"),
    )


def requeue_still_valid(old: Plan, new: Plan) -> bool:
    """Same request, and the matching count has not grown beyond the queue's bound (default 10%)."""
    same = all(old.data.get(k) == new.data.get(k) for k in ("queue", "filters", "limit", "resume"))
    growth = new.data.get("growth_bound", 0.10)
    return same and new.data["matching"] <= old.data["matching"] * (1 + growth)


def execute_requeue(inv: Invocation, plan: Plan) -> Result:
    queue = settings_of(inv)
    backend = backend_of(inv, queue)
    if backend.capabilities.supports(REPLAY):  # entry by entry, not a task in the backend
        return _replay(inv, backend, queue, plan)
    task_id = plan.data.get("resume") or secrets.token_hex(6)

    def before() -> None:  # under the queue's lease
        settle_interrupted_trim(inv, backend, queue)
        if not plan.data.get("resume"):  # never more than the plan counted, whatever changed since
            limit = min(plan.data["limit"] or plan.data["matching"], plan.data["matching"])
            backend.start_requeue(Filters.from_dict(plan.data["filters"]), limit=limit,
                                  rate=plan.data["rate"], matching=plan.data["matching"],
                                  requested_by=inv.actor.user_id, task_id=task_id)

    report = backend.run_requeue(
        task_id, owner=owner(), batch=queue.batch, lease_ttl=queue.lease_ttl, should_stop=inv.stopping,
        progress=lambda task, rate: inv.progress(_progress_result(queue, task, rate)), before=before,
    )
    task = report.task
    if inv.metrics is not None:
        inv.metrics.requeue_moved.labels(queue=queue.name).inc(task.moved - report.moved_before)
    rate = (task.moved - report.moved_before) / report.seconds if report.seconds > 0 else 0.0
    data = {"queue": queue.name, "task": task.id, "moved": task.moved, "scanned": task.scanned,
            "target": task.target, "outcome": report.outcome, "seconds": round(report.seconds, 3),
            "rate": round(rate)}
    where = backend.destination()
    if report.outcome == "done":
        return Result.ok(f"Requeued {task.moved} dead letters {where} in {format_duration(report.seconds)} "
                         f"({rate:,.0f}/s)", data=data)
    if report.outcome == "cancelled":
        return Result.warn(f"Requeue cancelled after {task.moved} of {task.target}; the rest stay dead, in order",
                           data=data)
    if report.outcome == "interrupted":
        return Result.warn(f"Requeue paused at {task.moved}/{task.target} (the bot is stopping); "
                           f"`/ops dlq requeue {queue.name}` resumes it", data=data)
    return Result.error(f"Requeue stopped at {task.moved}/{task.target}: it lost its lease (another process took "
                        f"over, or Redis restarted); `/ops dlq requeue {queue.name}` resumes it",
                        data=data)


def _replay(inv: Invocation, backend: DeadLetterBackend, queue: QueueSettings, plan: Plan) -> Result:
    filters = Filters.from_dict(plan.data["filters"])
    matching = list(backend.entries(filters))
    limit = plan.data["limit"]
    matching = matching[:limit] if limit else matching
    started = time.monotonic()
    ok, failed = 0, []
    for index, entry in enumerate(matching, 1):
        if inv.stopping():
            break
        key = f"opsbot:{entry.failed_at or ''}"
        outcome = backend.replay(entry.id or "", key=key)
        if outcome.ok:
            ok += 1
        else:
            failed.append({"id": outcome.id, "status": outcome.status, "detail": outcome.detail})
        if plan.data["rate"]:
            ahead = index / plan.data["rate"] - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    seconds = time.monotonic() - started
    data = {"queue": queue.name, "replayed": ok, "failed": failed, "target": len(matching), "seconds": seconds}
    sections = [Section("Failed replays", code="\n".join(f"{f['id']}: HTTP {f['status']} {f['detail']}"
                                                          for f in failed[:20]))] if failed else []
    make = Result.ok if not failed else Result.warn
    return make(f"Replayed {ok} of {len(matching)} dead letters via {queue.url}"
                + (f"; {len(failed)} failed" if failed else ""), data=data, sections=sections)
