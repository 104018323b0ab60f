"""``dlq status | peek | requeue | trim | cancel``: dead-letter queues (SPEC §3, §7).

The commands are declared at the bottom; the backends know nothing of Slack:
:mod:`commands.dlq.redis_list` (Redis lists) and :mod:`commands.dlq.http_api` (a
service's admin API).
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from typing import Any

from psycopg import sql

from bot.config import QueueSettings
from bot.durations import format_duration
from bot.invocation import CommandError, Invocation
from bot.registry import Arg, Command, Guard, duration, int_between, positive_int
from bot.result import Button, Plan, Result, Section
from commands.dlq.entries import DeadEntry, Filters
from commands.dlq.http_api import HttpDeadLetters
from commands.dlq.redis_list import RedisListQueue, ScanSummary, Task

__all__ = ["COMMANDS"]

PEEK_DEFAULT = 10
SAMPLE = 3


# -- choosing the queue ---------------------------------------------------------------------

def _settings(inv: Invocation) -> QueueSettings:
    try:
        return inv.settings.queue(inv.args.get("queue"))
    except KeyError as exc:
        raise CommandError(str(exc.args[0])) from None


def _backend(inv: Invocation, queue: QueueSettings | None = None) -> RedisListQueue | HttpDeadLetters:
    queue = queue or _settings(inv)
    if queue.backend == "http":
        return HttpDeadLetters(queue)
    return RedisListQueue(queue, inv.targets.redis(queue.redis), inv.settings.state.prefix)


def _http_scan(backend: HttpDeadLetters, filters: Filters, samples: int) -> tuple[ScanSummary, list[DeadEntry]]:
    summary, matching = ScanSummary(), []
    now = time.time()
    for entry in backend.entries():
        summary.total += 1
        summary.scanned += 1
        if not filters.matches(entry, now):
            continue
        matching.append(entry)
        summary.matched += 1
        summary.types[entry.type or "(none)"] += 1
        summary.errors[(entry.error or "(none)")[:120]] += 1
        failed = entry.failed_at
        if failed is not None:
            summary.oldest = failed if summary.oldest is None else min(summary.oldest, failed)
            summary.newest = failed if summary.newest is None else max(summary.newest, failed)
        if len(summary.samples) < samples:
            summary.samples.append(entry)
    return summary, matching


def _scan(backend, filters: Filters, samples: int) -> ScanSummary:
    if isinstance(backend, HttpDeadLetters):
        return _http_scan(backend, filters, samples)[0]
    return backend.scan(filters, samples=samples)


# -- rendering ----------------------------------------------------------------------------

def _ago(moment: float | None, now: float) -> str:
    return "-" if moment is None else f"{format_duration(max(now - moment, 0))} ago"


def _groups(counter: Counter, top: int = 10) -> str:
    rows = counter.most_common(top)
    if not rows:
        return "(none)"
    width = max(len(str(count)) for _, count in rows)
    lines = [f"{str(count).rjust(width)}  {name}" for name, count in rows]
    if len(counter) > top:
        lines.append(f"{''.rjust(width)}  … and {len(counter) - top} more")
    return "\n".join(lines)


def _entry_line(entry: DeadEntry) -> str:
    view = entry.describe()
    if view.get("opaque"):
        return f"(opaque, {view['bytes']} bytes) {view['hex']}"
    return (f"{view['id']}  {view['type']}  attempts={view['attempts']}  failedAt={view['failedAt']}\n"
            f"    error: {view['error']}\n    payload: {view['payload']}")


def _summary_sections(summary: ScanSummary, now: float, samples_title: str) -> list[Section]:
    sections = [
        Section("By type", code=_groups(summary.types)),
        Section("By error", code=_groups(summary.errors)),
        Section(fields=(("oldest", _ago(summary.oldest, now)), ("newest", _ago(summary.newest, now)),
                        ("not JSON (opaque)", str(summary.opaque)))),
    ]
    if summary.samples:
        sections.append(Section(samples_title, code="\n".join(_entry_line(e) for e in summary.samples)))
    return sections


def _summary_data(summary: ScanSummary) -> dict[str, Any]:
    return {
        "dead": summary.total, "matching": summary.matched, "opaque": summary.opaque,
        "by_type": dict(summary.types.most_common()), "by_error": dict(summary.errors.most_common()),
        "oldest_failed_at": summary.oldest, "newest_failed_at": summary.newest,
        "entries": [e.describe() for e in summary.samples],
    }


# -- status / peek --------------------------------------------------------------------------

def status(inv: Invocation) -> Result:
    queues = [_settings(inv)] if inv.args["queue"] else list(inv.settings.queues)
    if not queues:
        raise CommandError("no queues are configured in app.yaml")
    now = time.time()
    rows, data, dead_total = [], [], 0
    for queue in queues:
        backend = _backend(inv, queue)
        if isinstance(backend, HttpDeadLetters):
            summary = _scan(backend, Filters(), 0)
            item = {"queue": queue.name, "backend": "http", "ready": None, "dead": summary.total,
                    "oldest_age_seconds": None if summary.oldest is None else now - summary.oldest}
        else:
            depth = backend.depth()
            task = backend.task()
            item = {"queue": queue.name, "backend": "redis-list", "ready_key": queue.ready, "dead_key": queue.dead,
                    "ready": depth.ready, "dead": depth.dead, "held_by_requeue": depth.held,
                    "oldest_age_seconds": None if depth.oldest is None else now - depth.oldest,
                    "requeue": None if task is None else {"id": task.id, "status": task.status,
                                                          "moved": task.moved, "target": task.target}}
        data.append(item)
        dead_total += item["dead"] + item.get("held_by_requeue", 0)
        detail = f"ready {item['ready'] if item['ready'] is not None else 'n/a'} · dead {item['dead']}"
        if item.get("held_by_requeue"):
            detail += f" (+{item['held_by_requeue']} set aside by an unfinished requeue)"
        if item["oldest_age_seconds"] is not None:
            detail += f" · oldest {format_duration(item['oldest_age_seconds'])}"
        if item.get("requeue") and item["requeue"]["status"] in ("running", "cancelling"):
            detail += f" · requeue {item['requeue']['status']}: {item['requeue']['moved']}/{item['requeue']['target']}"
        rows.append((queue.name, detail))
    summary = f"{dead_total} dead letters in {len(queues)} queue{'s' if len(queues) != 1 else ''}"
    make = Result.warn if dead_total else Result.ok
    return make(summary, data={"queues": data}, sections=[Section(fields=tuple(rows))])


def peek(inv: Invocation) -> Result:
    queue = _settings(inv)
    filters = Filters.from_args(inv.args)
    backend = _backend(inv, queue)
    summary = _scan(backend, filters, inv.args["limit"])
    now = time.time()
    where = queue.dead if queue.backend == "redis-list" else queue.url
    text = f"{summary.matched} of {summary.total} dead letters in `{where}` match {filters.describe()}"
    sections = _summary_sections(summary, now, f"Oldest {len(summary.samples)}")
    return Result.ok(text, data={"queue": queue.name, "filters": filters.to_dict(), **_summary_data(summary)},
                     sections=sections)


# -- requeue --------------------------------------------------------------------------------

def _progress_result(queue: QueueSettings, task: Task, rate: float) -> Result:
    remaining = task.target - task.moved
    eta = format_duration(remaining / rate) if rate > 0 and remaining > 0 else "-"
    text = (f"Requeueing `{queue.name}`: {task.moved}/{task.target} moved · {task.scanned}/{task.total} scanned · "
            f"{rate:,.0f}/s · ETA {eta}")
    return Result.ok(text, data={"task": task.id, "moved": task.moved, "target": task.target,
                                 "scanned": task.scanned, "rate": rate},
                     buttons=[Button("Cancel requeue", "run", f"dlq cancel {queue.name}", style="danger",
                                     confirm=f"Stop requeueing {queue.name}? What moved stays moved.")])


def plan_requeue(inv: Invocation) -> Plan | Result:
    queue = _settings(inv)
    backend = _backend(inv, queue)
    filters = Filters.from_args(inv.args)
    limit, rate = inv.args["limit"], inv.args["rate"]
    if isinstance(backend, RedisListQueue):
        holder = backend.lease_holder()
        task = backend.task()
        if holder and task:
            return _progress_result(queue, task, 0.0).with_(
                status="warn", summary=f"A requeue of `{queue.name}` is already running: "
                                       f"{task.moved}/{task.target} moved. `/ops dlq cancel {queue.name}` stops it.")
        if task and task.unfinished:
            return Plan(
                f"resume the interrupted requeue of `{queue.name}` ({task.moved}/{task.target} moved so far, "
                f"{task.filters.describe()})",
                data={"queue": queue.name, "resume": task.id, "matching": task.target - task.moved},
                sections=[Section(text="An earlier requeue was interrupted (the bot stopped or was killed). "
                                       "Confirm to finish it; its entries set aside go back in order.")],
            )
    summary = _scan(backend, filters, SAMPLE)
    if summary.matched == 0:
        return Result.ok(f"Nothing to requeue: no dead letters in `{queue.name}` match {filters.describe()}.",
                         data={"queue": queue.name, "matching": 0})
    target = min(summary.matched, limit) if limit else summary.matched
    destination = f"`{queue.dead}` → `{queue.ready}`" if queue.backend == "redis-list" else f"replay via {queue.url}"
    pace = f" at {rate}/s" if rate else ""
    return Plan(
        f"requeue {target} of {summary.matched} matching dead letters ({destination}){pace}",
        data={"queue": queue.name, "filters": filters.to_dict(), "limit": limit, "rate": rate,
              "matching": summary.matched, "dead": summary.total},
        sections=[Section(fields=(("matching", f"{summary.matched} of {summary.total}"),
                                  ("will move", str(target)), ("filter", filters.describe())))]
                 + _summary_sections(summary, time.time(), "Sample"),
    )


def requeue_still_valid(old: Plan, new: Plan) -> bool:
    """Same request, and the matching count has not grown beyond the queue's bound (default 10%)."""
    same = all(old.data.get(k) == new.data.get(k) for k in ("queue", "filters", "limit", "resume"))
    growth = new.data.get("growth_bound", 0.10)
    return same and new.data["matching"] <= old.data["matching"] * (1 + growth)


