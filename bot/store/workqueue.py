"""A reliable Redis work queue between the ack and the work.

Usage::

    queue = WorkQueue(redis_client, "opsbot:")
    queue.push("command", body)                   # in the ack path: durable before Slack hears "ok"
    job = queue.take("host:123", timeout=1)       # in a worker: moved to that worker's processing list
    ...
    queue.done("host:123", job)

Pushes from concurrent threads go to Redis together, one LPUSH for all that gathered while the
previous one was in flight (:class:`bot.store.groupcommit.GroupCommit`); each ``push`` still returns
only when its own document is in Redis, and raises when that LPUSH failed. When an LPUSH fails (a
Redis that went quiet: its socket timeout), the pushes gathered behind it raise a ConnectionError
("not sent") at once rather than sending into the same silence: each push waits out one timeout at
most, as the ack client's timeout promises.

A job stays in its worker's processing list until it is done. A worker that
dies (its heartbeat key expires) leaves its jobs there; :meth:`recover`, run by
every live worker, moves them back to the queue. Nothing acked is lost.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

from redis.exceptions import ConnectionError as RedisConnectionError

from bot.store.groupcommit import GroupCommit, NotSent

if TYPE_CHECKING:
    import redis

__all__ = ["Job", "WorkQueue"]


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    body: dict[str, Any]
    enqueued_at: float
    raw: bytes


class WorkQueue:
    def __init__(self, client: redis.Redis, prefix: str = "opsbot:"):
        self.client = client
        self.prefix = prefix
        self.queue = f"{prefix}work:queue"
        # LPUSH q a b c leaves c nearest the head: taken from the tail, a still goes first.
        self._pushes: GroupCommit[str] = GroupCommit(lambda documents: client.lpush(self.queue, *documents))

    def _processing(self, owner: str) -> str:
        return f"{self.prefix}work:processing:{owner}"

    def _alive(self, owner: str) -> str:
        return f"{self.prefix}work:alive:{owner}"

    def push(self, kind: str, body: dict[str, Any]) -> None:
        document = {"id": secrets.token_hex(8), "kind": kind, "body": body, "at": time.time()}
        try:
            self._pushes.submit(json.dumps(document))
        except NotSent as exc:  # never sent, so surely not queued: a RedisError like any push that failed
            raise RedisConnectionError(str(exc)) from exc.__cause__

    def take(self, owner: str, timeout: float) -> Job | None:
        raw = self.client.blmove(self.queue, self._processing(owner), timeout, "RIGHT", "LEFT")
        if raw is None:
            return None
        document = json.loads(raw)
        return Job(document["id"], document["kind"], document["body"], document["at"], raw)

    def done(self, owner: str, job: Job) -> None:
        self.client.lrem(self._processing(owner), 1, job.raw)

    def beat(self, owner: str, ttl: int) -> None:
        """Say this worker is alive for ``ttl`` seconds."""
        self.client.set(self._alive(owner), 1, ex=ttl)

    def leave(self, owner: str) -> None:
        """A clean exit: hand back anything unfinished and stop being alive."""
        self._requeue(self._processing(owner))
        self.client.delete(self._alive(owner))

    def recover(self) -> int:
        """Move the jobs of workers that stopped beating back to the queue; returns how many."""
        moved = 0
        for key in self.client.scan_iter(match=self._processing("*"), count=100):
            owner = key.decode().removeprefix(self._processing(""))
            if not self.client.exists(self._alive(owner)):
                moved += self._requeue(key)
        return moved

    def _requeue(self, key: str | bytes) -> int:
        moved = 0
        # Newest first onto the consuming end, so the oldest unfinished job is taken next.
        while self.client.lmove(key, self.queue, "LEFT", "RIGHT") is not None:
            moved += 1
        return moved

    def depth(self) -> int:
        return self.client.llen(self.queue)
