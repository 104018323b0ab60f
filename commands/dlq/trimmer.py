"""``dlq trim`` on a ``redis-list`` queue: drop all but the newest N dead letters, archiving first.

Usage::

    trim = QueueTrim(queue)                    # a RedisListQueue
    trim.task()                                # TrimTask(...) or None; `unfinished` when interrupted
    report = trim.run(archive=TrimArchive(...), keep=100, owner="host:pid", max_drop=5000)
    report = trim.run(archive=..., keep=100, resume=task_id)      # finish an interrupted trim
    report = trim.run(archive=..., keep=100, replaces=task_id)    # abandon it cleanly, trim anew

The invariant: an entry leaves Redis only if those exact bytes are durably archived. Each
chunk (``chunk`` entries, default ``batch``) is read from the oldest end and archived in one
PostgreSQL transaction (which first deletes this task's rows at or past Redis's ``dropped``
counter: those entries were never removed). While nobody else writes the dead list, a chunk
is read under WATCH of the list, streamed into its COPY as it is read, and removed unread
(TRIM_CUT inside MULTI, which also checks the lease and ``dropped``): EXEC fails if anything
wrote the list since the read. From the first such write on, chunks are removed ``batch`` at
a time, in order, by a compare-and-remove script that checks the lease token and every
entry's bytes, and raises ``dropped`` in the same atomic step. Redis is blocked for one batch,
one read of a chunk or one LTRIM of a chunk at most; PostgreSQL commits once per
chunk. In that mode, while a chunk is removed, the next one (read just behind it) is
archived in a worker thread; it is removed only after both are done, and its rows,
like any row at or past ``dropped``, are deleted if the removal before it stops short. A
changed oldest end is detected and the rest is read and archived again (bounded retries).
The trim holds the queue's lease, the same one a requeue takes, so the two never run at the
same time.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import redis

from bot.core.invocation import CommandError
from commands.dlq import lua
from commands.dlq.archive import Fenced
from commands.dlq.trimpieces import ShortRead, StreamedChunk, parts, proof, unchecked

__all__ = ["QueueTrim", "TrimTask", "TrimReport", "BATCH_BYTES"]

CHANGE_RETRIES = 5          # consecutive batches whose oldest end changed before giving up
BATCH_BYTES = 8 * 2 ** 20   # a chunk larger than this makes the next ones smaller (two are in flight)
PROGRESS_EVERY = 0.5
WARM_UP = 5_000             # a trim's first entries go one batch per chunk, at the pace of a small trim


@dataclass(frozen=True)
class TrimTask:
    id: str
    status: str  # running | done | abandoned
    keep: int
    to_drop: int
    dropped: int
    requested_by: str = ""
    started_at: float = 0.0

    @classmethod
    def from_hash(cls, data: dict[bytes, bytes]) -> "TrimTask":
        get = {k.decode(): v.decode() for k, v in data.items()}
        return cls(get["id"], get["status"], int(get.get("keep") or 0), int(get["to_drop"]), int(get["dropped"]),
                   get.get("requested_by", ""), float(get.get("started_at") or 0))

    @property
    def unfinished(self) -> bool:
        return self.status == "running"

    def remaining(self, dead: int) -> int:
        """What resuming would still drop: never past its size, never below its keep."""
        return max(min(self.to_drop - self.dropped, dead - self.keep), 0)


@dataclass(frozen=True)
class TrimReport:
    task_id: str
    dropped: int        # by the task, over all its runs
    to_drop: int
    outcome: str        # done | interrupted | changed | lost
    seconds: float
    dropped_now: int = 0
    retries: int = 0    # batches read and archived again because the oldest end changed
    abandoned: str | None = None
    watched: int = 0    # chunks removed unread, their list untouched since they were read (WATCH)
    fallback: bool = False  # the list was written under a watched chunk: the rest was compared byte for byte


class QueueTrim:
    # Reads are plain LRANGE replies on every server: framing them in Lua (one reply of two strings)
    # cost Redis more CPU than parsing the reply costs here.
    _framed = False
    # Read, archive and remove each chunk under WATCH of the dead list while nobody writes it (see
    # _cut_watched); a subclass whose dead letters are not that list turns it off.
    optimistic = True

    def __init__(self, queue: Any, clock: Callable[[], float] = time.time):
        self.queue = queue
        self.client = queue.client
        self.dead = queue.settings.dead
        self.key = queue.trim_key
        self.lease = queue.lease
        self.clock = clock
        self._pop = self.client.register_script(lua.TRIM_POP)
        self._cut = self.client.register_script(lua.TRIM_CUT)
        self._status = self.client.register_script(lua.TRIM_STATUS)

    def task(self) -> TrimTask | None:
        data = self.client.hgetall(self.key)
        return TrimTask.from_hash(data) if data else None

    def run(self, *, archive: Callable[[str, int, list[bytes]], None], keep: int, owner: str = "",
            resume: str | None = None, replaces: str | None = None, max_drop: int | None = None,
            batch: int = 500, chunk: int | None = None, lease_ttl: float = 15.0, requested_by: str = "",
            should_stop: Callable[[], bool] = lambda: False,
            progress: Callable[[TrimTask, float], None] = lambda task, rate: None) -> TrimReport:
        """Run (or resume, or replace) a trim to its end; safe to kill at any instant and run again.

        ``archive(task_id, first_ordinal, entries)`` must commit durably or raise; it is called with
        up to ``chunk`` entries (default ``batch``), removed from Redis ``batch`` at a time. The first
        chunks are one batch (for WARM_UP entries); then each is a batch larger, up to ``chunk``, while
        under BATCH_BYTES. When it also has ``begin(task_id)`` and ``settle(task_id, dropped)``
        (:class:`~commands.dlq.archive.TrimArchive`), the run is fenced against stale trimmers and
        leaves no row of an entry still in Redis."""
        self.queue.check_types()
        started = self.clock()
        task_id = resume or secrets.token_hex(6)
        token = self.lease.take("trim", task_id, owner=owner, ttl=lease_ttl)
        abandoned = None
        try:
            task = self._task_for(token, task_id, keep, resume, replaces, max_drop, requested_by)
            if replaces and task.id == replaces:
                abandoned = replaces if self._abandon(token, replaces, archive) else None
                task = self._create(token, task_id, keep, max_drop, requested_by)
            report = self._drive(token, task, archive, batch, max(chunk or batch, batch), lease_ttl, should_stop,
                                 progress, started)
        finally:
            self.lease.release(token)
        return TrimReport(**{**report.__dict__, "abandoned": abandoned})

    # -- steps ------------------------------------------------------------------------------

    def _task_for(self, token: str, task_id: str, keep: int, resume: str | None, replaces: str | None,
                  max_drop: int | None, requested_by: str) -> TrimTask:
        requeue = self.queue.task()
        if requeue is not None and requeue.unfinished:  # its held entries are older than any dead one
            raise CommandError(f"an interrupted requeue of {self.queue.name!r} ({requeue.id}) has dead letters set "
                               "aside; finish it (`dlq requeue`) or cancel it (`dlq cancel`) before trimming")
        current = self.task()
        if current is not None and current.unfinished:
            if current.id == resume:
                if max_drop is not None and current.to_drop > current.dropped + max_drop:
                    self.client.hset(self.key, "to_drop", current.dropped + max_drop)  # as previewed
                    return self.task()
                return current
            if current.id == replaces:
                return current  # abandoned by the caller, under the lease
            raise CommandError(f"an interrupted trim of {self.queue.name!r} ({current.id}: {current.dropped}/"
                               f"{current.to_drop} dropped, keep {current.keep}) was not in the confirmed plan; "
                               "run `dlq trim` again for a preview that shows it")
        if resume:
            raise CommandError(f"the interrupted trim {resume} of {self.queue.name!r} is no longer pending "
                               "(finished or replaced meanwhile); run `dlq trim` again")
        return self._create(token, task_id, keep, max_drop, requested_by)

    def _create(self, token: str, task_id: str, keep: int, max_drop: int | None, requested_by: str) -> TrimTask:
        to_drop = max(self._size() - keep, 0)
        if max_drop is not None:
            to_drop = min(to_drop, max_drop)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self.key)
        pipe.hset(self.key, mapping={"id": task_id, "status": "running", "keep": keep, "to_drop": to_drop,
                                     "dropped": 0, "requested_by": requested_by, "started_at": self.clock()})
        pipe.execute()
        return self.task()

    # -- the dead list; a backend keeping dead letters elsewhere overrides these three ------

    def _size(self) -> int:
        return self.client.llen(self.dead)

    def _oldest(self, n: int, skip: int = 0) -> list[bytes]:
        """The ``n`` oldest entries after the ``skip`` oldest, oldest first (fewer if the list is shorter)."""
        return self.client.lrange(self.dead, -(n + skip), -(skip + 1))[::-1]

    def _remove(self, token: str, task_id: str, oldest_first: list[bytes], ordinal: int) -> int:
        """1 removed (``dropped`` was ``ordinal`` and grew by their number), 0 the oldest end changed, -1 not ours."""
        return self._pop(keys=[self.dead, self.key, self.lease.key], args=self._pop_args(oldest_first, token, task_id,
                                                                                          ordinal))

    @staticmethod
    def _pop_args(oldest_first: list[bytes], token: str, task_id: str, ordinal: int) -> list:
        lengths, joined = proof(oldest_first)
        return [len(oldest_first), lengths, token, task_id, ordinal, joined]

    def _abandon(self, token: str, task_id: str, archive: Any) -> bool:
        """Close an interrupted task: rows of entries it never removed are deleted first."""
        if hasattr(archive, "begin"):
            archive.begin(task_id)
            archive.settle(task_id, int(self.client.hget(self.key, "dropped") or 0))
            archive.finish(task_id, "abandoned")
        return bool(self._status(keys=[self.key, self.lease.key], args=[token, task_id, "abandoned"]))

    def _cut_watched(self, token: str, task_id: str, n: int, first: int,
                     archive: Callable[[str, int, list[bytes]], None]) -> tuple[int | None, list[bytes]]:
        """Read the ``n`` oldest under WATCH of the dead list, archive them as ordinals ``first``.., then
        remove them unread (TRIM_CUT in MULTI) unless someone wrote the list since the WATCH.

        Returns (1, entries) archived and removed; (None, entries) archived, not removed: the list
        was written meanwhile (a producer's push is enough), so they must be compared; (0, []) the
        list is shorter than ``n``, ``dropped`` moved or the connection died mid-read (redis-py's
        WatchError; nothing archived, read again); (-1, ...) not ours."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.watch(self.dead)
            with unchecked(pipe.connection):
                chunk = StreamedChunk(pipe, self.dead, n)
                try:
                    archive(task_id, first, chunk)
                except (ShortRead, redis.WatchError):  # the COPY rolled back: nothing archived
                    return 0, []
                if not chunk.complete:  # an archive that read them otherwise, or not all (never TrimArchive)
                    return 0, []
                entries = chunk.entries
                pipe.multi()
                self._cut(keys=[self.dead, self.key, self.lease.key], args=[n, token, task_id, first], client=pipe)
                try:
                    (removed,) = pipe.execute()
                except redis.WatchError:
                    return None, entries
        return removed, entries

    def _remove_chunk(self, token: str, task_id: str, oldest_first: list[bytes], first: int, batch: int,
                      renew: Callable[[], bool]) -> int:
        """Remove an archived chunk (ordinals ``first``..) ``batch`` at a time, oldest first: 1 all of
        it, 0 the oldest end changed (the batches before it were removed), -1 not ours."""
        if not renew():
            return -1
        return self._remove_parts(token, task_id, parts(oldest_first, batch), first)

    def _remove_parts(self, token: str, task_id: str, parts: list[list[bytes]], first: int) -> int:
        """The first part on its own (which loads the script if needed), the others in one round trip:
        each is removed only if ``dropped`` is still its first ordinal, i.e. every part before it was."""
        if isinstance(self.client, redis.RedisCluster):  # a cluster pipeline runs no scripts
            return self._remove_each(token, task_id, parts, first)
        removed = self._remove(token, task_id, parts[0], first)
        if removed != 1 or len(parts) == 1:
            return removed
        pipe = self.client.pipeline(transaction=False)
        ordinal = first + len(parts[0])
        for part in parts[1:]:
            pipe.evalsha(self._pop.sha, 3, self.dead, self.key, self.lease.key,
                         *self._pop_args(part, token, task_id, ordinal))
            ordinal += len(part)
        for result in pipe.execute(raise_on_error=False):
            if result != 1:
                return result if result == -1 else 0  # 0 also when Redis lost the script meanwhile
        return 1

    def _remove_each(self, token: str, task_id: str, parts: list[list[bytes]], first: int) -> int:
        """One part at a time (a cluster, or a backend whose compare-and-remove does not check ``dropped``)."""
        for part in parts:
            removed = self._remove(token, task_id, part, first)
            if removed != 1:
                return removed
            first += len(part)
        return 1

    def _drive(self, token: str, task: TrimTask, archive: Any, batch: int, chunk: int, lease_ttl: float,
               should_stop: Callable[[], bool], progress: Callable[[TrimTask, float], None],
               started: float) -> TrimReport:
        fenced = hasattr(archive, "begin")
        first_dropped = task.dropped
        if fenced:
            archive.begin(task.id, keep=task.keep, to_drop=task.to_drop)
            archive.settle(task.id, int(self.client.hget(self.key, "dropped")))
        outcome, changes, retries, size = "done", 0, 0, batch
        optimistic = self.optimistic and not isinstance(self.client, redis.RedisCluster)
        watched, fallback = 0, False
        renewed = reported = self.clock()
        dropped = task.dropped

        def renew() -> bool:
            nonlocal renewed
            if self.clock() - renewed > lease_ttl / 3:
                if not self.lease.renew(token, ttl=lease_ttl):
                    return False
                renewed = self.clock()
            return True

        ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trim-archive")
        current: list[bytes] = []  # read and archived as ordinals `first`.., not removed yet
        following: list[bytes] = []  # read just behind the chunk being archived, not archived yet
        first = -1

        def size_after(start: int, entries: list[bytes]) -> int:
            """How many to read next, behind ``entries`` (ordinals ``start``..)."""
            n = len(entries)
            fits = n * BATCH_BYTES // max(sum(map(len, entries)), 1)  # huge entries: fewer, warming up too
            return max(1, min(batch if start + n - first_dropped < WARM_UP else min(chunk, n + batch), fits))

        try:
            while True:
                dropped = int(self.client.hget(self.key, "dropped"))
                left = min(task.to_drop - dropped, self._size() - task.keep)
                if first != dropped or len(current) > left:  # read and archive again (its rows get deleted)
                    current = []
                if not current or len(current) + len(following) > left:
                    following = []
                if not current:
                    n = min(size, left)
                    if n <= 0:
                        break
                    if should_stop():
                        outcome = "interrupted"
                        break
                    if not renew():
                        outcome = "lost"
                        break
                    if optimistic:  # one chunk at a time: read, archive, remove unless the list was written
                        removed, current = self._cut_watched(token, task.id, n, dropped, archive)
                        first = dropped
                        if removed is None:  # archived, not removed: from here on, compare (and overlap)
                            optimistic, fallback = False, True
                            continue
                        if removed == 1:
                            size = size_after(first, current)
                        current = []
                        if removed == -1:
                            outcome = "lost"
                            break
                        if removed == 0:  # shorter than it was (someone took entries): read again
                            changes = changes + 1
                            if changes > CHANGE_RETRIES:
                                outcome = "changed"
                                break
                            continue
                        changes, watched = 0, watched + 1
                        now = self.clock()
                        if now - reported >= PROGRESS_EVERY:
                            progress(self.task(), (dropped + n - first_dropped) / max(now - started, 1e-6))
                            reported = now
                        continue
                    current, first = self._oldest(n), dropped
                    if len(current) < n:  # the list shrank between LLEN and the read: read again
                        current = []
                        continue
                    archive(task.id, first, current)
                n = len(current)
                size = size_after(first, current)
                # The next chunk (just behind this one) is archived while this one is removed; it is
                # removed only once both are done, so nothing leaves Redis unarchived. It was read
                # during the previous chunk's archiving (or is read now); the one behind it is read
                # once this one is removed, while the archiving goes on.
                upcoming, archiving = [], None
                if min(size, left - n) > 0 and not should_stop():
                    upcoming = following or self._oldest(min(size, left - n), skip=n)
                    if len(upcoming) == min(size, left - n) or upcoming is following:
                        archiving = ahead.submit(archive, task.id, first + n, upcoming)
                following = []
                removed = self._remove_chunk(token, task.id, current, first, batch, renew)
                if archiving is not None:
                    if removed == 1 and not should_stop():
                        want = min(size_after(first + n, upcoming), left - n - len(upcoming))
                        if want > 0:
                            following = self._oldest(want, skip=len(upcoming))
                            following = following if len(following) == want else []
                    archiving.result()  # committed (or raised) before anything else happens
                current, first = (upcoming, first + n) if archiving is not None and removed == 1 else ([], -1)
                if removed == -1:
                    outcome = "lost"
                    break
                if removed == 0:  # someone else changed the oldest end: read and archive again
                    changes, retries = changes + 1, retries + 1
                    if changes > CHANGE_RETRIES:
                        outcome = "changed"
                        break
                    continue
                changes = 0
                now = self.clock()
                if now - reported >= PROGRESS_EVERY:
                    progress(self.task(), (dropped + n - first_dropped) / max(now - started, 1e-6))
                    reported = now
            dropped = int(self.client.hget(self.key, "dropped"))
            if fenced and outcome != "lost":  # rows of a chunk archived, never removed (its EXEC failed, then
                archive.settle(task.id, dropped)  # others emptied the list down to keep) go now
            if outcome == "done":
                if fenced:
                    archive.finish(task.id, "done")
                if not self._status(keys=[self.key, self.lease.key], args=[token, task.id, "done"]):
                    outcome = "lost"
        except Fenced:
            outcome = "lost"
        finally:
            ahead.shutdown(wait=True)
        return TrimReport(task.id, dropped, task.to_drop, outcome, self.clock() - started, dropped - first_dropped,
                          retries, watched=watched, fallback=fallback)
