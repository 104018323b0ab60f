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
  like ``retryJobs`` it ignores priority and ``lifo``). A batch is one MULTI/EXEC, either way whole
  or not at all, so no journal is needed. Quick (when the failed set's head is the batch, as it is
  when nothing else touched the failed set): ``CLAIM`` checks that and lends the failed set to
  ``moveJobsToWait`` under the batch key, ``RETURN`` gives it back and counts (see CLAIM). Staged
  (otherwise): ``STAGE`` (lease check; the batch's ids still in the failed set with the score they
  were selected with go to a staging set, counted, dropped from the pending list), then
  ``moveJobsToWait`` on that staging set (handed over under the batch key, what it did not move
  staged again by ``UNSTAGE``). Neither way moves anything while BullMQ's wait key is not a list
  or its events key not a stream (see STAGE).
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

from bot.core.invocation import CommandError
from commands.dlq.bullmq_lua import CLAIM, FINGERPRINTS, RETURN, SELECT, STAGE, UNSTAGE
from commands.dlq.backend import (CANCEL, RATE, READY_DEPTH, REPLAY, REQUEUE, RESUME, TRIM, Capabilities)
from commands.dlq.entries import DeadEntry, Filters
from commands.dlq.jobtask import JobRegistryQueue, entry_of, last_line
from commands.dlq.redis_list import RequeueReport, Task

__all__ = ["BullQueue"]

EVERY_SCORE = 1.7976931348623157e+308  # moveJobsToWait's timestamp bound, as BullMQ's own promoteJobs passes it
STAGED_ALL = 2 ** 31 - 1  # moveJobsToWait's count for a staged batch: all of it, whatever batch size staged it
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
        self.batch_key = f"{prefix}dlq:batch:{self.name}"      # the failed set, for an instant inside a MULTI
        self.claimed_key = f"{prefix}dlq:claimed:{self.name}"  # CLAIM's answer to RETURN, inside that MULTI
        self.keys = QueueKeys(self.bull_prefix).getKeys(self.queue)
        self._reprocess = self.client.register_script(loadScript(SCRIPT_DEFINITIONS["reprocessJob"]))
        self._move_jobs_source = loadScript(SCRIPT_DEFINITIONS["moveJobsToWait"])
        self._move_jobs = self.client.register_script(self._move_jobs_source)
        self._left: int | None = None  # pending rows left, as this process last counted them
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
        """An unfiltered task's batch: moved by BullMQ's ``moveJobsToWait`` (what ``Queue.retryJobs`` runs) in
        one MULTI/EXEC, so it happens whole or not at all: :meth:`_quick` when the failed set's head is the
        batch, else staged (:meth:`_staged`). Any other task's batch (or a batch a crash left journaled) is
        :meth:`_requeue`'s, through the journal."""
        if self._left is None:
            pipe = self.client.pipeline(transaction=False)
            pipe.hget(self.task_key, "bulk")
            pipe.llen(self.pending_key)
            bulk, left = pipe.execute()
            self._left = left if bulk == b"1" else -1
        if self._left < 0:                  # a filtered task: through the journal
            return super()._batch(token, step)
        n = min(step, self._left)
        state = self._quick(token, n) if n > 0 else "empty"
        if isinstance(state, int):
            self._left -= n
            return state
        self._left = None
        return 2 if state == "lease" else self._staged(token, step)

    def run_requeue(self, task_id: str, **kw: Any) -> RequeueReport:
        self._left = None
        return super().run_requeue(task_id, **kw)

    def cancel(self) -> Task | None:
        self._left = None
        return super().cancel()

    def _quick(self, token: str, n: int) -> int | str:
        """CLAIM, moveJobsToWait and RETURN in one MULTI/EXEC (see CLAIM): 0 more to do or 1 nothing left when
        the batch moved, else why it did not (nothing changed)."""
        keys = self.keys
        pipe = self.client.pipeline(transaction=True)
        pipe.execute_command("EVAL", CLAIM, 10, self.lease_key, self.task_key, self.pending_key, self.failed_key,
                             self.batch_key, self.journal_key, self.moving_key, self.claimed_key, keys["wait"],
                             keys["events"], token, n, EVERY_SCORE)
        pipe.execute_command("EVAL", self._move_jobs_source, 8, keys[""], keys["events"], self.batch_key,
                             keys["wait"], keys["paused"], keys["meta"], keys["active"], keys["marker"],
                             n, EVERY_SCORE, "failed")
        pipe.execute_command("EVAL", RETURN, 5, self.batch_key, self.failed_key, self.claimed_key, self.task_key,
                             self.pending_key, self.clock())
        claim, _, returned = pipe.execute(raise_on_error=False)
        if isinstance(returned, Exception):
            raise returned
        returned = int(returned)
        if returned in (0, 1):
            return returned
        if returned == 4:
            return "refused"                # claimed, but moveJobsToWait was refused: nothing moved or counted
        return claim.decode() if isinstance(claim, bytes) else "error"

    def _staged(self, token: str, step: int) -> int:
        """A batch through the staging set: STAGE, moveJobsToWait on the staged batch, UNSTAGE, in one MULTI/EXEC."""
        keys = self.keys
        pipe = self.client.pipeline(transaction=True)
        self._stage(keys=[self.lease_key, self.task_key, self.pending_key, self.failed_key, self.moving_key,
                          self.journal_key, self.batch_key, keys["wait"], keys["events"]],
                    args=[token, step, self.clock()], client=pipe)
        self._move_jobs(keys=[keys[""], keys["events"], self.batch_key, keys["wait"], keys["paused"],
                              keys["meta"], keys["active"], keys["marker"]],
                        args=[STAGED_ALL, EVERY_SCORE, "failed"], client=pipe)
        pipe.execute_command("EVAL", UNSTAGE, 2, self.batch_key, self.moving_key)
        state, moved, unstaged = pipe.execute(raise_on_error=False)
        for reply in (state, unstaged):
            if isinstance(reply, Exception):
                raise reply
        if isinstance(moved, Exception):
            raise moved  # staged, counted, not moved (Redis refused a write): the next batch moves them
        if int(state) == 5:
            kinds = {keys["wait"]: "list", keys["events"]: "stream"}
            wrong = ", ".join(f"{key!r} is a Redis {self.client.type(key).decode()}, not a {want}"
                              for key, want in kinds.items() if self.client.type(key).decode() not in (want, "none"))
            raise CommandError(f"BullMQ's keys of queue {self.name!r} are not what BullMQ writes ({wrong}): "
                               "nothing was moved")
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
