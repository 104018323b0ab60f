"""Incidents in the bot's PostgreSQL schema: the incident, its events, and the reminders that fall due.

Usage::

    store = IncidentStore(state, "opsbot")
    incident = store.declare("sev2", "Exports failing", commander="U1", now=now, response=1800)
    store.find("INC-42"), store.by_root("1700000000.000100"), store.open()
    store.event(incident, "U1", "note", "restarted the worker", now=now)
    due = store.claim_reminders(now)     # each due reminder handed to exactly one caller, whatever the replicas

Claiming moves the incident's next reminder forward in the same statement that
selects it (``FOR UPDATE SKIP LOCKED``), so two replicas sweeping at once never
take the same reminder; the message itself goes out through the outbox, so a
Slack failure delays it but does not lose it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TYPE_CHECKING

from bot.core.invocation import BadArgument, CommandError

if TYPE_CHECKING:
    from psycopg import sql

__all__ = ["Incident", "Event", "IncidentStore", "parse_id"]

_ID = re.compile(r"^(?:INC-?)?(\d{1,9})$", re.I)


def parse_id(text: str) -> int:
    match = _ID.match(text.strip())
    if not match:
        raise BadArgument(f"{text!r} is not an incident id; they look like INC-42")
    return int(match.group(1))


@dataclass(frozen=True)
class Incident:
    number: int
    title: str
    severity: str
    phase: str
    status: str
    commander: str
    channel: str | None
    root_ts: str | None
    summary: str | None
    declared_at: datetime
    last_update_at: datetime
    resolved_at: datetime | None
    next_reminder_at: datetime | None
    reminders_sent: int
    postmortem_due_at: datetime | None
    postmortem_posted_at: datetime | None
    postmortem_reminded_at: datetime | None

    @property
    def id(self) -> str:
        return f"INC-{self.number}"

    @property
    def open(self) -> bool:
        return self.status == "open"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "severity": self.severity, "phase": self.phase,
                "status": self.status, "commander": self.commander, "channel": self.channel,
                "root_ts": self.root_ts, "summary": self.summary, "declared_at": self.declared_at.isoformat(),
                "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
                "postmortem_due_at": self.postmortem_due_at.isoformat() if self.postmortem_due_at else None}


@dataclass(frozen=True)
class Event:
    at: datetime
    actor: str
    kind: str
    text: str
    data: dict


class IncidentStore:
    """``state`` is the bot's :class:`~bot.store.state.State` (its pool is opened on first use) or a pool."""

    def __init__(self, state, schema: str, redactor=None):
        from psycopg import sql

        self._state = state
        self.schema_name = schema
        self.s = sql.Identifier(schema)
        self.redactor = redactor  # events are stored redacted: an upstream's error can echo a secret

    @property
    def pool(self):
        return getattr(self._state, "pool", self._state)

    def _q(self, text: str) -> sql.Composed:
        from psycopg import sql

        return sql.SQL(text).format(s=self.s)

    def _one(self, query: str, params: dict | tuple) -> Incident | None:
        from psycopg import errors
        from psycopg.rows import dict_row

        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            try:
                row = cur.execute(self._q(query), params).fetchone()
            except errors.UndefinedTable:
                raise CommandError(f"the bot's schema {self.schema_name!r} is not migrated: run `opsbot migrate`"
                                   ) from None
        return Incident(**row) if row else None

    # -- reading ----------------------------------------------------------------------------
    def find(self, text: str) -> Incident:
        found = self._one("SELECT * FROM {s}.incidents WHERE number = %s", (parse_id(text),))
        if found is None:
            open_ids = ", ".join(i.id for i in self.open()) or "none"
            raise BadArgument(f"unknown incident {text}; open incidents: {open_ids}")
        return found

    def by_root(self, root_ts: str) -> Incident | None:
        return self._one("SELECT * FROM {s}.incidents WHERE root_ts = %s", (root_ts,))

    def open(self) -> list[Incident]:
        from psycopg.rows import dict_row

        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(self._q("SELECT * FROM {s}.incidents WHERE status = 'open' ORDER BY number")).fetchall()
        return [Incident(**row) for row in rows]

    def events(self, incident: Incident) -> list[Event]:
        with self.pool.connection() as conn:
            rows = conn.execute(self._q("SELECT at, actor, kind, text, data FROM {s}.incident_events"
                                        " WHERE incident = %s ORDER BY at, id"), (incident.number,)).fetchall()
        return [Event(*row) for row in rows]

    def actions(self, incident: Incident) -> list[tuple[datetime, str, str, dict]]:
        """The action log's entries made in the incident's context: (at, actor, action, payload)."""
        with self.pool.connection() as conn:
            return conn.execute(self._q(
                "SELECT coalesce((payload->>'occurred_at')::timestamptz, created_at), actor, action, payload"
                " FROM {s}.action_log"
                " WHERE payload->>'incident' = %s ORDER BY id"), (incident.id,)).fetchall()

    # -- writing ----------------------------------------------------------------------------
    def declare(self, severity: str, title: str, *, commander: str, now: datetime,
                response: float | None) -> Incident:
        due = now + timedelta(seconds=response) if response is not None else None
        incident = self._one(
            "INSERT INTO {s}.incidents (title, severity, commander, declared_at, last_update_at, next_reminder_at)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING *", (title, severity, commander, now, now, due))
        assert incident is not None
        self.event(incident, commander, "declared", f"declared {severity.upper()}: {title}", now=now)
        return incident

    def update(self, incident: Incident, **fields: Any) -> Incident:
        from psycopg import sql
        from psycopg.rows import dict_row

        assignments = sql.SQL(", ").join(sql.SQL("{} = %({})s").format(sql.Identifier(k), sql.SQL(k))
                                         for k in fields)
        query = sql.SQL("UPDATE {s}.incidents SET {a} WHERE number = %(number)s RETURNING *").format(
            s=self.s, a=assignments)
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(query, {**fields, "number": incident.number}).fetchone()
        return Incident(**row)

    def touch(self, incident: Incident, now: datetime, response: float | None) -> Incident:
        """An update was posted: the response clock starts again."""
        due = now + timedelta(seconds=response) if response is not None and incident.open else None
        return self.update(incident, last_update_at=now, next_reminder_at=due)

    def event(self, incident: Incident, actor: str, kind: str, text: str, *, now: datetime,
              data: dict | None = None) -> None:
        from psycopg.types.json import Jsonb

        if self.redactor is not None:
            text, data = self.redactor.text(text), self.redactor.data(data or {})
        with self.pool.connection() as conn:
            conn.execute(self._q("INSERT INTO {s}.incident_events (incident, at, actor, kind, text, data)"
                                 " VALUES (%s, %s, %s, %s, %s, %s)"),
                         (incident.number, now, actor, kind, str(text), Jsonb(data or {})))

    # -- what falls due -------------------------------------------------------------------------
    def claim_reminders(self, now: datetime, responses: dict[str, float | None], limit: int = 20) -> list[Incident]:
        """Open incidents whose response target passed, each claimed once: the next reminder is moved on."""
        from psycopg.rows import dict_row

        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(self._q(
                "SELECT * FROM {s}.incidents WHERE status = 'open' AND next_reminder_at <= %s"
                " ORDER BY next_reminder_at LIMIT %s FOR UPDATE SKIP LOCKED"), (now, limit)).fetchall()
            claimed = []
            for row in rows:
                response = responses.get(row["severity"])
                due = now + timedelta(seconds=response) if response is not None else None
                claimed.append(Incident(**cur.execute(self._q(
                    "UPDATE {s}.incidents SET next_reminder_at = %s, reminders_sent = reminders_sent + 1"
                    " WHERE number = %s RETURNING *"), (due, row["number"])).fetchone()))
        return claimed

    def claim_postmortems(self, now: datetime, limit: int = 20) -> list[Incident]:
        """Resolved incidents whose postmortem is overdue and not yet reminded, each claimed once."""
        from psycopg.rows import dict_row

        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(self._q(
                "UPDATE {s}.incidents SET postmortem_reminded_at = %(now)s WHERE number IN ("
                " SELECT number FROM {s}.incidents WHERE postmortem_due_at <= %(now)s"
                " AND postmortem_posted_at IS NULL AND postmortem_reminded_at IS NULL"
                " ORDER BY postmortem_due_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) RETURNING *"),
                {"now": now, "limit": limit}).fetchall()
        return [Incident(**row) for row in rows]
