"""The ``sidekiq`` dead-letter backend: Sidekiq's ``dead`` (or ``retry``) sorted set.

Usage::

    queue = SidekiqSet(find_queue(settings, "mail"), redis_client, prefix="opsbot:")
    queue.scan(Filters(type="MailWorker"), samples=5)      # type = `wrapped` (ActiveJob) or `class`
    task = queue.start_requeue(Filters(), limit=100, rate=None, matching=120, requested_by="U1")
    queue.run_requeue(task.id, owner="host:pid")

Sidekiq keeps each dead job as a whole JSON document, a member of the sorted set ``dead``
scored by the time it died (``retry``: by when it runs next), under the app's
redis-namespace when it has one. A requeue does what Sidekiq's own ``SortedEntry#retry``
does (``Sidekiq::DeadSet#retry_all``): it takes the job out of the set, lowers
``retry_count`` by one when it has one, fills ``queue``/``retry`` from Sidekiq's defaults
when missing, sets ``enqueued_at`` to now, adds the job's queue to ``queues`` and LPUSHes it
onto ``queue:<job's queue>``. Client middleware is not run (there is no Ruby here).

The new JSON is made here (Python's json keeps big integers exact; Lua's cjson would not);
one Lua call per batch then ZREMs each exact member and pushes its job only if the ZREM
removed it, and advances the task's cursor, atomically: a crash at any instant loses and
duplicates nothing, and a job someone else retried meanwhile is not pushed twice. The
task walks the set oldest first by (score, member), up to the newest score it saw at the
start; jobs it does not take stay where they are, so there is nothing to put back.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TYPE_CHECKING

from bot.core.invocation import CommandError
from commands.dlq.backend import (CANCEL, RATE, READY_DEPTH, REPLAY, REQUEUE, RESUME, TRIM, Capabilities, Depth,
                                  Refusing, ScanSummary)
from commands.dlq.driver import drive_requeue
from commands.dlq.entries import DeadEntry, Filters
from commands.dlq.lease import Holder, LeaseBusy, QueueLease
from commands.dlq.redis_list import RequeueReport, Task
from commands.dlq.settings import QueueSettings
from commands.dlq.trimmer import QueueTrim, TrimReport, TrimTask

if TYPE_CHECKING:
    import redis

__all__ = ["SidekiqSet", "SidekiqTrim", "sidekiq_view", "retried_job"]

CHUNK = 1000
DEFAULT_OPTIONS = {"retry": True, "queue": "default"}  # Sidekiq::DEFAULT_WORKER_OPTIONS (6.x, 7.x)
SETS = ("dead", "retry")

# KEYS: set, task, lease, queues, then one `queue:<name>` key per distinct job queue in the batch.
# ARGV: lease token, now, scanned, cursor score, cursor member, then (member, key index, queue, job) per job.
# Returns {scanned, moved, state}: state 0 = go on, 2 = not ours (lease lost, or the task is not running).
MOVE = r"""
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return {0, 0, 2} end
if redis.call('HGET', KEYS[2], 'status') ~= 'running' then return {0, 0, 2} end
local limit = tonumber(redis.call('HGET', KEYS[2], 'limit'))
local moved = tonumber(redis.call('HGET', KEYS[2], 'moved'))
local now = 0
for i = 6, #ARGV, 4 do
  if limit >= 0 and moved + now >= limit then break end
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('SADD', KEYS[4], ARGV[i + 2])
    redis.call('LPUSH', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 3])
    now = now + 1
  end
end
redis.call('HINCRBY', KEYS[2], 'scanned', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'moved', now)
redis.call('HSET', KEYS[2], 'cursor_score', ARGV[4], 'cursor_member', ARGV[5], 'updated_at', ARGV[2])
return {tonumber(ARGV[3]), now, 0}
"""

# KEYS: set, trim task, lease. ARGV: lease token, task id, members (oldest first, as archived).
# 1 removed them all (`dropped` grew in the same step), 0 one is gone or removing them would leave fewer
# than the task's `keep` (Sidekiq pruned some since the trim measured the set; nothing removed), -1 not ours.
TRIM_REMOVE = r"""
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return -1 end
if redis.call('HGET', KEYS[2], 'id') ~= ARGV[2] or redis.call('HGET', KEYS[2], 'status') ~= 'running' then
  return -1
