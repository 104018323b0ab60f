"""The ``rq`` dead-letter backend: RQ's failed-job registry, requeued by RQ's own code.

Usage::

    queue = RqQueue(QueueSettings(name="mail", backend="rq", queue="mail"), redis_client)
    queue.depth()                                  # Depth(ready=len(rq:queue:mail), dead=zcard(rq:failed:mail))
    task = queue.start_requeue(Filters(type="app.jobs.send"), limit=10, rate=None, matching=10, requested_by="U1")
    queue.run_requeue(task.id, owner="host:pid")   # FailedJobRegistry.requeue, job by job

What RQ (3.x) keeps: ``rq:failed:<queue>``, a sorted set of job ids scored by when they expire;
each job a hash ``rq:job:<id>`` whose ``data`` (function and arguments) is pickled. opsbot never
unpickles anything: the type is read from the job's ``description`` (RQ writes
``module.function(args...)``; a job given its own description shows that), the error is the last
line of the traceback in the job's latest result (``rq:results:<id>``) or its ``exc_info``, and the
age is ``ended_at``. Requeueing calls ``FailedJobRegistry.requeue`` with a serializer that refuses
to load: RQ keeps fields it cannot read (``meta``) as they are, and ``data`` is copied as bytes.
It is handed each job fetched by RQ's ``Job.fetch_many``, ``FETCH`` at a time, where ``rq requeue``
lets it ``Job.fetch`` each in a round trip of its own; what RQ then does per job is the same.

``FailedJobRegistry.requeue`` removes the id from the failed set, then enqueues the job in a
second step: a crash between the two leaves a job that is in neither. A requeue task finds such a
job (status still ``failed``, in no list) when it resumes, puts it back in the failed set with its
old score and requeues it again.

``trim`` is not offered: RQ expires failed jobs itself (``failure_ttl``, one year by default), and
dropping one means deleting its job hash and results, which RQ does not let a tool archive first.
"""

from __future__ import annotations

import zlib
from base64 import b64decode
from typing import Any, ClassVar

from rq.exceptions import InvalidJobOperation
from rq.job import Job
from rq.queue import Queue
from rq.registry import FailedJobRegistry
from rq.results import Result

from commands.dlq.backend import (CANCEL, RATE, READY_DEPTH, REPLAY, REQUEUE, RESUME, TRIM, Capabilities)
from commands.dlq.entries import DeadEntry
from commands.dlq.jobtask import JobRegistryQueue, entry_of, last_line

__all__ = ["RqQueue", "NoUnpickling"]

# Per id (ARGV[2..]): "<score in the failed set>|<the job's ended_at>", or false when it is not failed.
# KEYS failed set; ARGV[1] the job key prefix (rq:job:). One reply for a batch, not a pipeline of two each.
FINGERPRINTS = """
local out = {}
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  out[i - 1] = score and (score .. '|' .. (redis.call('HGET', ARGV[1] .. ARGV[i], 'ended_at') or '')) or false
end
return out
"""
FETCH = 100  # jobs fetched per round trip before RQ requeues them one by one
FIELDS = ("description", "ended_at", "exc_info", "status", "origin", "enqueued_at", "created_at")


class NoUnpickling:
    """An RQ serializer that never loads: RQ then keeps what it cannot read as raw bytes."""

    @staticmethod
    def dumps(obj: Any) -> bytes:  # RQ would only call it for a value it read, and it reads none
        raise ValueError("opsbot does not serialize RQ job values")

    @staticmethod
    def loads(data: bytes) -> Any:
        raise ValueError("opsbot never unpickles RQ job data")


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


def _unzip(value: bytes | None) -> str | None:
    if not value:
        return None
    try:
        return zlib.decompress(value).decode("utf-8", "replace")
    except zlib.error:
        return value.decode("utf-8", "replace")


def function_of(description: str | None) -> str | None:
    """``app.jobs.send('a', 1)`` → ``app.jobs.send``; a description without a call is the type itself."""
    if not description:
        return None
    return description.split("(", 1)[0].strip() or None


