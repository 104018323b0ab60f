"""Workers: take queued Slack deliveries and carry them out.

Usage::

    worker = Worker(runtime, threads=4).start()    # in-process (tests, socket mode)
    ...
    worker.stop(deadline=30)                      # finish running jobs, hand back the rest

``opsbot worker`` runs one as its own process; ``opsbot serve`` starts worker
processes beside the HTTP server at a lower CPU priority, so acks stay fast
when the machine is busy. Each worker beats a heartbeat in Redis and recovers
the jobs of workers whose heartbeat stopped.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from bot.runtime.factory import Runtime
from bot.runtime.hooks import KIND, run_webhook
from bot.slack.work import SlackWork
from bot.store.workqueue import WorkQueue

__all__ = ["Worker"]

log = logging.getLogger("opsbot.worker")

HEARTBEAT_TTL = 30
HEARTBEAT_EVERY = 5.0
POLL = 1.0


class Worker:
    def __init__(self, runtime: Runtime, *, threads: int = 4, owner: str | None = None):
        self.runtime = runtime
        self.queue = WorkQueue(runtime.state.redis, runtime.settings.state.prefix)
        self.work = SlackWork(runtime)
        self.threads = threads
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_sweep: dict[str, float] = {}  # group → when its sweep last ran (monotonic)

    def start(self) -> "Worker":
        self._beat()
        self._threads = [threading.Thread(target=self._heartbeat, name="opsbot-heartbeat", daemon=True)]
        self._threads += [
            threading.Thread(target=self._loop, name=f"opsbot-worker-{n}", daemon=True) for n in range(self.threads)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, deadline: float = 30.0) -> None:
        """Take no new jobs; running ones finish or checkpoint (up to ``deadline``); hand back what is left."""
        self._stopping.set()
        self.runtime.engine.stopping = self._stopping.is_set
        for thread in self._threads:
            thread.join(deadline)
        try:
            self.queue.leave(self.owner)
        except Exception as exc:
            log.error("could not hand back unfinished jobs (another worker will recover them): %s", exc)

    def wait(self) -> None:
        while not self._stopping.wait(1.0):
            pass

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self.queue.take(self.owner, POLL)
            except Exception as exc:
                log.error("work queue unavailable: %s", exc)
                self._stopping.wait(POLL)
                continue
            if job is None:
                continue
            try:
                if job.kind.startswith(KIND):
                    run_webhook(self.runtime, job, self.queue)
                else:
                    self.work.run(job)
            except Exception:  # neither raises; this is the last line of defence for the thread
                log.exception("unexpected failure carrying out a job")
            finally:
                try:
                    self.queue.done(self.owner, job)
                except Exception as exc:
                    log.error("could not mark a job done: %s", exc)

    def _beat(self) -> None:
        self.queue.beat(self.owner, HEARTBEAT_TTL)
        recovered = self.queue.recover()
        if recovered:
            log.warning("recovered %d jobs from workers that stopped", recovered)
        appended = self.runtime.state.action_log.drain()  # entries kept in Redis while PostgreSQL was down
        if appended:
            log.info("appended %d action-log entries kept while PostgreSQL was down", appended)
        delivered = self.runtime.outbox.retry_due()
        if delivered:
            log.info("delivered %d Slack posts that had failed before", delivered)
        interrupted = self.runtime.engine.report_interrupted()
        if interrupted:
            log.warning("reported %d confirmed actions whose executor died mid-run", interrupted)
        self._sweep_groups()

    def _sweep_groups(self) -> None:
        """The groups' periodic work (reminders, ...), each at its own pace; replicas may all sweep."""
        now = time.monotonic()
        for group in self.runtime.groups:
            sweep = group.sweep
            if sweep is None or now - self._last_sweep.get(group.name, float("-inf")) < sweep.every(
                    self.runtime.settings):
                continue
            self._last_sweep[group.name] = now
            try:
                done = sweep.run(self.runtime)
            except Exception as exc:
                log.error("%s sweep failed: %s", sweep.what, exc)
                continue
            if done:
                log.info("%s: %d done", sweep.what, done)

    def _heartbeat(self) -> None:
        while not self._stopping.wait(HEARTBEAT_EVERY):
            try:
                self._beat()
            except Exception as exc:
                log.error("heartbeat failed: %s", exc)
