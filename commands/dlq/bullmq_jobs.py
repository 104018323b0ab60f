"""The ``bullmq`` dead-letter backend: a BullMQ queue's failed set, retried by BullMQ's own scripts.

Usage::

    queue = BullQueue(QueueSettings(name="pdf", backend="bullmq", queue="pdf"), redis_client, url=redis_url)
    queue.scan(Filters(error="timeout"), samples=3)
    task = queue.start_requeue(Filters(), limit=100, rate=None, matching=100, requested_by="U1")
    queue.run_requeue(task.id, owner="host:pid")   # bullmq Job.retry("failed"), a batch at a time

What BullMQ keeps: ``<prefix>:<queue>:failed``, a sorted set of job ids scored by when they
finished (ms); each job a hash ``<prefix>:<queue>:<id>`` with ``name`` (the type), ``data`` (JSON),
``failedReason`` (the error), ``atm`` (attempts made) and ``finishedOn`` (the age). ``prefix`` is
``bull`` unless the queue's settings say otherwise.

Requeueing uses the official ``bullmq`` Python package: ``Job.fromId`` then ``Job.retry("failed")``,
which runs BullMQ's own ``reprocessJob`` Lua script (atomically: only if the job is still in the
failed set, it leaves it, loses ``failedReason``/``finishedOn``, and is pushed to ``wait`` with
its marker and a ``waiting`` event), so BullMQ workers in any language run it again.

``trim`` is not offered: BullMQ trims failed jobs itself (``removeOnFail``, ``Queue.clean``), and
removing one is BullMQ's own ``removeJob`` script, which leaves nothing for opsbot to archive first.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine
from typing import Any, ClassVar

import redis.asyncio as aioredis
from bullmq import Job, Queue
from bullmq.job import optsFromJSON

from commands.dlq.backend import (CANCEL, RATE, READY_DEPTH, REPLAY, REQUEUE, RESUME, TRIM, Capabilities)
from commands.dlq.entries import DeadEntry
from commands.dlq.jobtask import JobRegistryQueue, entry_of, last_line

__all__ = ["BullQueue"]

FIELDS = ("name", "data", "failedReason", "stacktrace", "atm", "finishedOn", "timestamp")
CONCURRENCY = 50  # retries in flight at once, within one batch


def _run(coroutine: Coroutine) -> Any:
    """Run a coroutine to its end from synchronous code, even where an event loop already runs."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coroutine)
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name="opsbot-bullmq")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


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
        """The factory's constructor: the queue's Redis (client and URL, for the bullmq package)."""
        return cls(settings, targets.redis(settings.redis), app.state.prefix,
                   url=targets.settings.redis[settings.redis].url)

    def __init__(self, settings: Any, client: Any, prefix: str = "opsbot:", *, url: str, **kw: Any):
        super().__init__(settings, client, prefix, **kw)
        self.url = url
        self.queue = settings.queue or settings.name
        self.bull_prefix = settings.prefix or "bull"
        self.base = f"{self.bull_prefix}:{self.queue}"
        self.failed_key = f"{self.base}:failed"
        self.ready_key = f"{self.base}:wait"

    def _fingerprints(self, ids: list[str]) -> list[str | None]:
        """The failed set's score (finishedOn, ms) and the attempts made: each failure has its own."""
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.zscore(self.failed_key, job_id)
            pipe.hget(f"{self.base}:{job_id}", "atm")
        replies = pipe.execute()
        return [None if score is None else f"{score!r}|{_text(attempts) or ''}"
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
        """``Job.retry("failed")`` for each, a batch's jobs built from their stored ``name`` and ``opts``
        (read in one round trip: what ``Job.fromId`` would read, without each job's whole hash)."""
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(f"{self.base}:{job_id}", "name", "opts")
        jobs = []
        for job_id, (name, opts) in zip(ids, pipe.execute()):
            if name is None and opts is None:
                continue  # gone: BullMQ removed it
            try:
                options = json.loads(opts) if opts else {}
            except ValueError:
                options = {}
            jobs.append((job_id, _text(name) or "", options if isinstance(options, dict) else {}))
        return _run(self._retry(jobs)) if jobs else set()

    async def _retry(self, jobs: list[tuple[str, str, dict]]) -> set[str]:
        # A pooled client: given a URL, bullmq opens a single connection, and the batch would go one job at a time.
        client = aioredis.Redis.from_url(self.url, decode_responses=True, max_connections=CONCURRENCY)
        queue = Queue(self.queue, {"connection": client, "prefix": self.bull_prefix})
        moved: set[str] = set()
        limit = asyncio.Semaphore(CONCURRENCY)

        async def one(job_id: str, name: str, opts: dict) -> None:
            async with limit:
                job = Job(queue, name, None, optsFromJSON(opts), job_id=job_id)
                try:
                    await job.retry("failed")
                except TypeError:  # BullMQ's script said: not in the failed set (any more), or no such job
                    return
                moved.add(job_id)

        try:
            await asyncio.gather(*(one(*job) for job in jobs))
        finally:
            await queue.close()
            await client.aclose()
        return moved