def execute_requeue(inv: Invocation, plan: Plan) -> Result:
    queue = _settings(inv)
    backend = _backend(inv, queue)
    if isinstance(backend, HttpDeadLetters):
        return _replay_http(inv, backend, queue, plan)
    if plan.data.get("resume"):
        task_id = plan.data["resume"]
    else:
        filters = Filters.from_dict(plan.data["filters"])
        task_id = backend.start_requeue(filters, limit=plan.data["limit"], rate=plan.data["rate"],
                                        matching=plan.data["matching"], requested_by=inv.actor.user_id).id
    owner = f"{socket.gethostname()}:{os.getpid()}"
    report = backend.run_requeue(
        task_id, owner=owner, batch=queue.batch, lease_ttl=queue.lease_ttl, should_stop=inv.stopping,
        progress=lambda task, rate: inv.progress(_progress_result(queue, task, rate)),
    )
    task = report.task
    if inv.metrics is not None:
        inv.metrics.requeue_moved.labels(queue=queue.name).inc(task.moved - report.moved_before)
    rate = (task.moved - report.moved_before) / report.seconds if report.seconds > 0 else 0.0
    data = {"queue": queue.name, "task": task.id, "moved": task.moved, "scanned": task.scanned,
            "target": task.target, "outcome": report.outcome, "seconds": round(report.seconds, 3),
            "rate": round(rate)}
    where = f"`{queue.dead}` → `{queue.ready}`"
    if report.outcome == "done":
        return Result.ok(f"Requeued {task.moved} dead letters {where} in {format_duration(report.seconds)} "
                         f"({rate:,.0f}/s)", data=data)
    if report.outcome == "cancelled":
        return Result.warn(f"Requeue cancelled after {task.moved} of {task.target}; the rest stay dead, in order",
                           data=data)
    if report.outcome == "interrupted":
        return Result.warn(f"Requeue paused at {task.moved}/{task.target} (the bot is stopping); "
                           f"`/ops dlq requeue {queue.name}` resumes it", data=data)
    return Result.error(f"Requeue stopped at {task.moved}/{task.target}: another process took over its lease",
                        data=data)


