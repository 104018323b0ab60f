"""The bot's own append-only, hash-chained action log (PostgreSQL).

Usage::

    log = ActionLog(pool, "opsbot")
    entry = log.append("request", actor="U123", payload={"command": "dlq requeue jobs"}, tenant="T1")
    log.verify()      # VerifyReport(ok=True, rows=1, first_bad=None)

Entries chain in id order with the SPEC §7 v1 scheme. Appends from several
replicas serialize on an advisory lock, so the chain never forks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from psycopg import sql
from psycopg_pool import ConnectionPool

from bot.chain import v1_hash

__all__ = ["ActionLog", "Entry", "VerifyReport", "APPEND_LOCK"]

APPEND_LOCK = 0x6F70736C  # "opsl"


@dataclass(frozen=True)
class Entry:
    id: int
    tenant: str
    created_at: datetime
    actor: str
    action: str
    payload: dict[str, Any]
    prev_hash: str | None
    hash: str


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    rows: int
    first_bad: int | None = None


class ActionLog:
    def __init__(self, pool: ConnectionPool, schema: str):
        self.pool = pool
        self.table = sql.Identifier(schema, "action_log")

    def append(self, action: str, *, actor: str, payload: dict[str, Any], tenant: str = "") -> Entry:
        now = datetime.now(timezone.utc)
        created = now.replace(microsecond=now.microsecond // 1000 * 1000)
        document = json.dumps(payload, default=str)
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
            last = conn.execute(sql.SQL("SELECT id, hash FROM {} ORDER BY id DESC LIMIT 1").format(self.table)).fetchone()
            row_id, prev_hash = (last[0] + 1, last[1]) if last else (1, None)
            payload_text = conn.execute("SELECT %s::jsonb::text", (document,)).fetchone()[0]
            digest = v1_hash(prev_hash, str(row_id), tenant, created, actor, action, payload_text)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (id, tenant, created_at, actor, action, payload, prev_hash, hash)"
                    " VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s)"
                ).format(self.table),
                (row_id, tenant, created, actor, action, payload_text, prev_hash, digest),
            )
        return Entry(row_id, tenant, created, actor, action, json.loads(payload_text), prev_hash, digest)

    def entries(self, *, pending_id: str | None = None, limit: int = 1000) -> list[Entry]:
        query = sql.SQL(
            "SELECT id, tenant, created_at, actor, action, payload, prev_hash, hash FROM {}"
            + (" WHERE payload->>'pending_id' = %s" if pending_id else "")
            + " ORDER BY id LIMIT %s"
        ).format(self.table)
        params = (pending_id, limit) if pending_id else (limit,)
        with self.pool.connection() as conn:
            return [Entry(*row) for row in conn.execute(query, params).fetchall()]

    def verify(self) -> VerifyReport:
        """Re-hash the whole log from the stored text; the first row that does not chain is reported."""
        query = sql.SQL(
            "SELECT id, tenant, created_at, actor, action, payload::text, prev_hash, hash FROM {} ORDER BY id"
        ).format(self.table)
        rows, prev = 0, None
        with self.pool.connection() as conn, conn.transaction():
            with conn.cursor(name="action_log_verify") as cur:
                cur.execute(query)
                for row_id, tenant, created, actor, action, payload, prev_hash, digest in cur:
                    rows += 1
                    expected = v1_hash(prev, str(row_id), tenant, created, actor, action, payload)
                    if prev_hash != prev or digest != expected:
                        return VerifyReport(False, rows, row_id)
                    prev = digest
        return VerifyReport(True, rows)
