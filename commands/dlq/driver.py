"""The loop that drives a requeue task to its end, shared by every backend that keeps its task in Redis.

Usage (inside a backend's ``run_requeue``)::

    outcome, seconds, first_moved = drive_requeue(
        self, task_id, owner=owner, progress=progress, batch=batch, lease_ttl=lease_ttl, should_stop=should_stop,
        before=before, step=self._batch,           # (lease token, batch size) -> 0 more, 1 finished, 2 not ours
        finish=lambda token: self._finish(task_id))
    return RequeueReport(self.task(), outcome, seconds, first_moved)

The driver holds the queue's lease for the whole run (renewed every third of its TTL), runs
``before()`` under it, then calls ``step`` until the task is finished, stopped or no longer
ours; it reports progress at most every ``PROGRESS_EVERY`` seconds, keeps to the task's rate,
and lets ``finish`` close a task that ran to its end. What a step does (a Lua batch, a job
library's own requeue) is the backend's; how a run is driven is the same for all of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bot.core.invocation import CommandError

if TYPE_CHECKING:
    from commands.dlq.redis_list import Task

__all__ = ["PROGRESS_EVERY", "drive_requeue"]

PROGRESS_EVERY = 0.5  # seconds between progress reports of a running requeue


def drive_requeue(queue: Any, task_id: str, *, owner: str, progress: Callable[[Task, float], None], batch: int,
                  lease_ttl: float, should_stop: Callable[[], bool], before: Callable[[], Any],
                  step: Callable[[str, int], int], finish: Callable[[str], str],
                  lost: Callable[[], str] = lambda: "lost",
                  finished: Callable[[], bool] = lambda: False) -> tuple[str, float, int]:
    """Drive ``task_id`` to its end (or resume it); safe to kill at any instant and run again. Returns the
    outcome (done, cancelled, interrupted, lost), the seconds it ran and how many were moved before it.

    ``lost()`` names the outcome when a step finds the task is not ours any more; ``finished()``,
    asked once before the first step, says there is nothing left to do.
    """
    token = queue.lease.take("requeue", task_id, owner=owner, ttl=lease_ttl)
    try:
        before()
        task = queue.task()
        if task is None or task.id != task_id:
            raise CommandError(f"requeue task {task_id} of {queue.name!r} no longer exists")
    except BaseException:
        queue.lease.release(token)
        raise
    started = renewed = reported = queue.clock()
    first_moved = task.moved
    size = max(1, min(batch, int(task.rate))) if task.rate else batch
    outcome = "done"
    try:
        nothing_left = finished()
        while not nothing_left:
            if should_stop():
                outcome = "interrupted"
                break
            now = queue.clock()
            if now - renewed > lease_ttl / 3:
                if not queue.lease.renew(token, ttl=lease_ttl):
                    outcome = "lost"
                    break
                renewed = now
            state = step(token, size)
            if state == 2:
                outcome = lost()
                break
            now = queue.clock()
            if state == 1 or now - reported >= PROGRESS_EVERY:
                task = queue.task()
                progress(task, (task.moved - first_moved) / max(now - started, 1e-6))
                reported = now
            if state == 1:
                break
            if task.rate:
                moved_now = int(queue.client.hget(queue.task_key, "moved"))
                ahead = (moved_now - first_moved) / task.rate - (queue.clock() - started)
                if ahead > 0:
                    time.sleep(ahead)
        if outcome == "done":
            outcome = finish(token)
    finally:
        queue.lease.release(token)
    return outcome, queue.clock() - started, first_moved
