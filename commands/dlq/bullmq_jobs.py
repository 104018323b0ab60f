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
  like ``retryJobs`` it ignores priority and ``lifo``). When the task starts, HEAD reads how many
  jobs it moves (the oldest that ``moveJobsToWait`` takes, up to the limit) and the score of the
  last of them, the *head*; nothing is copied. Each batch is one MULTI/EXEC (LEND, ``moveJobsToWait``
  on the failed set lent under the batch key with the head as its bound, SETTLE), whole or not at
  all, so no journal is needed; a job that failed again since has a later score and is not taken.
  Nothing moves while BullMQ's wait key is not a list, its events key not a stream, its marker or the failed set
  not a sorted set, or its events cap not a number (see LEND). An unfinished task of the previous version (a pending list, no head) is
  finished through the journal, a batch it staged (``moving``) moved first (see STAGED).
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
from commands.dlq.bullmq_lua import FINGERPRINTS, HEAD, LEND, SETTLE, STAGED, UNSTAGE
from commands.dlq.backend import (CANCEL, RATE, READY_DEPTH, REPLAY, REQUEUE, RESUME, TRIM, Capabilities)
from commands.dlq.entries import DeadEntry, Filters
from commands.dlq.jobtask import JobRegistryQueue, entry_of, last_line
from commands.dlq.redis_list import RequeueReport, Task

__all__ = ["BullQueue"]