end
if redis.call('ZCARD', KEYS[1]) - (#ARGV - 2) < tonumber(redis.call('HGET', KEYS[2], 'keep') or 0) then return 0 end
for i = 3, #ARGV do
  if not redis.call('ZSCORE', KEYS[1], ARGV[i]) then return 0 end
end
for i = 3, #ARGV, 1000 do redis.call('ZREM', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV))) end
redis.call('HINCRBY', KEYS[2], 'dropped', #ARGV - 2)
return 1
"""


def sidekiq_view(raw: bytes) -> DeadEntry:
    """A Sidekiq job as a dead entry: type = ``wrapped`` (ActiveJob) or ``class``, error =
    ``error_class: error_message``, failedAt = ``failed_at``, id = ``jid``; the bytes stay as stored."""
    parsed = DeadEntry.parse(raw)
    job = parsed.document
    if job is None:
        return parsed
    kind = job.get("wrapped") if isinstance(job.get("wrapped"), str) else job.get("class")
    error = job.get("error_class")
    if isinstance(error, str) and isinstance(job.get("error_message"), str):
        error = f"{error}: {job['error_message']}"
    view = {"id": job.get("jid"), "type": kind, "attempts": job.get("retry_count"), "error": error,
            "failedAt": job.get("failed_at"), "payload": job.get("args"), "queue": job.get("queue")}
    return DeadEntry(raw, view, parsed.partial)


def retried_job(raw: bytes, now: float) -> tuple[str, bytes] | None:
    """(queue, job JSON) as ``SortedEntry#retry`` + ``Client.push`` would enqueue it; None when Sidekiq
    itself would refuse it (not a readable job: no class, args not a list, bytes not UTF-8)."""
    try:
        job = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(job, dict) or not isinstance(job.get("class"), str) or not isinstance(job.get("args"), list):
        return None
    count = job.get("retry_count")
    if isinstance(count, (int, float)) and not isinstance(count, bool):
        job["retry_count"] = count - 1  # Ruby: `-= 1 if msg["retry_count"]` (0 is true in Ruby)
    job = {**DEFAULT_OPTIONS, **job}
    if not isinstance(job["queue"], str) or not job["queue"]:
        return None
    job["enqueued_at"] = now
    return job["queue"], json.dumps(job, ensure_ascii=False, separators=(",", ":")).encode()


class SidekiqSet(Refusing):
    """A :class:`~commands.dlq.backend.DeadLetterBackend` over Sidekiq's dead (or retry) set."""

    backend: ClassVar[str] = "sidekiq"
    capabilities: ClassVar[Capabilities] = Capabilities(
        frozenset({REQUEUE, RESUME, TRIM, CANCEL, READY_DEPTH, RATE}),
        {REPLAY: "queue {queue!r} moves Sidekiq jobs back to their queues inside Redis (sidekiq backend); "
                 "it does not replay them one by one"})

    @classmethod
    def open(cls, settings: QueueSettings, targets: Any, app: Any) -> "SidekiqSet":
        return cls(settings, targets.redis(settings.redis), app.state.prefix)

    def __init__(self, settings: QueueSettings, client: redis.Redis, prefix: str = "opsbot:",
                 clock: Callable[[], float] = time.time):
        which = settings.queue or "dead"
        if which not in SETS:
            raise CommandError(f"queue {settings.name!r}: a sidekiq queue is Sidekiq's `dead` or `retry` set, "
                               f"not {which!r}")
        self.settings = settings
        self.client = client
        self.prefix = prefix
        self.clock = clock
        self.name = settings.name
        self.space = f"{settings.namespace}:" if settings.namespace else ""
        self.set_key = self.space + which
        self.task_key = f"{prefix}dlq:task:{self.name}"
        self.lease_key = f"{prefix}dlq:lease:{self.name}"
        self.trim_key = f"{prefix}dlq:trim:{self.name}"
        self.lease = QueueLease(client, self.lease_key, self.name)
        self._move = client.register_script(MOVE)
        self._trim_remove = client.register_script(TRIM_REMOVE)

    # -- describing -----------------------------------------------------------------------

    def where(self) -> str:
        return self.set_key

    def destination(self) -> str:
        return f"`{self.set_key}` → each job's own queue (`{self.space}queue:NAME`)"

    def locations(self) -> dict[str, str]:
        return {"dead_key": self.set_key, "ready_keys": f"{self.space}queue:*"}

    def probe(self) -> str:
        self.check_types()
        return f"ok, Sidekiq set {self.set_key!r}: {self.client.zcard(self.set_key)}"

    # -- reading --------------------------------------------------------------------------

    def check_types(self) -> None:
        kind = self.client.type(self.set_key).decode()
        if kind not in ("zset", "none"):
            raise CommandError(f"Sidekiq set {self.set_key!r} of queue {self.name!r} is a Redis {kind}, "
                               "not a sorted set")

    def depth(self) -> Depth:
        self.check_types()
        queues = sorted(self.client.smembers(self.space + "queues"))
        pipe = self.client.pipeline(transaction=False)
        for queue in queues:
            pipe.llen(self.space.encode() + b"queue:" + queue)
        ready = sum(pipe.execute()) if queues else 0
        oldest = self.oldest(1)
        return Depth(ready, self.dead_count(), oldest[0].failed_at if oldest else None)

    def dead_count(self) -> int:
        return self.client.zcard(self.set_key)

    def oldest(self, count: int) -> list[DeadEntry]:
        return [sidekiq_view(raw) for raw in self.client.zrange(self.set_key, 0, count - 1)]

    def _walk(self, score: str = "-inf", member: bytes | None = None, top: str = "+inf",
              chunk: int = CHUNK) -> Iterator[tuple[bytes, float]]:
        """(member, score) after the cursor (score, member), oldest first, a chunk per call."""
        while True:
            skip = 0
            while True:
                page = self.client.zrangebyscore(self.set_key, score, top, start=skip, num=chunk, withscores=True)
                items = [(m, s) for m, s in page if member is None or s > float(score) or m > member]
                if items or len(page) < chunk:
                    break
                skip += chunk  # a whole page of ties at the cursor's score, all behind it
            yield from items
            if len(page) < chunk:
                return
            member, last = items[-1]
            score = repr(last)

    def entries(self, filters: Filters | None = None) -> Iterator[DeadEntry]:
        self.check_types()
        now = self.clock()
        for raw, _ in self._walk():
            entry = sidekiq_view(raw)
            if filters is None or filters.matches(entry, now):
                yield entry

    def sample(self, samples: int = 10) -> ScanSummary:
        self.check_types()
        return ScanSummary.of_sample(
            self.dead_count(), lambda offset, count: [sidekiq_view(raw) for raw in
                                                      self.client.zrange(self.set_key, offset, offset + count - 1)],
            samples)

    def scan(self, filters: Filters, samples: int = 10) -> ScanSummary:
        self.check_types()
        summary = ScanSummary(total=self.dead_count())
        now = self.clock()
        for raw, _ in self._walk():
            summary.scanned += 1
            entry = sidekiq_view(raw)
            if filters.matches(entry, now):
                summary.count(entry, samples)
            if summary.scanned % CHUNK == 0:
                summary._bound()  # bounded groups, however many distinct errors the set holds
        summary._bound()
        return summary

    def task(self) -> Task | None:
        data = self.client.hgetall(self.task_key)
        data.pop(b"cursor_member", None)  # a job's bytes: not necessarily UTF-8
        return Task.from_hash(data) if data else None

    def trim_task(self) -> TrimTask | None:
        return SidekiqTrim(self, self.clock).task()

    def lease_holder(self) -> Holder | None:
        return self.lease.holder()

    # -- requeue --------------------------------------------------------------------------

    def start_requeue(self, filters: Filters, *, limit: int | None, rate: float | None, matching: int,
                      requested_by: str, task_id: str | None = None) -> Task:
        """Record a task bounded by the newest score now (jobs that die later are not taken)."""
        current = self.task()
        if current and current.unfinished:
            raise CommandError(f"an unfinished requeue of {self.name!r} exists ({current.id}); resume it first")
        now = self.clock()
        newest = self.client.zrange(self.set_key, -1, -1, withscores=True)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.task_key)
        pipe.hset(self.task_key, mapping={
            "id": task_id or secrets.token_hex(6), "status": "running", "filters": json.dumps(filters.to_dict()),
            "limit": -1 if limit is None else limit, "rate": rate or 0, "total": self.dead_count(),
            "matching": matching, "scanned": 0, "moved": 0, "started_at": now, "updated_at": now,
            "requested_by": requested_by, "cursor_score": "-inf", "cursor_member": "",
            "top": repr(newest[0][1]) if newest else "-inf"})
        pipe.execute()
        return self.task()

    def run_requeue(self, task_id: str, *, owner: str,
                    progress: Callable[[Task, float], None] = lambda task, rate: None, batch: int = 1000,
                    lease_ttl: float = 15.0, should_stop: Callable[[], bool] = lambda: False,
                    before: Callable[[], Any] = lambda: None) -> RequeueReport:
        """Drive the task to its end (or resume it); safe to kill at any instant and run again."""
        outcome, seconds, first_moved = drive_requeue(
            self, task_id, owner=owner, progress=progress, batch=batch, lease_ttl=lease_ttl, should_stop=should_stop,
            before=before, step=self._step, finish=self._finish,
            lost=lambda: "lost" if self.client.hget(self.task_key, "status") == b"running" else "done")
        return RequeueReport(self.task(), outcome, seconds, first_moved)

    def _step(self, token: str, step: int) -> int:
        """One batch: read after the cursor, choose and rewrite in Python, move atomically in Lua.
        Returns 0 more to do, 1 finished, 2 not ours."""
        data = self.client.hgetall(self.task_key)
        if data.get(b"status") != b"running":
            return 2
        task = Task.from_hash({k: v for k, v in data.items() if k != b"cursor_member"})
        if task.limit is not None and task.moved >= task.limit:
            return 1
        cursor, top = data[b"cursor_score"].decode(), data[b"top"].decode()
        member = data[b"cursor_member"] if cursor != "-inf" else None
        wanted = None if task.limit is None else task.limit - task.moved
        now = self.clock()
        scanned, moves, last = 0, [], None
        for raw, score in self._walk(cursor, member, top, chunk=step):
            scanned, last = scanned + 1, (raw, score)
            if task.filters.matches(sidekiq_view(raw), task.started_at):
                job = retried_job(raw, now)
                if job is not None:
                    moves.append((raw, *job))
            if scanned >= step or (wanted is not None and len(moves) >= wanted):
                break
        if last is None:
            return 1
        keys = [self.set_key, self.task_key, self.lease_key, self.space + "queues"]
        args: list[Any] = [token, now, scanned, repr(last[1]), last[0]]
        for raw, queue, body in moves:
            key = f"{self.space}queue:{queue}"
            if key not in keys:
                keys.append(key)
            args += [raw, keys.index(key) + 1, queue, body]
        _, _, result = self._move(keys=keys, args=args)
        return 2 if result == 2 else 0

    def _finish(self, token: str) -> str:
        status = (self.client.hget(self.task_key, "status") or b"").decode()
        final = "cancelled" if status == "cancelling" else "done"
        self.client.hset(self.task_key, mapping={"status": final, "updated_at": self.clock()})
        return final

    def cancel(self) -> Task | None:
        """Stop a running requeue after its batch; an interrupted one is closed now (nothing to put back)."""
        task = self.task()
        if task is None or not task.unfinished:
            return None
        self.client.hset(self.task_key, "status", "cancelling")
        try:
            token = self.lease.take("requeue", task.id, owner="cancel", ttl=self.settings.lease_ttl)
        except LeaseBusy:
            return self.task()
        try:
            self._finish(token)
        finally:
            self.lease.release(token)
        return self.task()

    # -- trim -----------------------------------------------------------------------------

    def run_trim(self, *, keep: int, archive: Callable[[str, int, list[bytes]], None], batch: int = 500,
                 should_stop: Callable[[], bool] = lambda: False, **options: Any) -> TrimReport:
        """Drop all but the newest ``keep`` jobs of the set, archived first (see QueueTrim.run)."""
        return SidekiqTrim(self, self.clock).run(keep=keep, archive=archive, batch=batch, should_stop=should_stop,
                                                 **options)


class SidekiqTrim(QueueTrim):
    """QueueTrim over the sorted set: the oldest are the lowest scores; removal checks each exact member."""

    _remove_parts = QueueTrim._remove_each  # TRIM_REMOVE does not check `dropped`: one batch at a time
    optimistic = False  # the dead letters are a sorted set, not the list QueueTrim watches

    def _size(self) -> int:
        return self.client.zcard(self.queue.set_key)

    def _oldest(self, n: int, skip: int = 0) -> list[bytes]:
        return self.client.zrange(self.queue.set_key, skip, skip + n - 1)

    def _remove(self, token: str, task_id: str, oldest_first: list[bytes], ordinal: int) -> int:
        return self.queue._trim_remove(keys=[self.queue.set_key, self.key, self.lease.key],
                                       args=[token, task_id, *oldest_first])
