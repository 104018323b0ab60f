"""The ``bullmq`` dead-letter backend: a BullMQ queue's failed set, retried by BullMQ's own scripts.

Usage::

    queue = BullQueue(QueueSettings(name="pdf", backend="bullmq", queue="pdf"), redis_client)
    queue.scan(Filters(error="timeout"), samples=3)
    task = queue.start_requeue(Filters(), limit=100, rate=None, matching=100, requested_by="U1")
    queue.run_requeue(task.id, owner="host:pid")   # BullMQ's reprocessJob script, a pipelined batch at a time

What BullMQ keeps: ``<prefix>:<queue>:failed``, a sorted set of job ids scored by when they
finished (ms); each job a hash ``<prefix>:<queue>:<id>`` with ``name`` (the type), ``data`` (JSON),
``failedReason`` (the error), ``atm`` (attempts made) and ``finishedOn`` (the age). ``prefix`` is
``bull`` unless the queue's settings say otherwise.

Requeueing runs BullMQ's own ``reprocessJob`` Lua script, loaded from the official ``bullmq`` Python
package with its own key layout (``QueueKeys``) and exactly the keys and arguments its
``Job.retry("failed")`` passes (atomically: only if the job is still in the failed set, it leaves it,
loses ``failedReason``/``finishedOn``, and is pushed to ``wait`` with its marker and a ``waiting``
event), so BullMQ workers in any language run it again. The calls of a batch go in one pipeline:
one round trip per batch instead of one per job.

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
from commands.dlq.entries import DeadEntry
from commands.dlq.jobtask import JobRegistryQueue, entry_of, last_line

__all__ = ["BullQueue"]

FINGERPRINTS = """
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = redis.call('ZSCORE', KEYS[1], ARGV[i]) or false
  out[#out + 1] = redis.call('HGET', ARGV[1] .. ':' .. ARGV[i], 'atm') or ''
end
return out
"""  # per id: its score in the failed set (false: not there) and its attempts made
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

    @classmethod
    def open(cls, settings: Any, targets: Any, app: Any) -> "BullQueue":
        """The factory's constructor: the queue's Redis."""
        return cls(settings, targets.redis(settings.redis), app.state.prefix)

    def __init__(self, settings: Any, client: Any, prefix: str = "opsbot:", **kw: Any):
        super().__init__(settings, client, prefix, **kw)
        self.queue = settings.queue or settings.name
        self.bull_prefix = settings.prefix or "bull"
        self.base = f"{self.bull_prefix}:{self.queue}"
        self.failed_key = f"{self.base}:failed"
        self.ready_key = f"{self.base}:wait"
        self._reprocess = self.client.register_script(loadScript(SCRIPT_DEFINITIONS["reprocessJob"]))
        self._fingerprint = self.client.register_script(FINGERPRINTS)

    def _fingerprints(self, ids: list[str]) -> list[str | None]:
        """The failed set's score (finishedOn, ms) and the attempts made: each failure has its own.
        One script call per batch: a pipeline of two reads per job cost more than the requeue itself."""
        if not ids:
            return []
        replies = self._fingerprint(keys=[self.failed_key], args=[self.base, *ids])
        return [None if score is False or score is None else f"{float(score)!r}|{_text(attempts or None) or ''}"
                for score, attempts in zip(replies[::2], replies[1::2])]

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
        keys = QueueKeys(self.bull_prefix).getKeys(self.queue)
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