def _replay_http(inv: Invocation, backend: HttpDeadLetters, queue: QueueSettings, plan: Plan) -> Result:
    filters = Filters.from_dict(plan.data["filters"])
    _, matching = _http_scan(backend, filters, 0)
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


# -- trim / cancel --------------------------------------------------------------------------

def plan_trim(inv: Invocation) -> Plan | Result:
    queue = _settings(inv)
    if queue.backend != "redis-list":
        raise CommandError(f"queue {queue.name!r} uses the {queue.backend} backend; trim works on redis-list queues")
    backend = _backend(inv, queue)
    backend.check_types()
    keep = inv.args["keep"] if inv.args["keep"] is not None else queue.keep
    dead = backend.client.llen(queue.dead)
    to_drop = max(dead - keep, 0)
    if to_drop == 0:
        return Result.ok(f"Nothing to trim: `{queue.dead}` holds {dead} entries, keeping up to {keep}.",
                         data={"queue": queue.name, "dead": dead, "keep": keep, "to_drop": 0})
    oldest = [DeadEntry.parse(raw) for raw in reversed(backend.client.lrange(queue.dead, -SAMPLE, -1))]
    return Plan(
        f"drop the {to_drop} oldest of {dead} dead letters in `{queue.dead}`, keeping the newest {keep} "
        f"(archived to PostgreSQL first)",
        data={"queue": queue.name, "keep": keep, "to_drop": to_drop, "dead": dead, "matching": to_drop},
        sections=[Section("Oldest, to be dropped", code="\n".join(_entry_line(e) for e in oldest))],
    )


