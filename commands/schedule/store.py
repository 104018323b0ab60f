"""Scheduled checks in the bot's PostgreSQL: when each is due, who runs it, and every run with its result.

Usage::

    store = ScheduleStore(state, "opsbot")
    store.sync({"dlq status": "every 300s: dlq status"}, next_due, now)   # rows for the configured schedules
    claims = store.claim_taken_over(now, "host:123", lease=15) + store.claim_due(now, "host:123", 15, next_due)
    store.beat(claim, now + 15)                 # still running: keep the lease
    previous = store.finish(claim, "ok", "0 dead letters", now)   # FENCED if another sweeper took the run over

Exactly once per slot: a due schedule is selected ``FOR UPDATE SKIP LOCKED``, its run row
(unique per schedule and due time) is inserted and its next due time moved on in the same
transaction, so replicas sweeping together never both run a slot. A schedule whose previous run
is still going waits (its due slot is claimed once that run ends): runs of one schedule never overlap. A run carries a lease its
executor keeps beating; a run whose lease ran out (its process was killed) is taken over by
the next sweeper with ``attempt + 1``, and the finish of the old attempt, should it come back,
matches no row (fenced): one result per slot, recorded once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from psycopg import sql

__all__ = ["FENCED", "Claim", "ScheduleStore", "MAX_ATTEMPTS"]

MAX_ATTEMPTS = 3  # a slot whose executor died this often is given up (interrupted) and the next slot waits
FENCED = object()  # finish(): the run was taken over; nothing recorded


@dataclass(frozen=True)
class Claim:
    run_id: int
    schedule: str
    due_at: datetime
    attempt: int
    command: str


class ScheduleStore:
    def __init__(self, state, schema: str):
        self.state = state
        self.schema = schema

    @property
    def pool(self):
        return self.state.pool

    def _q(self, text: str) -> sql.Composed:
        from psycopg import sql

        return sql.SQL(text).format(s=sql.Identifier(self.schema))

    def sync(self, specs: dict[str, str], next_due: Callable[[str, datetime], datetime], now: datetime) -> None:
        """A row for every configured schedule; one whose timing or command changed is due afresh."""
        with self.pool.connection() as conn:
            known = dict(conn.execute(self._q("SELECT name, spec FROM {s}.schedules WHERE name = ANY(%s)"),
                                      (list(specs),)).fetchall())
            for name, spec in specs.items():
                if known.get(name) == spec:
                    continue
                conn.execute(self._q(
                    "INSERT INTO {s}.schedules (name, spec, next_due_at) VALUES (%s, %s, %s)"
                    " ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec, next_due_at = EXCLUDED.next_due_at"
                    " WHERE {s}.schedules.spec IS DISTINCT FROM EXCLUDED.spec"), (name, spec, next_due(name, now)))

    def claim_due(self, now: datetime, owner: str, lease: float, next_due: Callable[[str, datetime], datetime],
                  commands: dict[str, str], limit: int = 20) -> list[Claim]:
        """Due schedules, each claimed by one sweeper: a run row for the slot, and the next slot set."""
        from psycopg.rows import dict_row

        claims = []
        with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(self._q(
                "SELECT name, next_due_at FROM {s}.schedules s WHERE name = ANY(%s) AND next_due_at <= %s"
                " AND NOT EXISTS (SELECT 1 FROM {s}.schedule_runs r WHERE r.schedule = s.name"
                " AND r.status = 'running')"  # one run of a schedule at a time: the slot waits for it
                " ORDER BY next_due_at LIMIT %s FOR UPDATE OF s SKIP LOCKED"), (list(commands), now, limit)).fetchall()
            for row in rows:
                name = row["name"]
                inserted = cur.execute(self._q(
                    "INSERT INTO {s}.schedule_runs (schedule, due_at, command, owner, claimed_at, lease_until)"
                    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (schedule, due_at) DO NOTHING RETURNING id"),
                    (name, row["next_due_at"], commands[name], owner, now, now + timedelta(seconds=lease))).fetchone()
                cur.execute(self._q("UPDATE {s}.schedules SET next_due_at = %s WHERE name = %s"),
                            (next_due(name, now), name))
                if inserted is not None:
                    claims.append(Claim(inserted["id"], name, row["next_due_at"], 1, commands[name]))
        return claims

    def claim_taken_over(self, now: datetime, owner: str, lease: float, names: list[str],
                         limit: int = 20) -> list[Claim]:
        """Runs whose executor stopped beating (killed): taken over, once each; given up after MAX_ATTEMPTS, or at
        once when their schedule is no longer configured (``names``)."""
        from psycopg.rows import dict_row

        with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(self._q(
                "UPDATE {s}.schedule_runs SET status = 'interrupted', finished_at = %s,"
                " summary = 'its executor stopped ' || attempt || ' times; the next slot runs as usual'"
                " WHERE id IN (SELECT id FROM {s}.schedule_runs WHERE status = 'running' AND lease_until < %s"
                " AND (attempt >= %s OR NOT schedule = ANY(%s)) FOR UPDATE SKIP LOCKED)"),
                (now, now, MAX_ATTEMPTS, names))
            rows = cur.execute(self._q(
                "UPDATE {s}.schedule_runs SET attempt = attempt + 1, owner = %s, claimed_at = %s, lease_until = %s"
                " WHERE id IN (SELECT id FROM {s}.schedule_runs WHERE status = 'running' AND lease_until < %s"
                " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id, schedule, due_at, attempt, command"),
                (owner, now, now + timedelta(seconds=lease), now, limit)).fetchall()
        return [Claim(r["id"], r["schedule"], r["due_at"], r["attempt"], r["command"]) for r in rows]

    def beat(self, claim: Claim, until: datetime) -> bool:
        """Keep the lease of a run still going; False if it was taken over (the executor should stop caring)."""
        with self.pool.connection() as conn:
            return conn.execute(self._q(
                "UPDATE {s}.schedule_runs SET lease_until = %s WHERE id = %s AND attempt = %s AND status = 'running'"),
                (until, claim.run_id, claim.attempt)).rowcount == 1

    def finish(self, claim: Claim, status: str, summary: str, now: datetime):
        """Record the result once: the schedule's previous status (None the first time), or FENCED."""
        with self.pool.connection() as conn, conn.transaction():
            done = conn.execute(self._q(
                "UPDATE {s}.schedule_runs SET status = %s, summary = %s, finished_at = %s"
                " WHERE id = %s AND attempt = %s AND status = 'running' RETURNING id"),
                (status, summary, now, claim.run_id, claim.attempt)).fetchone()
            if done is None:
                return FENCED
            previous = conn.execute(self._q("SELECT last_status FROM {s}.schedules WHERE name = %s FOR UPDATE"),
                                    (claim.schedule,)).fetchone()
            conn.execute(self._q(
                "UPDATE {s}.schedules SET last_status = %s, last_summary = %s, last_finished_at = %s,"
                " last_ok_at = CASE WHEN %s = 'ok' THEN %s ELSE last_ok_at END WHERE name = %s"),
                (status, summary, now, status, now, claim.schedule))
        return previous[0] if previous else None

    def mark_posted(self, claim: Claim) -> None:
        with self.pool.connection() as conn:
            conn.execute(self._q("UPDATE {s}.schedule_runs SET posted = true WHERE id = %s"), (claim.run_id,))

    def overview(self, names: list[str]) -> dict[str, dict]:
        """Per schedule: its row, and its latest run (running or not)."""
        from psycopg.rows import dict_row

        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            rows = {r["name"]: dict(r) for r in cur.execute(
                self._q("SELECT * FROM {s}.schedules WHERE name = ANY(%s)"), (names,)).fetchall()}
            for run in cur.execute(self._q(
                    "SELECT DISTINCT ON (schedule) * FROM {s}.schedule_runs WHERE schedule = ANY(%s)"
                    " ORDER BY schedule, id DESC"), (names,)).fetchall():
                rows.setdefault(run["schedule"], {})["latest_run"] = dict(run)
        return rows

    def runs(self, name: str | None = None, limit: int = 1000) -> list[dict]:
        """Recorded runs, oldest first (all schedules, or one)."""
        from psycopg.rows import dict_row

        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            return [dict(r) for r in cur.execute(self._q(
                "SELECT * FROM {s}.schedule_runs WHERE %(name)s::text IS NULL OR schedule = %(name)s"
                " ORDER BY id LIMIT %(limit)s"), {"name": name, "limit": limit}).fetchall()]
