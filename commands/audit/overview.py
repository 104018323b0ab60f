"""What the audit group adds to `status` (the last verification) and to `opsbot check` (the hash scheme)."""

from __future__ import annotations

import time
from typing import Any

from bot.core.durations import format_duration
from bot.core.group import Check, CheckWarning, Color, StatusLine
from bot.core.invocation import CommandError, Invocation

from commands.audit.records import AuditRecords
from commands.audit.rows import copy_rows
from commands.audit.scheme import HASH, Layout, compile_scheme

__all__ = ["check_scheme", "checks", "records_for", "status_lines"]

WHAT = "audit verification"


def records_for(inv: Invocation) -> AuditRecords:
    secret = inv.settings.audit.snapshot_secret
    return AuditRecords(inv.state.pool, inv.settings.state.db_schema, secret.get_secret_value() if secret else None)


def check_scheme(inv_settings, targets, sample: int = 50) -> str:
    """For ``opsbot check``: does the configured scheme reproduce the stored hashes of the first rows?"""
    from psycopg import sql

    audit = inv_settings.audit
    with targets.database(audit.database) as conn:
        layout = Layout.load(conn, audit)
        hasher = compile_scheme(audit.scheme, layout.positions)
        rows = list(copy_rows(conn, layout.select(sql.SQL("TRUE"), limit=sample)))
    if not rows:
        return f"ok, {audit.table} is empty"
    wrong = sum(1 for row in rows if hasher(row) != row[HASH])
    if wrong == len(rows):
        raise CommandError(f"audit.scheme reproduces none of the stored hashes ({wrong} of the first {len(rows)}"
                           f" rows of {audit.table} differ): check audit.scheme fields, order, algorithm and"
                           " created_format before a verification raises a false alarm")
    if wrong:
        return f"ok, {len(rows) - wrong} of the first {len(rows)} rows verify ({wrong} differ: run audit verify)"
    return f"ok, the first {len(rows)} rows of {audit.table} verify with the configured scheme"


def status_lines(inv: Invocation) -> list[StatusLine]:
    try:
        last = records_for(inv).last_run()
    except Exception as exc:
        return [StatusLine.unknown(WHAT, exc)]
    if last is None:
        return [StatusLine(Color.AMBER, WHAT, "never run: `audit verify --all`")]
    age = time.time() - last.finished_at.timestamp()
    scope = "all tenants" if last.scope == "*" else last.scope
    when = f"{format_duration(age)} ago ({last.mode}, {scope}, {last.rows:,} rows)"
    extra = {"valid": last.valid, "age_seconds": round(age)}
    if not last.valid:
        found = ", ".join(f"{kind} ×{n}" for kind, n in sorted(last.counts.items()))
        return [StatusLine(Color.RED, WHAT, f"INVALID {when}: {found}", extra)]
    stale = inv.settings.audit.stale_after
    if age > stale:
        return [StatusLine(Color.AMBER, WHAT, f"valid {when} (amber after {format_duration(stale)})", extra)]
    return [StatusLine(Color.GREEN, WHAT, f"valid {when}", extra)]


def checks(runtime: Any) -> list[Check]:
    """The configured scheme reproduces a sample of the chain's hashes (when an audit database is configured)."""
    if runtime.settings.audit.database not in runtime.settings.databases:
        return []

    def scheme() -> str:
        try:
            return check_scheme(runtime.settings, runtime.targets)
        except CommandError as exc:
            if "does not exist" in str(exc):
                raise CheckWarning(str(exc)) from None
            raise

    return [Check("audit scheme", scheme)]
