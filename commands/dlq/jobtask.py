"""What the job-library backends (``rq``, ``bullmq``) share: reading a failed-job registry, and a
requeue task that survives a crash at any instant.

Usage (a backend module)::

    class RqQueue(JobRegistryQueue):
        backend = ...                      # its name in app.yaml
        def _fingerprints(self, ids): ...   # per id: its failed set's score now, or None
        def _read(self, ids): ...           # per id: a DeadEntry built from the job's readable fields
        def _requeue(self, ids): ...        # the library's own requeue; returns the ids it moved
        def _recover(self, job_id, fingerprint): ...  # requeued half-way by a crash? put it back first

    A backend may also replace ``_select`` (fill the pending list), ``_head`` (no pending list: the
    task moves the failed set's oldest jobs up to a score) and ``_batch`` (one step), and name in
    ``_in_flight`` the keys that hold a batch a crash left unfinished (the bullmq backend's unfiltered
    requeue moves the failed set's head in one MULTI/EXEC a batch instead of journaling it).

The library keeps failed jobs as ids in a sorted set (oldest first by score) and each job in
its own key; only the library's own code moves a job back to work. So a requeue task is:

1. **Select** (``start_requeue``, under the queue's lease): the matching ids, oldest first, up to
   ``--limit``, each with its *fingerprint* (its score in the failed set: a job that failed again
   has another one), into a pending list in Redis, written atomically with the task hash.
2. **Batches** of at most ``batch`` ids: the ids about to be requeued are journaled with their
   fingerprints (one HSET), the library requeues them, then one script checks the lease token,
   drops the batch from the pending list and counts it. A crash between journal and count is
   recovered by looking where each journaled job is now: still in the failed set with the same
   fingerprint, it was never requeued (requeue it); anywhere else, it was (count it, never again).
   A job whose fingerprint changed since the selection (requeued by someone else, failed again)
   or that is gone is skipped: it is not the failure that was previewed.

The library's own requeue is a conditional move (only if the job is still in the failed set), so
two drivers can never both requeue one failure.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TYPE_CHECKING

from bot.core.invocation import CommandError
from commands.dlq.backend import Capabilities, Depth, Refusing, ScanSummary
from commands.dlq.driver import drive_requeue
from commands.dlq.entries import DeadEntry, Filters
from commands.dlq.lease import Holder, LeaseBusy, QueueLease
from commands.dlq.redis_list import RequeueReport, Task
from commands.dlq.settings import QueueSettings

if TYPE_CHECKING:
    import redis

__all__ = ["JobRegistryQueue", "last_line", "entry_of"]

CHUNK = 500

# KEYS: task, pending, journal, lease. ARGV: token, n, moved, scanned, now.
# Returns 2 lost (not the lease holder), 1 nothing left or cancelling, 0 more to do.
_COMMIT = r"""
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return 2 end
redis.call('LTRIM', KEYS[2], tonumber(ARGV[2]), -1)
redis.call('HINCRBY', KEYS[1], 'moved', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'scanned', ARGV[4])
redis.call('HSET', KEYS[1], 'updated_at', ARGV[5])
redis.call('DEL', KEYS[3])
if redis.call('LLEN', KEYS[2]) == 0 or redis.call('HGET', KEYS[1], 'status') == 'cancelling' then return 1 end
return 0
"""


def last_line(text: str | None) -> str | None:
    """The last non-blank line of a traceback (``ValueError: boom``), or None."""
    if not text:
        return None
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def _age_order(entry: DeadEntry) -> float:
    failed = entry.failed_at
    return failed if failed is not None else float("inf")


def entry_of(document: dict[str, Any]) -> DeadEntry:
    """A dead letter built from a job's readable fields (its raw form is that document as JSON)."""
    return DeadEntry(json.dumps(document, ensure_ascii=False).encode("utf-8", "replace"), document)


