"""``dlq trim``: drop all but the newest N dead letters of a queue, archiving them first (``trim`` capability).

The preview shows an interrupted trim and says what confirming does with it: resume it (the
request keeps the same number) or replace it (abandoned cleanly first). A confirm executes
exactly what was previewed, and never drops more than the preview said.
"""

from __future__ import annotations

from bot.core.durations import format_duration
from bot.core.invocation import Invocation
from bot.core.result import Plan, Result, Section
from commands.dlq.archive import TrimArchive
from commands.dlq.backend import TRIM, DeadLetterBackend
from commands.dlq.common import SAMPLE, entry_line, owner, settings_of
from commands.dlq.factory import backend_of
from commands.dlq.trimmer import TrimTask

__all__ = ["plan_trim", "trim_still_valid", "execute_trim"]

GROWTH = 0.10
BATCH = 500     # entries per compare-and-remove: Redis is blocked for one batch at most
CHUNK = 20      # batches per archive transaction (one PostgreSQL commit), at most


def _busy(queue, backend: DeadLetterBackend, trim: TrimTask | None) -> Result | None:
    holder = backend.lease_holder()
    if holder is None:
        task = backend.task()
        if task is None or not task.unfinished:
            return None
        # Its held entries are older than the dead list's: a trim now would keep them and drop newer ones.
        return Result.warn(f"An interrupted requeue of `{queue.name}` ({task.moved}/{task.target} moved) has "
                           f"dead letters set aside. `/ops dlq requeue {queue.name}` finishes it, "
                           f"`/ops dlq cancel {queue.name}` puts them back; then trim.",
                           data={"queue": queue.name, "busy": "requeue"})
    if holder.kind == "trim":
        if trim is None or not trim.unfinished:  # its lease taken, its task not written yet (or an earlier one's)
            return Result.warn(f"A trim of `{queue.name}` is already running (just starting).",
                               data={"queue": queue.name, "busy": "trim"})
        return Result.warn(f"A trim of `{queue.name}` is already running: {trim.dropped}/{trim.to_drop} dropped, "
                           f"keeping {trim.keep}.", data={"queue": queue.name, "busy": "trim", "task": trim.id,
                                                          "dropped": trim.dropped, "to_drop": trim.to_drop})
    task = backend.task()
    progress = f": {task.moved}/{task.target} moved" if task and task.unfinished else ""
    return Result.warn(f"A requeue of `{queue.name}` is running{progress}. A trim can start when it ends (one task "
                       f"per queue at a time); `/ops dlq cancel {queue.name}` stops it.",
                       data={"queue": queue.name, "busy": "requeue"})


def plan_trim(inv: Invocation) -> Plan | Result:
    queue = settings_of(inv)
    backend = backend_of(inv, queue)
    backend.capabilities.require(TRIM, queue.name)
    backend.check_types()
    keep = inv.args["keep"] if inv.args["keep"] is not None else queue.keep
    trim = backend.trim_task()
    busy = _busy(queue, backend, trim)
    if busy is not None:
        return busy
    pending = trim if trim is not None and trim.unfinished else None
    dead_key = backend.where()
    dead = backend.dead_count()
    oldest = backend.oldest(SAMPLE)
    sections = [Section("Oldest, to be dropped", code="\n".join(entry_line(e) for e in oldest))] if oldest else []
    data = {"queue": queue.name, "keep": keep}
    if pending is not None and pending.keep == keep:
        to_drop = pending.remaining(dead)
        return Plan(
            f"resume the interrupted trim of `{dead_key}`: drop the {to_drop} oldest of {dead} dead letters, "
            f"keeping the newest {keep} ({pending.dropped} of {pending.to_drop} dropped before it was interrupted; "
            "archived to PostgreSQL first)",
            data={**data, "to_drop": to_drop, "dead": dead, "matching": to_drop, "resume": pending.id},
            sections=[Section(text=f"An earlier trim keeping {keep} was interrupted after dropping "
                                   f"{pending.dropped}. Confirm to finish it.")] + sections)
    to_drop = max(dead - keep, 0)
    if pending is not None:
        return Plan(
            f"replace the interrupted trim (keep {pending.keep}, {pending.dropped} of {pending.to_drop} dropped) "
            f"with: drop the {to_drop} oldest of {dead} dead letters in `{dead_key}`, keeping the newest {keep} "
            f"(archived to PostgreSQL first)",
            data={**data, "to_drop": to_drop, "dead": dead, "matching": to_drop, "replaces": pending.id},
            sections=[Section(text=f":warning: An earlier trim keeping {pending.keep} was interrupted after dropping "
                                   f"{pending.dropped} of {pending.to_drop}. Confirming abandons it (what it dropped "
                                   "stays archived; nothing else it touched is) and runs this trim instead. To "
                                   f"finish it instead, run `dlq trim {queue.name} --keep {pending.keep}`.")]
                     + sections)
    if to_drop == 0:
        return Result.ok(f"Nothing to trim: `{dead_key}` holds {dead} entries, keeping up to {keep}.",
                         data={**data, "dead": dead, "to_drop": 0})
    return Plan(
        f"drop the {to_drop} oldest of {dead} dead letters in `{dead_key}`, keeping the newest {keep} "
        f"(archived to PostgreSQL first)",
        data={"queue": queue.name, "keep": keep, "to_drop": to_drop, "dead": dead, "matching": to_drop},
        sections=sections,
    )