class RqQueue(JobRegistryQueue):
    """A :class:`~commands.dlq.backend.DeadLetterBackend` over an RQ queue's failed-job registry."""

    backend: ClassVar[str] = "rq"
    capabilities: ClassVar[Capabilities] = Capabilities(
        frozenset({REQUEUE, RESUME, CANCEL, READY_DEPTH, RATE}),
        {REPLAY: "queue {queue!r} is requeued by RQ's own FailedJobRegistry.requeue (rq backend), as one task",
         TRIM: "queue {queue!r} is an RQ failed-job registry (rq backend): RQ expires failed jobs itself after "
               "their failure_ttl; opsbot does not trim it"})

    def __init__(self, settings: Any, client: Any, prefix: str = "opsbot:", **kw: Any):
        super().__init__(settings, client, prefix, **kw)
        self.queue = settings.queue or settings.name
        self.registry = FailedJobRegistry(self.queue, connection=client, serializer=NoUnpickling)
        self.failed_key = self.registry.key
        self.ready_key = Queue(self.queue, connection=client, serializer=NoUnpickling).key
        self._fingerprint = client.register_script(FINGERPRINTS)

    def _fingerprints(self, ids: list[str]) -> list[str | None]:
        """The failed set's score (whole seconds) and the job's ``ended_at`` (microseconds): a job that
        failed again within the same second still has another fingerprint. One script call for all."""
        if not ids:
            return []
        return [None if fp is None else fp.decode("utf-8", "replace")
                for fp in self._fingerprint(keys=[self.failed_key], args=[Job.redis_job_namespace_prefix, *ids])]

    def _read(self, ids: list[str]) -> list[DeadEntry]:
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(Job.key_for(job_id), FIELDS)
            pipe.xrevrange(Result.get_key(job_id), "+", "-", count=1)
        replies = pipe.execute()
        entries = []
        for index, job_id in enumerate(ids):
            fields = dict(zip(FIELDS, replies[2 * index]))
            latest = replies[2 * index + 1]
            exc = None
            if latest:
                raw = latest[0][1].get(b"exc_string")
                if raw:
                    try:
                        exc = zlib.decompress(b64decode(raw)).decode("utf-8", "replace")
                    except (ValueError, zlib.error):
                        exc = None
            exc = exc or _unzip(fields["exc_info"])
            description = _text(fields["description"])
            document = {"id": job_id, "type": function_of(description), "error": last_line(exc),
                        "failedAt": _text(fields["ended_at"]), "payload": description,
                        "status": _text(fields["status"]), "origin": _text(fields["origin"])}
            if fields["status"] is None and fields["description"] is None:
                document["error"] = document["error"] or "(the job's hash is gone: RQ expired or deleted it)"
            entries.append(entry_of(document))
        return entries

    def _requeue(self, ids: list[str]) -> set[str]:
        """RQ's own requeue, job by job, in order (as ``rq requeue`` does), each given the job fetched with
        ``Job.fetch_many`` (one round trip per ``FETCH`` jobs instead of a ``Job.fetch`` per job)."""
        moved = set()
        for start in range(0, len(ids), FETCH):
            chunk = ids[start:start + FETCH]
            for job_id, job in zip(chunk, Job.fetch_many(chunk, connection=self.client, serializer=NoUnpickling)):
                if job is None:
                    continue  # its hash is gone (RQ's requeue would raise NoSuchJobError)
                try:
                    self.registry.requeue(job)
                except InvalidJobOperation:
                    continue  # no longer in the failed registry (someone else took it)
                moved.add(job_id)
        return moved

    def _recover(self, job_id: str, fingerprint: str) -> bool:
        """Removed from the failed set but never enqueued (a crash inside RQ's requeue)?"""
        status, origin = self.client.hmget(Job.key_for(job_id), "status", "origin")
        if status != b"failed":
            return False  # enqueued (queued, started, finished ...), or deleted
        ready = Queue((origin or self.queue.encode()).decode(), connection=self.client).key
        if self.client.lpos(ready, job_id) is not None:
            return False
        self.client.zadd(self.failed_key, {job_id: float(fingerprint.split('|')[0])}, nx=True)
        return True