class JobRegistryQueue(Refusing):
    """A failed-job registry (sorted set of ids) with a resumable requeue task; see the module doc."""

    backend: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    failed_key: str   # the sorted set of failed job ids
    ready_key: str    # the list the library's workers take from

    def __init__(self, settings: QueueSettings, client: redis.Redis, prefix: str = "opsbot:",
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.client = client
        self.clock = clock
        self.name = settings.name
        self.task_key = f"{prefix}dlq:task:{self.name}"
        self.lease_key = f"{prefix}dlq:lease:{self.name}"
        self.pending_key = f"{prefix}dlq:pending:{self.name}"
        self.journal_key = f"{prefix}dlq:journal:{self.name}"
        self.lease = QueueLease(client, self.lease_key, self.name)
        self._commit = client.register_script(_COMMIT)

    @classmethod
    def open(cls, settings: Any, targets: Any, app: Any) -> "JobRegistryQueue":
        """The factory's constructor: the queue's Redis from ``targets``, the key prefix from the app's settings."""
        return cls(settings, targets.redis(settings.redis), app.state.prefix)

    # -- what a backend supplies ------------------------------------------------------------

    def _fingerprints(self, ids: list[str]) -> list[str | None]:
        raise NotImplementedError

    def _read(self, ids: list[str]) -> list[DeadEntry]:
        raise NotImplementedError

    def _requeue(self, ids: list[str]) -> set[str]:
        raise NotImplementedError

    def _in_flight(self) -> list[str]:
        """The keys that, while they exist, hold a batch a crash left unfinished (finished by ``_batch``)."""
        return [self.journal_key]

    def _recover(self, job_id: str, fingerprint: str) -> bool:
        """A journaled job that left the failed set: True when a crash left it half-way (it is put
        back in the failed set, to be requeued again); False when it was requeued."""
        return False

    # -- describing and reading -------------------------------------------------------------

    def where(self) -> str:
        return self.failed_key

    def destination(self) -> str:
        return f"`{self.failed_key}` → `{self.ready_key}` (by {self.backend}'s own requeue)"

    def locations(self) -> dict[str, str]:
        return {"ready_key": self.ready_key, "dead_key": self.failed_key}

    def check_types(self) -> None:
        for role, key, want in (("failed", self.failed_key, "zset"), ("ready", self.ready_key, "list")):
            kind = self.client.type(key).decode()
            if kind not in (want, "none"):
                raise CommandError(f"{role} key {key!r} of queue {self.name!r} is a Redis {kind}, not a {want}")

    def probe(self) -> str:
        self.check_types()
        return f"ok, {self.backend}: failed {self.failed_key!r}: {self.dead_count()}, " \
               f"ready {self.ready_key!r}: {self.client.llen(self.ready_key)}"

    def dead_count(self) -> int:
        return self.client.zcard(self.failed_key)

    def depth(self) -> Depth:
        self.check_types()
        oldest = self.oldest(1)
        return Depth(self.client.llen(self.ready_key), self.dead_count(), oldest[0].failed_at if oldest else None)

    def _ids(self, start: int = 0, chunk: int = CHUNK) -> Iterator[list[str]]:
        while True:
            ids = [raw.decode("utf-8", "replace") for raw in self.client.zrange(self.failed_key, start,
                                                                                 start + chunk - 1)]
            if ids:
                yield ids
            if len(ids) < chunk:
                return
            start += chunk

    def oldest(self, count: int) -> list[DeadEntry]:
        ids = [raw.decode("utf-8", "replace") for raw in self.client.zrange(self.failed_key, 0, count - 1)]
        return sorted(self._read(ids), key=_age_order) if ids else []

    def entries(self, filters: Filters | None = None) -> Iterator[DeadEntry]:
        """The failed jobs (matching ``filters``), oldest first, a chunk at a time."""
        self.check_types()
        now = self.clock()
        for ids in self._ids():
            for entry in sorted(self._read(ids), key=_age_order):  # scores tie (RQ's are whole seconds)
                if filters is None or filters.matches(entry, now):
                    yield entry

    def sample(self, samples: int = 10) -> ScanSummary:
        self.check_types()

        def run(offset: int, count: int) -> list[DeadEntry]:
            ids = [raw.decode("utf-8", "replace") for raw in self.client.zrange(self.failed_key, offset,
                                                                                 offset + count - 1)]
            return sorted(self._read(ids), key=_age_order) if ids else []

        return ScanSummary.of_sample(self.dead_count(), run, samples)

    def scan(self, filters: Filters, samples: int = 10) -> ScanSummary:
        summary = ScanSummary(total=self.dead_count())
        for entry in self.entries():
            summary.scanned += 1
            if filters.matches(entry, self.clock()):
                summary.count(entry, samples)
        summary._bound()
        return summary

    # -- the task ---------------------------------------------------------------------------

    def task(self) -> Task | None:
        data = self.client.hgetall(self.task_key)
        return Task.from_hash(data) if data else None

    def lease_holder(self) -> Holder | None:
        return self.lease.holder()

    def start_requeue(self, filters: Filters, *, limit: int | None, rate: float | None, matching: int,
                      requested_by: str, task_id: str | None = None) -> Task:
        """Select the matching failures (oldest first, up to ``limit``) into the task's pending list."""
        current = self.task()
        if current and current.unfinished:
            raise CommandError(f"an unfinished requeue of {self.name!r} exists ({current.id}); resume it first")
        self.check_types()
        now = self.clock()
        staging = f"{self.pending_key}:staging"
        self.client.delete(staging)
        head = self._head(filters, limit)
        selected = head["left"] if head else self._select(staging, filters, limit, now)
        task_id = task_id or secrets.token_hex(6)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.task_key, self.pending_key, self.journal_key)
        if selected and not head:
            pipe.rename(staging, self.pending_key)
        pipe.hset(self.task_key, mapping={
            "id": task_id, "status": "running", "filters": json.dumps(filters.to_dict()),
            "limit": -1 if limit is None else limit, "rate": rate or 0, "total": selected, "matching": matching,
            "scanned": 0, "moved": 0, "started_at": now, "updated_at": now, "requested_by": requested_by,
            **(head or {})})
        pipe.execute()
        return self.task()

    def _head(self, filters: Filters, limit: int | None) -> dict[str, Any] | None:
        """None, or (a backend whose task moves the failed set's oldest jobs instead of a selection) the task
        hash's fields saying which: ``left`` (how many), ``head`` (up to which score); nothing is staged."""
        return None

    def _select(self, staging: str, filters: Filters, limit: int | None, now: float) -> int:
        """Append ``[id, fingerprint]`` rows of the matching failures, oldest first, up to ``limit``, to the
        list ``staging``; returns how many."""
        selected = 0
        for ids in self._ids():
            fingerprints = self._fingerprints(ids)
            # Without a filter, the jobs themselves need not be read: every id in the failed set matches.
            read = self._read(ids) if not filters.empty else [None] * len(ids)
            rows = [json.dumps([job_id, fp]) for job_id, entry, fp in zip(ids, read, fingerprints)
                    if fp is not None and (entry is None or filters.matches(entry, now))]
            rows = rows[: None if limit is None else limit - selected]
            if rows:
                self.client.rpush(staging, *rows)
            selected += len(rows)
            if limit is not None and selected >= limit:
                break
        return selected

    def run_requeue(self, task_id: str, *, owner: str,
                    progress: Callable[[Task, float], None] = lambda task, rate: None, batch: int = 1000,
                    lease_ttl: float = 15.0, should_stop: Callable[[], bool] = lambda: False,
                    before: Callable[[], Any] = lambda: None) -> RequeueReport:
        """Drive the task to its end (or resume it); safe to kill at any instant and run again."""
        outcome, seconds, first_moved = drive_requeue(
            self, task_id, owner=owner, progress=progress, batch=batch, lease_ttl=lease_ttl, should_stop=should_stop,
            before=before, step=self._batch, finish=lambda token: self._finish(),
            finished=self._finished)
        return RequeueReport(self.task(), outcome, seconds, first_moved)

    def _finished(self) -> bool:
        """Nothing left to do: no pending row, no batch a crash left unfinished."""
        return not self.client.exists(self.pending_key, *self._in_flight())

    def _batch(self, token: str, step: int) -> int:
        journal = {k.decode(): v.decode() for k, v in self.client.hgetall(self.journal_key).items()}
        size = int(journal.pop("\x00n", step))  # a crashed batch is finished with its own size
        rows = [json.loads(raw) for raw in self.client.lrange(self.pending_key, 0, size - 1)]
        ids = [job_id for job_id, _ in rows]
        now_fp = self._fingerprints(ids) if ids else []
        todo, already = [], 0
        for (job_id, selected_fp), current in zip(rows, now_fp):
            if current == selected_fp:
                todo.append(job_id)            # still the failure that was selected: never requeued
            elif job_id in journal and current is None and self._recover(job_id, selected_fp):
                todo.append(job_id)            # a crash left it half-way: put back, requeue again
            elif job_id in journal:
                already += 1                   # requeued by the crashed run: count it, never again
        if todo:
            self.client.hset(self.journal_key, mapping={"\x00n": len(rows),
                                                        **{job_id: "1" for job_id in todo}})
        moved = self._requeue(todo) if todo else set()
        return int(self._commit(keys=[self.task_key, self.pending_key, self.journal_key, self.lease_key],
                                args=[token, len(rows), len(moved) + already, len(rows), self.clock()]))

    def _finish(self) -> str:
        status = self.client.hget(self.task_key, "status").decode()
        final = "cancelled" if status == "cancelling" else "done"
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.task_key, mapping={"status": final, "updated_at": self.clock()})
        pipe.delete(self.pending_key)
        pipe.execute()
        return final

    def cancel(self) -> Task | None:
        """Ask a running requeue to stop after its batch; an interrupted one is closed now: the batch a crash
        left journaled is completed first (it was confirmed and may be half requeued), the rest stay failed."""
        task = self.task()
        if task is None or not task.unfinished:
            return None
        self.client.hset(self.task_key, "status", "cancelling")
        try:
            token = self.lease.take("requeue", task.id, owner="cancel", ttl=self.settings.lease_ttl)
        except LeaseBusy:
            return self.task()
        try:
            if self.client.exists(*self._in_flight()):
                self._batch(token, 1)
            self._finish()
        finally:
            self.lease.release(token)
        return self.task()
