"""The ``bullmq`` dead-letter backend: a BullMQ queue's failed set, retried by BullMQ's own scripts.

Usage::

    queue = BullQueue(QueueSettings(name="pdf", backend="bullmq", queue="pdf"), redis_client)
    queue.scan(Filters(error="timeout"), samples=3)
    task = queue.start_requeue(Filters(), limit=100, rate=None, matching=100, requested_by="U1")
    queue.run_requeue(task.id, owner="host:pid")   # unfiltered: moveJobsToWait (retryJobs), a MULTI/EXEC a batch

What BullMQ keeps: ``<prefix>:<queue>:failed``, a sorted set of job ids scored by when they
finished (ms); each job a hash ``<prefix>:<queue>:<id>`` with ``name`` (the type), ``data`` (JSON),
``failedReason`` (the error), ``atm`` (attempts made) and ``finishedOn`` (the age). ``prefix`` is
``bull`` unless the queue's settings say otherwise.

Requeueing runs BullMQ's own Lua scripts, loaded from the official ``bullmq`` Python package with
its own key layout (``QueueKeys``), so BullMQ workers in any language run the jobs again:

* **unfiltered** (every failure, oldest first, up to ``--limit``): ``moveJobsToWait``, the script
  ``Queue.retryJobs`` runs, with the same effect (``failedReason``/``finishedOn``/``processedOn``
  dropped, attempts kept, LPUSHed to ``wait`` oldest first with the marker and a ``waiting`` event;
  like ``retryJobs`` it ignores priority and ``lifo``). A batch is one MULTI/EXEC: ``STAGE`` (lease
  check; the batch's ids still in the failed set with the score they were selected with go to a
  staging set, counted, dropped from the pending list), then ``moveJobsToWait`` on that staging set.
  Redis runs it whole or not at all, so no journal is needed.
* **filtered**: ``reprocessJob`` per job with exactly the arguments ``Job.retry("failed")`` passes
  (priority and ``lifo`` honoured), a pipeline per batch, journaled as :mod:`commands.dlq.jobtask` says.

A job's fingerprint is its score in the failed set: when it finished (ms).

``trim`` is not offered: BullMQ trims failed jobs itself (``removeOnFail``, ``Queue.clean``), and
removing one is BullMQ's own ``removeJob`` script, which leaves nothing for opsbot to archive first.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from bullmq.job import optsFromJSON
from bullmq.queue_keys import QueueKeys
from bullmq.redis_connection import SCRIPT_DEFINITIONS, loadScript

from commands.dlq.backend import (CANCEL, RATE, READY_DEPTH, REPLAY, REQUEUE, RESUME, TRIM, Capabilities)
from commands.dlq.entries import DeadEntry, Filters
from commands.dlq.jobtask import JobRegistryQueue, entry_of, last_line

__all__ = ["BullQueue"]

# A job's fingerprint is its score in the failed set as Redis writes it: the time it finished (ms); a
# job that ran again and failed again has another one. KEYS failed set; ARGV ids. False: not there.
FINGERPRINTS = "return redis.call('ZMSCORE', KEYS[1], unpack(ARGV))"

# The unfiltered selection, a chunk at a time: KEYS failed set, pending list; ARGV start, count. Appends
# an [id, fingerprint] row per id (as the other selection does). Returns how many ids it read.
SELECT = """
local found = redis.call('ZRANGE', KEYS[1], ARGV[1], tonumber(ARGV[1]) + tonumber(ARGV[2]) - 1, 'WITHSCORES')
local rows = {}
for i = 1, #found, 2 do rows[#rows + 1] = cjson.encode({found[i], found[i + 1]}) end
for i = 1, #rows, 1000 do redis.call('RPUSH', KEYS[2], unpack(rows, i, math.min(i + 999, #rows))) end
return #rows
"""

# One batch of an unfiltered requeue, staged for BullMQ's own moveJobsToWait (run next, in the same
# MULTI/EXEC). KEYS: lease, task, pending, failed, moving, journal. ARGV: token, n, now.
# Each of the next n pending ids still in the failed set with the fingerprint it was selected with goes
# from the failed set to ``moving`` (same score, so BullMQ moves them oldest first); the batch is counted
# and dropped from the pending list; while ``moving`` still holds a batch (its move was refused), nothing
# new is staged. Returns 2 lost lease, 3 not a bulk task or a journaled batch to finish (stages
# nothing), 1 nothing left or cancelling, 0 more to do.
STAGE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 2 end
if redis.call('HGET', KEYS[2], 'bulk') ~= '1' or redis.call('EXISTS', KEYS[6]) == 1 then return 3 end
local function more()
  if redis.call('EXISTS', KEYS[3]) == 0 or redis.call('HGET', KEYS[2], 'status') == 'cancelling' then return 1 end
  return 0
end
if redis.call('EXISTS', KEYS[5]) == 1 then return more() end  -- a staged batch a refused write left: move it first
local rows = redis.call('LRANGE', KEYS[3], 0, tonumber(ARGV[2]) - 1)
local ids, selected = {}, {}
for i, raw in ipairs(rows) do
  local row = cjson.decode(raw)
  ids[i] = row[1]
  selected[i] = row[2]
end
local moved, scored = {}, {}
if #ids > 0 then
  local now = redis.call('ZMSCORE', KEYS[4], unpack(ids))
  for i, id in ipairs(ids) do
    if now[i] and now[i] == selected[i] then
      moved[#moved + 1] = id
      scored[#scored + 1] = now[i]
      scored[#scored + 1] = id
    end
  end
  redis.call('LTRIM', KEYS[3], #rows, -1)
end
for i = 1, #moved, 1000 do
  local last = math.min(i + 999, #moved)
  redis.call('ZREM', KEYS[4], unpack(moved, i, last))
  redis.call('ZADD', KEYS[5], unpack(scored, 2 * i - 1, 2 * last))
end
redis.call('HINCRBY', KEYS[2], 'moved', #moved)
redis.call('HINCRBY', KEYS[2], 'scanned', #ids)
redis.call('HSET', KEYS[2], 'updated_at', ARGV[3])
return more()
"""
EVERY_SCORE = 1.7976931348623157e+308  # moveJobsToWait's timestamp bound, as BullMQ's own promoteJobs passes it
SELECT_CHUNK = 5000
FIELDS = ("name", "data", "failedReason", "stacktrace", "atm", "finishedOn", "timestamp")


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


