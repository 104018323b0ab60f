"""The ``redis-list`` dead-letter backend: ``jobs`` / ``jobs:dead`` lists (docs/conventions.md).

Usage::

    queue = RedisListQueue(find_queue(settings, "jobs"), redis_client, prefix="opsbot:")
    queue.depth()                                   # Depth(ready=3, dead=1200, oldest=..., held=0)
    summary = queue.scan(Filters(type="send_email"), samples=5)
    task = queue.start_requeue(Filters(), limit=None, requested_by="U1")
    report = queue.run_requeue(task.id, owner="host:pid", progress=print)

On a Redis Cluster (a ``redis.RedisCluster`` client) the queue's lists must share a hash tag
and opsbot's own keys for it carry that tag (:mod:`commands.dlq.keys`); a queue whose lists
hash to different slots is refused when it is opened.

Producers ``LPUSH`` onto the ready list and workers take from the right; dead letters
are ``LPUSH``ed onto the dead list, so its oldest entry is at the right end. Moves happen
a bounded batch per call, each atomic: in Lua scripts (:mod:`commands.dlq.lua`), or, for a
filter with a byte pre-check (``--type``, ``--error``, ``--id``), decided in the bot and written
in one MULTI/EXEC (:mod:`commands.dlq.listmove`), falling back to the script. A filtered scan
is shared the same way (:mod:`commands.dlq.listscan`). The task state (status, filter,
counters) lives in Redis next to the lists it describes.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TYPE_CHECKING

from commands.dlq.keys import QueueKeys
from commands.dlq.settings import QueueSettings
from bot.core.invocation import CommandError
from commands.dlq import listmove, lua
from commands.dlq.backend import (CANCEL, RATE, READY_DEPTH, REPLAY, REQUEUE, RESUME, TRIM, Capabilities, Depth,
                                  Refusing, ScanSummary, spread)
from commands.dlq.clientfilter import LuaFilter
from commands.dlq.driver import drive_requeue
from commands.dlq.entries import DeadEntry, Filters
from commands.dlq.lease import Holder, LeaseBusy, QueueLease
from commands.dlq.listmove import ListMover
from commands.dlq.listscan import GROUP_KEY_CHARS, fold_reply, split_scan
from commands.dlq.trimmer import QueueTrim, TrimReport, TrimTask

if TYPE_CHECKING:
    import redis

__all__ = ["RedisListQueue", "Depth", "ScanSummary", "Task", "RequeueReport"]

SCAN_CHUNK = 1000
MERGE_CHUNK = 10000  # held entries put back per call (a few ms of Redis's time)


@dataclass(frozen=True)
class Task:
    id: str
    status: str
    filters: Filters
    limit: int | None
    rate: float | None
    total: int
    matching: int
    scanned: int
    moved: int
    started_at: float
    updated_at: float
    requested_by: str

    @classmethod
    def from_hash(cls, data: dict[bytes, bytes]) -> "Task":
        get = {k.decode(): v.decode("utf-8", "replace") for k, v in data.items()}  # a head id may be any bytes
        limit = int(get["limit"])
        return cls(
            id=get["id"], status=get["status"], filters=Filters.from_dict(json.loads(get["filters"])),
            limit=None if limit < 0 else limit, rate=float(get["rate"]) or None, total=int(get["total"]),
            matching=int(get["matching"]), scanned=int(get["scanned"]), moved=int(get["moved"]),
            started_at=float(get["started_at"]), updated_at=float(get.get("updated_at") or get["started_at"]),
            requested_by=get.get("requested_by", ""),
        )

    @property
    def unfinished(self) -> bool:
        return self.status in ("running", "cancelling")

    @property
    def target(self) -> int:
        return min(self.matching, self.limit) if self.limit is not None else self.matching


@dataclass(frozen=True)
class RequeueReport:
    task: Task
    outcome: str  # done | cancelled | interrupted | lost
    seconds: float
    moved_before: int = 0  # moved by earlier, interrupted runs of the same task


class RedisListQueue(Refusing):
    """A :class:`~commands.dlq.backend.DeadLetterBackend`: everything but replaying entries one by one."""

    backend: ClassVar[str] = "redis-list"
    capabilities: ClassVar[Capabilities] = Capabilities(
        frozenset({REQUEUE, RESUME, TRIM, CANCEL, READY_DEPTH, RATE}),
        {REPLAY: "queue {queue!r} moves dead letters back to its ready list inside Redis (redis-list backend); "
                 "it does not replay them one by one"})

    @classmethod
    def open(cls, settings: QueueSettings, targets: Any, app: Any) -> "RedisListQueue":
        """The factory's constructor: the queue's Redis from ``targets``, the key prefix from the app's settings."""
        return cls(settings, targets.redis(settings.redis), app.state.prefix)

    def __init__(self, settings: QueueSettings, client: redis.Redis, prefix: str = "opsbot:",
                 clock: Callable[[], float] = time.time):
        from redis.cluster import RedisCluster

        self.settings = settings
        self.client = client
        self.prefix = prefix
        self.clock = clock
        self.name = settings.name
        self.keys = QueueKeys.of(settings, prefix, cluster=isinstance(client, RedisCluster))  # refuses split slots
        self.task_key, self.lease_key, self.trim_key = self.keys.task, self.keys.lease, self.keys.trim
        self._scan = client.register_script(lua.SCAN)
        self._batch = client.register_script(lua.REQUEUE_BATCH)
        self._restore = client.register_script(lua.RESTORE)
        self._merge = client.register_script(lua.MERGE)
        self.lease = QueueLease(client, self.lease_key, self.name)
        # A requeue batch decided here needs WATCH/MULTI on a connection of its own: not on a cluster client.
        self.moves_here = listmove.available(client)
        self._decider: tuple[str, LuaFilter] | None = None

    def held_key(self, task_id: str) -> str:
        return self.keys.held(task_id)

    # -- describing -----------------------------------------------------------------------

    def where(self) -> str:
        return self.settings.dead

    def destination(self) -> str:
        return f"`{self.settings.dead}` → `{self.settings.ready}`"

    def locations(self) -> dict[str, str]:
        return {"ready_key": self.settings.ready, "dead_key": self.settings.dead}

    def probe(self) -> str:
        from bot.runtime.redisconn import key_slot

        from redis.cluster import RedisCluster

        parts = []
        for role, key in (("ready", self.settings.ready), ("dead", self.settings.dead)):
            kind = self.client.type(key).decode()
            if kind not in ("list", "none"):
                raise CommandError(f"{role} key {key!r} is a Redis {kind}, expected a list")
            parts.append(f"{role} {key!r}: {self.client.llen(key) if kind == 'list' else 0}")
        if isinstance(self.client, RedisCluster):  # opening the queue checked the names share one slot
            node = self.client.get_node_from_key(self.settings.dead)
            parts.append(f"cluster slot {key_slot(self.settings.dead)} on {node.host}:{node.port}")
        return "ok, " + ", ".join(parts)

    # -- reading ------------------------------------------------------------------------

    def check_types(self) -> None:
        for role, key in (("ready", self.settings.ready), ("dead", self.settings.dead)):
            kind = self.client.type(key).decode()
            if kind not in ("list", "none"):
                raise CommandError(f"{role} key {key!r} of queue {self.name!r} is a Redis {kind}, not a list")

    def depth(self) -> Depth:
        self.check_types()
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(self.settings.ready).llen(self.settings.dead).lindex(self.settings.dead, -1)
        ready, dead, oldest_raw = pipe.execute()
        oldest = DeadEntry.parse(oldest_raw, self.settings.fields).failed_at if oldest_raw is not None else None
        task = self.task()
        held = self.client.llen(self.held_key(task.id)) if task and task.unfinished else 0
        return Depth(ready, dead, oldest, held)

    def dead_count(self) -> int:
        return self.client.llen(self.settings.dead)

    def oldest(self, count: int) -> list[DeadEntry]:
        return [DeadEntry.parse(raw, self.settings.fields)
                for raw in reversed(self.client.lrange(self.settings.dead, -count, -1))]

    def entries(self, filters: Filters | None = None, chunk: int = SCAN_CHUNK) -> Iterator[DeadEntry]:
        """The dead list's entries (matching ``filters``), oldest first, read a chunk at a time."""
        self.check_types()
        now = self.clock()
        offset = 0
        while True:
            raw = self.client.lrange(self.settings.dead, -(offset + chunk), -(offset + 1))
            for item in reversed(raw):
                entry = DeadEntry.parse(item, self.settings.fields)
                if filters is None or filters.matches(entry, now):
                    yield entry
            if len(raw) < chunk:
                return
            offset += chunk

    def scan(self, filters: Filters, samples: int = 10, now: float | None = None,
             chunk: int = SCAN_CHUNK) -> ScanSummary:
        """Count and group the matching dead entries, oldest first, a chunk per call."""
        self.check_types()
        lua_filter = filters.to_lua(now or self.clock(), self.settings.fields)
        summary = ScanSummary(total=self.client.llen(self.settings.dead))
        here = LuaFilter.of(lua_filter)
        if here.cheap and listmove.reads_fast():  # read with LRANGE and counted here, Redis counting part of it
            return split_scan(self.client, self.settings.dead, lua_filter, here, summary, chunk=chunk,
                              samples=samples, fields=self.settings.fields)
        offset = 0
        while offset < summary.total:
            scanned = self._scan_run(summary, lua_filter, offset, chunk, samples)
            if scanned == 0:
                break
            offset += scanned
        return summary

    def sample(self, samples: int = 10) -> ScanSummary:
        """The dead list's length, and the groups of at most SAMPLE_ENTRIES entries spread along it."""
        self.check_types()
        lua_filter = Filters().to_lua(self.clock(), self.settings.fields)
        summary = ScanSummary(total=self.client.llen(self.settings.dead))
        for offset, count in spread(summary.total):
            self._scan_run(summary, lua_filter, offset, count, samples)
        return summary.counting_all()

    def _scan_run(self, summary: ScanSummary, lua_filter: str, offset: int, count: int, samples: int) -> int:
        """Fold the ``count`` entries ``offset`` from the oldest end into ``summary``; how many there were."""
        reply = self._scan(keys=[self.settings.dead], args=[lua_filter, offset, count, samples, GROUP_KEY_CHARS])
        return fold_reply(summary, reply, samples, self.settings.fields)

    def task(self) -> Task | None:
        data = self.client.hgetall(self.task_key)
        return Task.from_hash(data) if data else None

    def trim_task(self) -> TrimTask | None:
        return QueueTrim(self, self.clock).task()

    def lease_holder(self) -> Holder | None:
        return self.lease.holder()

    # -- requeue ------------------------------------------------------------------------

    def start_requeue(self, filters: Filters, *, limit: int | None, rate: float | None, matching: int,
                      requested_by: str, task_id: str | None = None) -> Task:
        """Record a new requeue task bounded by the dead list's length now (later dead letters are not taken)."""
        current = self.task()
        if current and current.unfinished:
            raise CommandError(f"an unfinished requeue of {self.name!r} exists ({current.id}); resume it first")
        now = self.clock()
        task_id = task_id or secrets.token_hex(6)
        total = self.client.llen(self.settings.dead)
        self.client.delete(self.task_key)
        self.client.hset(self.task_key, mapping={
            "id": task_id, "status": "running", "filters": json.dumps(filters.to_dict()),
            "filter_lua": filters.to_lua(now, self.settings.fields), "limit": -1 if limit is None else limit, "rate": rate or 0,
            "total": total, "matching": matching, "scanned": 0, "moved": 0, "started_at": now, "updated_at": now,
            "requested_by": requested_by, "held_order": "newest-first",
        })
        return self.task()

    def run_requeue(
        self,
        task_id: str,
        *,
        owner: str,
        progress: Callable[[Task, float], None] = lambda task, rate: None,
        batch: int = 1000,
        lease_ttl: float = 15.0,
        should_stop: Callable[[], bool] = lambda: False,
        before: Callable[[], Any] = lambda: None,
    ) -> RequeueReport:
        """Drive the task to its end (or resume it); safe to kill at any instant and run again.

        ``before()`` runs once the queue's lease is held, before the task is read: it may
        record the task (``start_requeue``), so that nothing is recorded while a trim runs."""
        keys = [self.settings.dead, self.settings.ready, self.held_key(task_id), self.task_key, self.lease_key]

        here: list[bool] = []  # whether batches are decided here: asked at the first (the task exists by then)
        mover = ListMover(self.client, keys, decider=self._lua_filter, clock=self.clock)

        def step(token: str, size: int) -> int:
            if not here:
                text = self.client.hget(self.task_key, "filter_lua")
                here.append(self.moves_here and text is not None and LuaFilter.of(text.decode()).cheap)
            if here[0]:  # decided here, written with MULTI/EXEC; None: the Lua batch's turn
                state = mover.step(token, size)
                if state is not None:
                    return state
            return self._batch(keys=keys, args=[size, token, self.clock()])[2]

        with mover:
            outcome, seconds, first_moved = drive_requeue(
                self, task_id, owner=owner, progress=progress, batch=batch, lease_ttl=lease_ttl,
                should_stop=should_stop, before=before, step=step, finish=lambda token: self._finish(task_id))
        return RequeueReport(self.task(), outcome, seconds, first_moved)

    def _lua_filter(self, text: str) -> LuaFilter:
        if self._decider is None or self._decider[0] != text:
            self._decider = (text, LuaFilter.of(text))
        return self._decider[1]

    def _finish(self, task_id: str) -> str:
        """Put the held entries back in order and close the task; returns done or cancelled."""
        keys = [self.held_key(task_id), self.settings.dead]
        if self.client.hget(self.task_key, "held_order") == b"newest-first":
            while self._merge(keys=keys, args=[MERGE_CHUNK]):
                pass
        else:  # a task an earlier version started
            while self._restore(keys=keys, args=[SCAN_CHUNK]):
                pass
        status = self.client.hget(self.task_key, "status").decode()
        final = "cancelled" if status == "cancelling" else "done"
        self.client.hset(self.task_key, mapping={"status": final, "updated_at": self.clock()})
        return final

    def cancel(self) -> Task | None:
        """Ask a running requeue to stop after its current batch; an interrupted one is closed now."""
        task = self.task()
        if task is None or not task.unfinished:
            return None
        self.client.hset(self.task_key, "status", "cancelling")
        try:  # nobody is driving it: put things back ourselves
            token = self.lease.take("requeue", task.id, owner="cancel", ttl=self.settings.lease_ttl)
        except LeaseBusy:
            return self.task()  # its driver sees `cancelling` after its current batch
        try:
            self._finish(task.id)
        finally:
            self.lease.release(token)
        return self.task()

    # -- trim (commands.dlq.trimmer) -----------------------------------------------------

    def run_trim(self, *, keep: int, archive: Callable[[str, int, list[bytes]], None], batch: int = 500,
                 should_stop: Callable[[], bool] = lambda: False, **options: Any) -> TrimReport:
        """Start a trim keeping the newest ``keep`` (or resume/replace one: see QueueTrim.run)."""
        return QueueTrim(self, self.clock).run(keep=keep, archive=archive, batch=batch, should_stop=should_stop,
                                               **options)