EVERY_SCORE = 1.7976931348623157e+308  # moveJobsToWait's timestamp bound, as BullMQ's own promoteJobs passes it
STAGED_ALL = 2 ** 31 - 1  # moveJobsToWait's count for a batch the previous version staged: all of it
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
        self.batch_key = f"{prefix}dlq:batch:{self.name}"  # the failed set, for an instant inside a MULTI
        self.lent_key = f"{prefix}dlq:lent:{self.name}"    # LEND's word to SETTLE, inside that MULTI
        self.moving_key = f"{prefix}dlq:moving:{self.name}"  # a batch the previous version staged (see STAGED)
        self.keys = QueueKeys(self.bull_prefix).getKeys(self.queue)
        self._reprocess = self.client.register_script(loadScript(SCRIPT_DEFINITIONS["reprocessJob"]))
        self._move_jobs_source = loadScript(SCRIPT_DEFINITIONS["moveJobsToWait"])
        self._left: int | None = None  # an unfiltered task's jobs left to move (-1: filtered), as last counted
        self._bound: str | None = None  # and its head score
        self._fingerprint = self.client.register_script(FINGERPRINTS)
        self._head_script = self.client.register_script(HEAD)

    def _fingerprints(self, ids: list[str]) -> list[str | None]:
        """The failed set's score of each id, as Redis writes it (see FINGERPRINTS); one script call per batch."""
        if not ids:
            return []
        return [None if score is None else _text(score)
                for score in self._fingerprint(keys=[self.failed_key], args=ids)]

    def _head(self, filters: Filters, limit: int | None) -> dict[str, Any] | None:
        """Unfiltered: nothing is copied; the task moves the failed set's oldest ``left`` jobs scored up to
        ``head`` (see HEAD), as ``retryJobs`` would take them; ``head_id``, the last of them, tells which jobs at
        the head score were selected (see ROOM)."""
        if not filters.empty:
            return None
        count, *last = self._head_script(keys=[self.failed_key], args=[-1 if limit is None else limit, EVERY_SCORE])
        if not last:
            return {"left": 0, "head": ""}
        return {"left": int(count), "head": _text(last[0]), "head_id": last[1]}

    def _unfiltered(self) -> tuple[int, str | None]:
        """An unfiltered task's jobs left to move and head, from its hash; (-1, None) for any other task (no head,
        no ``left``: filtered, or written by an older opsbot, with a pending list)."""
        head, left = self.client.hmget(self.task_key, "head", "left")
        if head is None and left is None:
            return -1, None
        try:
            return int(left), head.decode()
        except (TypeError, ValueError, AttributeError):
            raise CommandError(f"the requeue task of {self.name!r} is not what opsbot writes (head {head!r}, left "
                               f"{left!r}): nothing was moved; `dlq cancel {self.name}` closes it") from None

    def _finished(self) -> bool:
        return self._unfiltered()[0] <= 0 and super()._finished()

    def _batch(self, token: str, step: int) -> int:
        """An unfiltered task's batch: LEND, BullMQ's ``moveJobsToWait`` (what ``Queue.retryJobs`` runs) and
        SETTLE in one MULTI/EXEC, so it happens whole or not at all (see LEND). Any other task's batch is
        :meth:`_requeue`'s, through the journal."""
        if self._left is None:
            self._left, self._bound = self._unfiltered()
        if self._left < 0:                  # a filtered task (or the previous version's): through the journal
            return self._staged(token) if self.client.exists(self.moving_key) else super()._batch(token, step)
        n = min(step, self._left)
        if n <= 0:
            return 1
        keys = self.keys
        pipe = self.client.pipeline(transaction=True)
        pipe.execute_command("EVAL", LEND, 9, self.lease_key, self.task_key, self.failed_key, self.batch_key,
                             self.lent_key, keys["wait"], keys["events"], keys["marker"], keys["meta"], token, n,
                             self._bound)
        pipe.execute_command("EVAL", self._move_jobs_source, 8, keys[""], keys["events"], self.batch_key,
                             keys["wait"], keys["paused"], keys["meta"], keys["active"], keys["marker"],
                             n, self._bound, "failed")
        pipe.execute_command("EVAL", SETTLE, 4, self.batch_key, self.failed_key, self.lent_key, self.task_key,
                             n, self.clock())
        lent, moved, settled = pipe.execute(raise_on_error=False)
        if isinstance(settled, Exception):
            raise settled
        state = int(settled[0])
        if state == 4:                      # BullMQ refused the move: nothing it did not move was touched
            raise moved if isinstance(moved, Exception) else CommandError(
                f"BullMQ did not move the failed jobs of queue {self.name!r}; the rest stays failed")
        if state in (0, 1):
            self._left = int(settled[1])
            return state
        self._left = None                   # nothing lent (the task hash may even be gone: no left to read)
        if isinstance(lent, Exception):
            raise lent
        lent = lent.decode()
        if lent == "cancelling":
            return 1
        if lent == "short":                 # fewer selected jobs left than this batch: LEND lowered ``left``
            return 0
        if lent == "types":
            self._wrong_types()
        if lent == "cap":
            cap = _text(self.client.hget(keys["meta"], "opts.maxLenEvents"))
            raise CommandError(f"BullMQ's key {keys['meta']!r} says opts.maxLenEvents {cap!r}, not a whole number: "
                               "BullMQ would strip the jobs of their failure and then fail; nothing was moved")
        if lent == "error":
            raise CommandError(f"opsbot's lease or task key of queue {self.name!r} is not what opsbot writes: "
                               "nothing was moved")
        return 2                            # the lease or the task is not ours any more

    def _wrong_types(self) -> None:
        kinds = {self.keys["wait"]: "list", self.keys["events"]: "stream", self.keys["marker"]: "zset",
                 self.failed_key: "zset"}
        wrong = ", ".join(f"{key!r} is a Redis {self.client.type(key).decode()}, not a {want}"
                          for key, want in kinds.items() if self.client.type(key).decode() not in (want, "none"))
        raise CommandError(f"BullMQ's keys of queue {self.name!r} are not what BullMQ writes ({wrong}): "
                           "nothing was moved")

    def _staged(self, token: str) -> int:
        """The batch an unfinished task of the previous version staged (see STAGED), moved whole first."""
        keys = self.keys
        pipe = self.client.pipeline(transaction=True)
        pipe.execute_command("EVAL", STAGED, 6, self.lease_key, self.moving_key, self.batch_key, keys["wait"],
                             keys["events"], keys["marker"], token)
        pipe.execute_command("EVAL", self._move_jobs_source, 8, keys[""], keys["events"], self.batch_key,
                             keys["wait"], keys["paused"], keys["meta"], keys["active"], keys["marker"],
                             STAGED_ALL, EVERY_SCORE, "failed")
        pipe.execute_command("EVAL", UNSTAGE, 2, self.batch_key, self.moving_key)
        staged, moved, unstaged = pipe.execute(raise_on_error=False)
        for reply in (staged, moved, unstaged):
            if isinstance(reply, Exception):
                raise reply
        if staged == b"types":
            self._wrong_types()
        return 2 if staged == b"lease" else 0

    def _in_flight(self) -> list[str]:
        return [self.journal_key, self.moving_key]

    def run_requeue(self, task_id: str, **kw: Any) -> RequeueReport:
        self._left = None
        return super().run_requeue(task_id, **kw)

    def cancel(self) -> Task | None:
        self._left = None
        return super().cancel()

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
