"""What the bot remembers about audit chains, in its own schema: signed snapshots and verification runs.

Usage::

    records = AuditRecords(state.pool, "opsbot", secret)
    records.save_snapshot(report, actor)               # signs tenant, head id, hash, count, time
    records.latest_snapshots(["tenant-a"])             # {tenant: Snapshot}; signature_ok says if it verified
    records.save_run(scope, mode, reports, started, actor)
    records.last_run()                                 # for `status`

A snapshot is signed with HMAC-SHA256 under ``audit.snapshot_secret`` (from the
environment), so someone who can write the bot's tables but does not hold the
secret cannot forge a last-known-good head that hides a rewrite.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from collections.abc import Iterator
from contextlib import contextmanager

from bot.core.invocation import CommandError
from commands.audit.report import Snapshot, TenantReport

__all__ = ["AuditRecords", "LastRun"]


@dataclass(frozen=True)
class LastRun:
    scope: str
    mode: str
    valid: bool
    tenants: int
    rows: int
    counts: dict
    finished_at: datetime


class AuditRecords:
    def __init__(self, pool, schema: str, secret: str | None):
        from psycopg import sql

        self.pool = pool
        self.schema_name = schema
        self.schema = sql.Identifier(schema)
        self.secret = secret.encode() if secret else None

    @contextmanager
    def _connection(self) -> Iterator:
        from psycopg import errors

        try:
            with self.pool.connection() as conn:
                yield conn
        except errors.UndefinedTable:
            raise CommandError(f"the bot's schema {self.schema_name!r} is not migrated: run `opsbot migrate`"
                               " (or set RUN_MIGRATIONS=true)") from None

    def sign(self, tenant: str, last_id: str, last_created: str, digest: str, count: int, taken_at: datetime) -> str:
        if self.secret is None:
            raise ValueError("no audit.snapshot_secret")
        message = json.dumps([tenant, last_id, last_created, digest, count, taken_at.isoformat()],
                             separators=(",", ":")).encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def save_snapshot(self, report: TenantReport, actor: str) -> Snapshot:
        from psycopg import sql

        taken_at = datetime.now(UTC).replace(microsecond=0)
        signature = self.sign(report.tenant, report.head_id or "", report.head_created or "",
                              report.head_hash or "", report.rows, taken_at)
        with self._connection() as conn:
            conn.execute(sql.SQL(
                "INSERT INTO {}.audit_snapshots (tenant, last_id, last_created, hash, row_count, taken_at, taken_by,"
                " signature) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)").format(self.schema),
                (report.tenant, report.head_id, report.head_created, report.head_hash, report.rows, taken_at,
                 actor, signature))
        return Snapshot(report.tenant, report.head_id or "", report.head_created or "", report.head_hash or "",
                        report.rows, taken_at)

    def latest_snapshots(self, tenants: list[str] | None) -> dict[str, Snapshot]:
        """The newest snapshot of each tenant (all tenants when ``tenants`` is None)."""
        from psycopg import sql

        with self._connection() as conn:
            rows = conn.execute(sql.SQL(
                "SELECT DISTINCT ON (tenant) tenant, last_id, last_created, hash, row_count, taken_at, signature"
                " FROM {}.audit_snapshots WHERE %(all)s OR tenant = ANY(%(tenants)s)"
                " ORDER BY tenant, taken_at DESC, id DESC").format(self.schema),
                {"all": tenants is None, "tenants": tenants or []}).fetchall()
        out = {}
        for tenant, last_id, last_created, digest, count, taken_at, signature in rows:
            taken_at = taken_at.astimezone(UTC)
            ok = (self.secret is not None and hmac.compare_digest(
                signature, self.sign(tenant, last_id, last_created, digest, count, taken_at)))
            out[tenant] = Snapshot(tenant, last_id, last_created, digest, count, taken_at, signature_ok=ok)
        return out

    def save_run(self, scope: str, mode: str, reports: list[TenantReport], started_at: datetime,
                 actor: str) -> None:
        from psycopg import sql
        from psycopg.types.json import Jsonb

        counts: dict[str, int] = {}
        for report in reports:
            for kind, number in report.counts.items():
                counts[kind] = counts.get(kind, 0) + number
        with self._connection() as conn:
            conn.execute(sql.SQL(
                "INSERT INTO {}.audit_runs (scope, mode, valid, tenants, row_count, counts, started_at, actor)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)").format(self.schema),
                (scope, mode, all(r.valid for r in reports), len(reports), sum(r.rows for r in reports),
                 Jsonb(counts), started_at, actor))

    def last_run(self, full_only: bool = False) -> LastRun | None:
        from psycopg import sql

        with self._connection() as conn:
            row = conn.execute(sql.SQL(
                "SELECT scope, mode, valid, tenants, row_count, counts, finished_at FROM {}.audit_runs"
                " WHERE NOT %s OR mode = 'full' ORDER BY finished_at DESC, id DESC LIMIT 1").format(self.schema),
                (full_only,)).fetchone()
        return LastRun(*row) if row else None