def trim_still_valid(old: Plan, new: Plan) -> bool:
    """Same request, same interrupted trim to resume or replace, and not grown beyond 10%.

    It also binds the execution to the preview: the fresh plan's ``to_drop`` is lowered to
    what the preview showed, so new dead letters arriving meanwhile are kept, never dropped.
    """
    keys = ("queue", "keep", "resume", "replaces")
    if any(old.data.get(k) != new.data.get(k) for k in keys):
        return False
    if new.data["to_drop"] > old.data["to_drop"] * (1 + GROWTH):
        return False
    new.data["to_drop"] = min(new.data["to_drop"], old.data["to_drop"])
    return True


def execute_trim(inv: Invocation, plan: Plan) -> Result:
    queue = settings_of(inv)
    backend = backend_of(inv, queue)
    archive = TrimArchive(inv.state.pool, inv.settings.state.db_schema, queue)
    where = archive.table
    dead_key = backend.where()

    def progress(task: TrimTask, rate: float) -> None:
        left = task.to_drop - task.dropped
        eta = format_duration(left / rate) if rate > 0 and left > 0 else "-"
        inv.progress(Result.ok(f"Trimming `{queue.name}`: {task.dropped}/{task.to_drop} dropped and archived · "
                               f"{rate:,.0f}/s · ETA {eta}", data={"task": task.id, "dropped": task.dropped}))

    report = backend.run_trim(
        keep=plan.data["keep"], archive=archive, resume=plan.data.get("resume"), replaces=plan.data.get("replaces"),
        max_drop=plan.data["to_drop"], owner=owner(), batch=min(queue.batch, BATCH),
        chunk=CHUNK * min(queue.batch, BATCH), lease_ttl=queue.lease_ttl, requested_by=inv.actor.user_id, should_stop=inv.stopping, progress=progress)
    data = {"queue": queue.name, "task": report.task_id, "dropped": report.dropped, "to_drop": report.to_drop,
            "dropped_now": report.dropped_now, "outcome": report.outcome, "retries": report.retries,
            "abandoned": report.abandoned, "archive": where}
    count = f"{report.dropped}/{report.to_drop}"
    if report.outcome == "done":
        also = f"; the interrupted trim {report.abandoned} was abandoned" if report.abandoned else ""
        return Result.ok(f"Trimmed {report.dropped_now} oldest dead letters from `{dead_key}`; archived in {where} "
                         f"(task {report.task_id}){also}", data=data)
    if report.outcome == "interrupted":
        return Result.warn(f"Trim paused after {count} (the bot is stopping); `/ops dlq trim {queue.name} --keep "
                           f"{plan.data['keep']}` resumes it", data=data)
    if report.outcome == "changed":
        return Result.warn(f"Trim paused after {count}: the oldest entries kept changing while trimming (someone "
                           "else is taking from the dead list). Every entry removed is in the archive; run it "
                           "again to resume.", data=data)
    return Result.error(f"Trim stopped after {count}: it lost its lease (another process took over, or Redis "
                        "restarted). Every entry removed is in the archive.", data=data)