class BullQueue(JobRegistryQueue):
    """A :class:`~commands.dlq.backend.DeadLetterBackend` over a BullMQ queue's failed set."""

    backend: ClassVar[str] = "bullmq"
    capabilities: ClassVar[Capabilities] = Capabilities(
        frozenset({REQUEUE, RESUME, CANCEL, READY_DEPTH, RATE}),
        {REPLAY: "queue {queue!r} is retried by BullMQ's own scripts (bullmq backend), as one task",
         TRIM: "queue {queue!r} is a BullMQ failed set (bullmq backend): BullMQ trims it itself "
               "(removeOnFail, Queue.clean); opsbot does not trim it"})

    def __init__(self, settings: Any, client: Any, prefix: str = "opsbot:", **kw: Any):
        super().__init__(settings, client, prefix, **kw)
        self.queue = settings.queue or settings.name
        self.bull_prefix = settings.prefix or "bull"
        self.base = f"{self.bull_prefix}:{self.queue}"
        self.failed_key = f"{self.base}:failed"
        self.ready_key = f"{self.base}:wait"
        self.moving_key = f"{prefix}dlq:moving:{self.name}"
        self.keys = QueueKeys(self.bull_prefix).getKeys(self.queue)
        self._reprocess = self.client.register_script(loadScript(SCRIPT_DEFINITIONS["reprocessJob"]))
        self._move_jobs = self.client.register_script(loadScript(SCRIPT_DEFINITIONS["moveJobsToWait"]))
        self._fingerprint = self.client.register_script(FINGERPRINTS)
        self._select_chunk = self.client.register_script(SELECT)
        self._stage = self.client.register_script(STAGE)

    def _fingerprints(self, ids: list[str]) -> list[str | None]:
        """The failed set's score of each id, as Redis writes it (see FINGERPRINTS); one script call per batch."""
        if not ids:
            return []
        return [None if score is None else _text(score)
                for score in self._fingerprint(keys=[self.failed_key], args=ids)]

    def _select(self, staging: str, filters: Filters, limit: int | None, now: float) -> int:
        """Unfiltered: the ids and fingerprints are copied server-side, a chunk at a time."""
        if not filters.empty:
            return super()._select(staging, filters, limit, now)
        selected = 0
        while limit is None or selected < limit:
            count = SELECT_CHUNK if limit is None else min(SELECT_CHUNK, limit - selected)
            found = int(self._select_chunk(keys=[self.failed_key, staging], args=[selected, count]))
            selected += found
            if found < count:
                break
        return selected

    def _batch(self, token: str, step: int) -> int:
        """An unfiltered task's batch: staged and moved by BullMQ's ``moveJobsToWait`` (what ``Queue.retryJobs``
        runs) in one MULTI/EXEC, so it happens whole or not at all. Any other task's batch (or a batch a crash
        left journaled) is :meth:`_requeue`'s, through the journal."""
        pipe = self.client.pipeline(transaction=True)
        self._stage(keys=[self.lease_key, self.task_key, self.pending_key, self.failed_key, self.moving_key,
                          self.journal_key], args=[token, step, self.clock()], client=pipe)
        keys = self.keys
        self._move_jobs(keys=[keys[""], keys["events"], self.moving_key, keys["wait"], keys["paused"],
                              keys["meta"], keys["active"], keys["marker"]],
                        args=[2 * step, EVERY_SCORE, "failed"], client=pipe)
        state, moved = pipe.execute(raise_on_error=False)
        if isinstance(state, Exception):
            raise state
        if isinstance(moved, Exception):
            raise moved  # staged, counted, not moved (Redis refused a write): the next batch moves them
        return super()._batch(token, step) if int(state) == 3 else int(state)

    def _in_flight(self) -> list[str]:
        return [self.journal_key, self.moving_key]

    def _read(self, ids: list[str]) -> list[DeadEntry]:
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(f"{self.base}:{job_id}", FIELDS)
        entries = []
        for job_id, values in zip(ids, pipe.execute()):
            fields = dict(zip(FIELDS, values))
            data = _text(fields["data"])
            try:
                payload = json.loads(data) if data is not None else None
            except ValueError:
                payload = data
            error = _text(fields["failedReason"])
            if not error:
                try:
                    stack = json.loads(_text(fields["stacktrace"]) or "[]")
                    error = last_line(stack[-1]) if stack and isinstance(stack[-1], str) else None
                except ValueError:
                    error = None
            attempts = _text(fields["atm"])
            finished = _text(fields["finishedOn"])
            document = {"id": job_id, "type": _text(fields["name"]), "attempts": int(attempts) if
                        attempts and attempts.isdigit() else attempts, "error": error,
                        "failedAt": int(finished) if finished and finished.isdigit() else finished,
                        "payload": payload}
            if all(value is None for value in values):
                document["error"] = "(the job's hash is gone: BullMQ removed it)"
            entries.append(entry_of(document))
        return entries

    def _requeue(self, ids: list[str]) -> set[str]:
        """BullMQ's ``reprocessJob`` for each job still there, as ``Job.retry("failed")`` calls it, in one pipeline."""
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(f"{self.base}:{job_id}", "opts")
        present = [(job_id, opts) for job_id, opts in zip(ids, pipe.execute()) if opts is not None]
        keys = self.keys
        shared = [keys[name] for name in ("events", "failed", "wait", "meta", "active", "marker", "prioritized", "pc")]
        pipe = self.client.pipeline(transaction=False)
        for job_id, opts in present:
            lifo = _options(opts).get("lifo")
            self._reprocess(keys=[f"{self.base}:{job_id}", *shared], client=pipe,
                            args=[job_id, ("R" if lifo else "L") + "PUSH", "failedReason", "failed", "0", "0"])
        replies = pipe.execute(raise_on_error=False) if present else []
        # 1: moved; -1 no such job, -3 not in the failed set (any more): BullMQ's own answers, as Job.retry raises them
        return {job_id for (job_id, _), reply in zip(present, replies) if reply == 1}


def _options(raw: bytes | str) -> dict:
    try:
        options = json.loads(raw)
    except ValueError:
        return {}
    return optsFromJSON(options) if isinstance(options, dict) else {}
