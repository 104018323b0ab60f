"""Confirmed actions while they run: who runs them, how far they got, and whether their executor is alive.

Usage::

    executions = Executions(redis_client, "opsbot:")
    with executions.run(pending, owner="host:pid") as execution:   # a heartbeat beats while the block runs
        execution.progress("moved 500/2000")
        ...
        execution.finish("ok", "Requeued 2000 dead letters")
    executions.state(pending.id)          # Execution state: running (alive or not), done, or None
    executions.stale()                    # pending ids whose executor died mid-run

A claimed action whose process is killed (SIGKILL, a lost machine) leaves a
``running`` record whose heartbeat key expires. Whoever looks at it next (a
re-delivered click on another replica, or a worker's sweep) reports it as
*interrupted*, exactly once (:meth:`Executions.claim_report`), with the last
progress it recorded; nothing is run again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

__all__ = ["Execution", "ExecutionState", "Executions"]

KEEP = 86400  # how long an execution's record outlives it
PROGRESS_EVERY = 2.0


@dataclass(frozen=True)
class ExecutionState:
    pending_id: str
    state: str  # running | done
    alive: bool
    owner: str
    command: str
    text: str
    started: float
    progress: str = ""
    status: str = ""
    summary: str = ""
    context: str | None = None
    channel: str = ""

    @property
    def interrupted(self) -> bool:
        return self.state == "running" and not self.alive


class Execution:
    """One running action: records progress (throttled) and its end."""

    def __init__(self, store: Executions, pending_id: str):
        self.store = store
        self.pending_id = pending_id
        self._last = 0.0

    def progress(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last < PROGRESS_EVERY:
            return
        self._last = now
        try:
            self.store.client.hset(self.store.key(self.pending_id), "progress", text[:500])
        except redis.RedisError:
            pass  # progress is best effort; the action goes on

    def finish(self, status: str, summary: str) -> None:
        key = self.store.key(self.pending_id)
        pipe = self.store.client.pipeline()
        pipe.hset(key, mapping={"state": "done", "status": status, "summary": summary[:500]})
        pipe.delete(self.store.alive_key(self.pending_id))
        pipe.execute()


class Executions:
    """``timeout``: seconds without a heartbeat before an executor counts as dead (it beats every third of it)."""

    def __init__(self, client: redis.Redis, prefix: str = "opsbot:", timeout: float = 15.0):
        self.client = client
        self.prefix = prefix
        self.ttl_ms = max(int(timeout * 1000), 100)

    def key(self, pending_id: str) -> str:
        return f"{self.prefix}exec:{pending_id}"

    def alive_key(self, pending_id: str) -> str:
        return f"{self.prefix}exec-alive:{pending_id}"

    @contextmanager
    def run(self, pending, owner: str) -> Iterator[Execution]:
        """Record ``pending`` as running under ``owner`` and keep its heartbeat while the block runs."""
        pipe = self.client.pipeline()
        pipe.hset(self.key(pending.id), mapping={
            "state": "running", "owner": owner, "command": pending.command, "text": pending.text,
            "started": time.time(), "context": pending.context or "", "channel": pending.channel})
        pipe.expire(self.key(pending.id), KEEP)
        pipe.set(self.alive_key(pending.id), owner, px=self.ttl_ms)
        pipe.execute()
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.ttl_ms / 3000):
                try:
                    self.client.set(self.alive_key(pending.id), owner, px=self.ttl_ms)
                except redis.RedisError:
                    pass  # Redis is down: the action will find out on its own

        beater = threading.Thread(target=beat, name=f"opsbot-exec-{pending.id}", daemon=True)
        beater.start()
        try:
            yield Execution(self, pending.id)
        finally:
            stop.set()
            beater.join(1.0)

    def state(self, pending_id: str) -> ExecutionState | None:
        pipe = self.client.pipeline()
        pipe.hgetall(self.key(pending_id)).exists(self.alive_key(pending_id))
        data, alive = pipe.execute()
        if not data:
            return None
        get = {k.decode(): v.decode("utf-8", "replace") for k, v in data.items()}
        return ExecutionState(pending_id, get.get("state", "running"), bool(alive), get.get("owner", ""),
                              get.get("command", ""), get.get("text", ""), float(get.get("started") or 0),
                              get.get("progress", ""), get.get("status", ""), get.get("summary", ""),
                              get.get("context") or None, get.get("channel", ""))

    def claim_report(self, pending_id: str) -> bool:
        """True for exactly one caller: the one that reports this interrupted execution."""
        return bool(self.client.set(f"{self.prefix}exec-reported:{pending_id}", 1, nx=True, ex=KEEP))

    def stale(self, limit: int = 100) -> list[ExecutionState]:
        """Executions whose executor died mid-run (their heartbeat expired)."""
        found = []
        for key in self.client.scan_iter(match=f"{self.prefix}exec:*", count=200):
            pending_id = key.decode().removeprefix(f"{self.prefix}exec:")
            state = self.state(pending_id)
            if state is not None and state.interrupted:
                found.append(state)
                if len(found) >= limit:
                    break
        return found

    def close_interrupted(self, state: ExecutionState, summary: str) -> None:
        self.client.hset(self.key(state.pending_id), mapping={"state": "done", "status": "interrupted",
                                                              "summary": summary[:500]})