def trim_still_valid(old: Plan, new: Plan) -> bool:
    return (old.data["queue"], old.data["keep"]) == (new.data["queue"], new.data["keep"]) and \
        new.data["to_drop"] <= old.data["to_drop"] * 1.10


def execute_trim(inv: Invocation, plan: Plan) -> Result:
    queue = _settings(inv)
    backend = _backend(inv, queue)
    table = sql.Identifier(inv.settings.state.db_schema, "dlq_archive")

    def archive(task_id: str, first: int, entries: list[bytes]) -> None:
        rows = [(task_id, first + offset, queue.name, queue.dead, entry) for offset, entry in enumerate(entries)]
        with inv.state.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                sql.SQL("INSERT INTO {} (task_id, ordinal, queue, dead_key, entry) VALUES (%s, %s, %s, %s, %s)"
                        " ON CONFLICT (task_id, ordinal) DO NOTHING").format(table),
                rows,
            )

    report = backend.run_trim(keep=plan.data["keep"], archive=archive, batch=min(queue.batch, 500),
                              should_stop=inv.stopping)
    data = {"queue": queue.name, "task": report.task_id, "dropped": report.dropped, "to_drop": report.to_drop,
            "outcome": report.outcome, "archive": f"{inv.settings.state.db_schema}.dlq_archive"}
    if report.outcome == "done":
        return Result.ok(f"Trimmed {report.dropped} oldest dead letters from `{queue.dead}`; archived in "
                         f"{data['archive']} (task {report.task_id})", data=data)
    if report.outcome == "interrupted":
        return Result.warn(f"Trim paused after {report.dropped}/{report.to_drop}; run it again to resume", data=data)
    return Result.error(f"Trim stopped after {report.dropped}/{report.to_drop}: the oldest entries changed "
                        "while trimming (someone else is consuming the dead list). Nothing was lost.", data=data)


