"""Run the scheduled checks that fall due: claimed once across replicas, through the engine, posted on change.

Usage::

    runner = ScheduleRunner(runtime)             # a service of the schedule group, one per runtime
    runner.sweep()                               # every worker's sweep: claim what is due, run it in threads
    runner.sweep(wait=True)                      # tests: run in this thread, return when done

A run goes through the engine like a typed command (``Engine.handle``), as the system actor
``opsbot:schedule`` holding no role, from the incident channel: policy applies, the action
log records the request and outcome, and the command's gauges (dead letters, migrations,
chain validity) are refreshed. The runner adds ``opsbot_schedule_last_run_timestamp_seconds``
and ``opsbot_schedule_last_success_timestamp_seconds``, and posts the result to the incident
channel as ``post`` says: ``on_change`` when the status differs from the previous run's (a
first run only when it is not ok), ``always``, or ``never``.

While a run goes on its executor beats its lease (every third of ``guard.executor_timeout``);
a run whose process died is taken over by the next sweep after the lease (see the store).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bot.core.group import Gauge
from bot.core.markup import code, md
from bot.core.result import Result, Section
from commands.schedule.cron import Cron
from commands.schedule.settings import ScheduleSettings, schedule_actor_where
from commands.schedule.store import FENCED, Claim, ScheduleStore

__all__ = ["ScheduleRunner", "next_due", "should_post"]

log = logging.getLogger("opsbot.schedule")

COLORS = {"ok": "#2EB67D", "warn": "#ECB22E", "fail": "#E01E5A", "error": "#E01E5A"}


def _now() -> datetime:
    return datetime.now(UTC)


def next_due(schedule: ScheduleSettings, after: datetime) -> datetime:
    """The first slot strictly after ``after``: multiples of ``every`` since the epoch, or the cron's next minute."""
    if schedule.cron is not None:
        found = Cron.parse(schedule.cron).next_after(after)
        assert found is not None  # refused at load otherwise
        return found
    step = schedule.every
    slot = (int(after.timestamp() // step) + 1) * step
    return datetime.fromtimestamp(slot, UTC)


def should_post(post: str, previous: str | None, status: str) -> bool:
    if post == "never":
        return False
    if post == "always":
        return True
    return status != "ok" if previous is None else previous != status


class ScheduleRunner:
    def __init__(self, runtime, clock: Callable[[], datetime] = _now, owner: str | None = None):
        self.runtime = runtime
        self.clock = clock
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.store = ScheduleStore(runtime.state, runtime.settings.state.db_schema)
        self.running: dict[int, threading.Thread] = {}

    @property
    def schedules(self) -> dict[str, ScheduleSettings]:
        return {schedule.key: schedule for schedule in self.runtime.settings.schedules}

    @property
    def lease(self) -> float:
        return self.runtime.settings.guard.executor_timeout

    def _next(self, name: str, after: datetime) -> datetime:
        return next_due(self.schedules[name], after)

    def sweep(self, wait: bool = False) -> int:
        """Claim due runs (and runs whose executor died) and start them; returns how many were claimed."""
        schedules = self.schedules
        if not schedules:
            return 0
        now = self.clock()
        self.store.sync({name: s.spec for name, s in schedules.items()}, self._next, now)
        claims = self.store.claim_taken_over(now, self.owner, self.lease, list(schedules))
        claims += self.store.claim_due(now, self.owner, self.lease, self._next,
                                       {name: s.run for name, s in schedules.items()})
        for claim in claims:
            if wait:
                self.run(claim)
                continue
            thread = threading.Thread(target=self.run, args=(claim,), name=f"opsbot-schedule-{claim.run_id}",
                                      daemon=True)
            self.running[claim.run_id] = thread
            thread.start()
        return len(claims)

    def run(self, claim: Claim) -> None:
        """Run one claimed slot to its recorded end; never raises."""
        stop = threading.Event()
        beater = threading.Thread(target=self._beat, args=(claim, stop), daemon=True)
        beater.start()
        try:
            status, result = self._execute(claim)
        finally:
            stop.set()
            beater.join()
        try:
            self._record(claim, status, result)
        except Exception as exc:  # PostgreSQL gone: the lease runs out and another sweep runs the slot again
            log.error("schedule %s: could not record its run: %s", claim.schedule, exc)
        finally:
            self.running.pop(claim.run_id, None)

    def _beat(self, claim: Claim, stop: threading.Event) -> None:
        while not stop.wait(self.lease / 3):
            try:
                if not self.store.beat(claim, self.clock() + timedelta(seconds=self.lease)):
                    log.warning("schedule %s: run %d was taken over by another sweeper", claim.schedule, claim.run_id)
                    return
            except Exception as exc:
                log.error("schedule %s: lease not kept: %s", claim.schedule, exc)

    def _execute(self, claim: Claim) -> tuple[str, Result]:
        actor, where = schedule_actor_where(self.runtime.settings)
        try:
            schedule = self.schedules.get(claim.schedule)  # a taken-over run runs what app.yaml says now
            outcome = self.runtime.engine.handle(schedule.run if schedule else claim.command, actor, where)
        except Exception as exc:  # the engine answers errors as results; this is the last line of defence
            log.exception("schedule %s failed", claim.schedule)
            return "error", Result.error(f"{type(exc).__name__}: {exc}")
        if outcome.kind != "result":  # usage, denied, or a preview: a guarded command never runs from here
            summary = outcome.result.summary if outcome.result is not None else ""
            return "error", Result.error(md("not run ({}): {}", outcome.kind, summary))
        return outcome.result.status, outcome.result

    def _record(self, claim: Claim, status: str, result: Result) -> None:
        now = self.clock()
        previous = self.store.finish(claim, status, result.summary[:1000], now)
        if previous is FENCED:
            log.warning("schedule %s: run %d was taken over while it ran; its result is not recorded twice",
                        claim.schedule, claim.run_id)
            return
        labels = {"schedule": claim.schedule}
        gauges = [Gauge("opsbot_schedule_last_run_timestamp_seconds", "When the scheduled check last finished"
                        " (Unix time)", labels, now.timestamp()),
                  Gauge("opsbot_schedule_ok", "1 when the scheduled check's last run was ok, 0 otherwise", labels,
                        1.0 if status == "ok" else 0.0)]
        if status == "ok":
            gauges.append(Gauge("opsbot_schedule_last_success_timestamp_seconds", "When the scheduled check last"
                                " finished ok (Unix time)", labels, now.timestamp()))
        self.runtime.gauges.put(gauges)
        schedule = self.schedules.get(claim.schedule)
        if schedule is None or not should_post(schedule.post, previous, status):
            return
        board = self.runtime.board(self.runtime.settings.slack.incident_channel, setting="slack.incident_channel")
        if board is None:
            log.info("schedule %s: %s (%s); no Slack to post to", claim.schedule, status, result.summary)
            return
        change = f"{previous} → {status}" if previous and previous != status else status
        message = Result(status, md("Scheduled check {}: {}: {}", claim.schedule, change, result.summary),
                         data={"schedule": claim.schedule, "previous": previous, **result.data},
                         sections=(*result.sections[:8], Section(text=md("{} · slot {:%Y-%m-%d %H:%M} UTC · {}",
                                                                         code(claim.command), claim.due_at,
                                                                         code("/ops schedule list")))))
        board.post(message, COLORS.get(status, COLORS["error"]))
        self.store.mark_posted(claim)