def cancel(inv: Invocation) -> Result:
    queue = _settings(inv)
    backend = _backend(inv, queue)
    if not isinstance(backend, RedisListQueue):
        raise CommandError(f"queue {queue.name!r} has no requeue task to cancel (http backend)")
    task = backend.cancel()
    if task is None:
        return Result.ok(f"No requeue of `{queue.name}` is running.", data={"queue": queue.name, "cancelled": False})
    return Result.ok(f"Cancelling the requeue of `{queue.name}` at {task.moved}/{task.target}: it stops after its "
                     "current batch and puts the entries it set aside back in order.",
                     data={"queue": queue.name, "cancelled": True, "task": task.id, "moved": task.moved})


# -- declarations ---------------------------------------------------------------------------

QUEUE = Arg("queue", "a queue from app.yaml (default: the first)", positional=True)
FILTERS = (
    Arg("type", "only entries of this type"),
    Arg("error", "only entries whose error contains this text (any case)"),
    Arg("older_than", "only entries that failed longer ago than this", type=duration),
    Arg("id", "only this entry id (repeatable)", repeat=True, metavar="ID"),
)


def _with_growth_bound(plan_fn):
    def plan(inv: Invocation):
        plan = plan_fn(inv)
        if isinstance(plan, Plan):
            bound = _settings(inv).requeue_growth
            return Plan(plan.summary, data={**plan.data, "growth_bound": bound}, sections=plan.sections,
                        fingerprint=plan.fingerprint)
        return plan

    return plan


COMMANDS = [
    Command("dlq status", "Ready and dead depth of every configured queue (or one)", args=(QUEUE,), run=status,
            examples=("dlq status", "dlq status step")),
    Command(
        "dlq peek", "The oldest dead entries, with counts by type and by error",
        args=(QUEUE, *FILTERS, Arg("limit", "how many entries to show", type=positive_int, default=PEEK_DEFAULT)),
        run=peek, examples=("dlq peek", 'dlq peek jobs --error "rate limit" --older-than 1h --limit 5'),
    ),
    Command(
        "dlq requeue", "Move dead jobs back to the ready queue",
        description="Moves the oldest matching entries first, in atomic batches inside Redis. Entries that die "
                    "again while it runs are not taken again. Killing the bot at any moment loses nothing: "
                    "running it again resumes. Progress is updated every 2 s with a Cancel button.",
        args=(QUEUE, *FILTERS, Arg("limit", "move at most this many", type=positive_int),
              Arg("rate", "entries per second at most", type=positive_int)),
        role="oncall", guard=Guard(plan=_with_growth_bound(plan_requeue), execute=execute_requeue,
                                   still_valid=requeue_still_valid),
        examples=("dlq requeue", "dlq requeue jobs --type send_email --limit 500 --rate 100"),
    ),
    Command(
        "dlq trim", "Drop all but the newest N dead jobs, archiving what it drops",
        args=(QUEUE, Arg("keep", "how many of the newest entries to keep (default: the queue's keep, "
                                 "DEAD_LETTER_KEEP)", type=int_between(0, 10**9), metavar="N")),
        role="oncall", guard=Guard(plan=plan_trim, execute=execute_trim, still_valid=trim_still_valid),
        examples=("dlq trim", "dlq trim jobs --keep 100"),
    ),
    Command("dlq cancel", "Stop a running requeue", args=(QUEUE,), run=cancel, role="oncall",
            examples=("dlq cancel jobs",)),
]
