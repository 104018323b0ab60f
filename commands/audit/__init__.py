"""``audit verify``, ``audit snapshot`` and ``audit export``: is the AuditLog hash chain intact?

Reads run on the application's database in one read-only, repeatable-read
transaction with ``audit.timeout`` as statement timeout; rows are streamed, so
memory does not grow with the table. What the bot remembers (signed snapshots,
the result of each run) lives in its own schema, see :mod:`commands.audit.records`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from commands.audit.gauges import chain_gauges

import hashlib
import json
import os
import tempfile
import time
from datetime import UTC, datetime

from bot.core.durations import format_duration
from bot.core.invocation import CommandError, Invocation
from bot.core.registry import Arg, Command, int_between, lazy
from bot.core.result import Attachment, Result, Section
from pathlib import Path
from bot.core.group import Group
from commands.audit.settings import AuditSettings

if TYPE_CHECKING:
    from commands.audit.records import AuditRecords
    from commands.audit.scheme import Layout
    from commands.audit.walk import Snapshot, TenantReport
    from psycopg import sql

__all__ = ["COMMANDS", "GROUP", "records_for", "verify_text", "walk_chains"]

RUNBOOK = "audit-chain-invalid"
_NEXT_STEP = {
    "content_mismatch": "a row was edited in place: find who changed it (manual edits, a migration touching the"
                        " table) and restore it from the export or a backup",
    "link_break": "rows were deleted, inserted or re-linked: compare `audit export` with the export taken at"
                  " the last snapshot",
    "fork": "two app nodes appended at once: make appends take a per-tenant lock (SELECT ... FOR UPDATE on the head)",
    "clock_skew": "an app node's clock is off: check NTP on the writer named, then re-verify",
    "scheme_suspect": "the writer's hashing changed at that row: check the deploy at that time and audit.scheme",
    "truncated": "the newest rows are gone: check for deletes or a restore from an older backup",
    "rewritten": "the chain was re-hashed after the snapshot: treat as tampering and compare exports",
    "snapshot_invalid": "the snapshot row was altered or audit.snapshot_secret changed: take a new snapshot only"
                        " after a full verification",
}


def _open(inv: Invocation):
    audit = inv.settings.audit
    return inv.targets.database(audit.database, repeatable_read=True, statement_timeout=audit.timeout)


def records_for(inv: Invocation) -> AuditRecords:
    """The audit's own tables (:func:`commands.audit.overview.records_for`)."""
    from commands.audit.overview import records_for as of

    return of(inv)


def _tenant_filter(layout: Layout, tenant: str | None) -> sql.Composable:
    from psycopg import sql

    if tenant is None:
        return sql.SQL("TRUE")
    return sql.SQL("{} = {}").format(layout.column("tenant"), sql.Literal(tenant))


def _no_rows(inv: Invocation, tenant: str | None) -> CommandError:
    table = inv.settings.audit.table
    return CommandError(f"tenant {tenant!r} has no rows in {table}" if tenant else f"{table} has no rows: nothing"
                        " to verify")


def walk_chains(conn, inv: Invocation, records: AuditRecords, tenant: str | None, *, since_snapshot: bool = False,
                limit: int | None = None, on_rows=None) -> tuple[list[TenantReport], str, list[str]]:
    """Verify the chains; returns the reports, the mode (full or incremental) and notes for the reader."""
    from commands.audit.rows import copy_rows
    from commands.audit.scheme import Layout, compile_scheme
    from commands.audit.screen import Screen
    from commands.audit.walk import ChainWalker, TenantReport, WalkOptions

    from psycopg import sql

    audit = inv.settings.audit
    layout = Layout.load(conn, audit)
    hasher = compile_scheme(audit.scheme, layout.positions)
    options = WalkOptions(limit=limit or audit.failure_limit, window=audit.window, fork_window=audit.fork_window,
                          writer=layout.positions.get("writer"))
    notes: list[str] = []
    snapshots = records.latest_snapshots([tenant] if tenant else None)
    if records.secret is None and snapshots:
        notes.append("snapshots are not checked: audit.snapshot_secret is not set")
        snapshots = {}
    walker = ChainWalker(hasher, options)

    def full_walk() -> list[TenantReport]:
        screen = Screen.of(conn, layout, audit)
        verdicts = screen.run(tenant, fork=_fork(inv)) if screen is not None else None
        if verdicts is None or any(v.tenant is None for v in verdicts):
            rows = copy_rows(conn, layout.select(_tenant_filter(layout, tenant)), progress=on_rows)
            return list(walker.walk(rows, snapshots))
        if on_rows is not None:
            on_rows(sum(v.rows for v in verdicts))
        suspect = [v.tenant for v in verdicts if not v.clean or _snapshot_moved(conn, layout, snapshots.get(v.tenant))]
        walked: dict[str, TenantReport] = {}
        if suspect:  # walked row by row, which explains what is wrong
            where = sql.SQL("{} = ANY({})").format(layout.column("tenant"), sql.Literal(suspect))
            walked = {r.tenant: r for r in walker.walk(copy_rows(conn, layout.select(where)), snapshots)}
        return [walked[v.tenant] if v.tenant in walked else v.report(snapshots.get(v.tenant)) for v in verdicts]

    if not since_snapshot:
        return full_walk(), "full", notes
    if tenant is None:
        raise CommandError("--since-snapshot verifies one tenant at a time: audit verify <tenant> --since-snapshot")
    snap = snapshots.get(tenant)
    if snap is None or not snap.signature_ok:
        raise CommandError(f"tenant {tenant!r} has no valid snapshot to start from; run a full `audit verify"
                           f" {tenant}` and then `audit snapshot {tenant}`")
    if _snapshot_moved(conn, layout, snap):
        # The head the increment starts from is gone or changed: only a full walk can say what happened.
        notes.append("the snapshot head changed, so the whole chain was verified instead of the increment")
        return full_walk(), "full", notes
    after = sql.SQL("{tenant} = {t} AND ({created}, {id}) > (SELECT {created}, {id} FROM {table}"
                    " WHERE {tenant} = {t} AND {id}::text = {last})").format(
        tenant=layout.column("tenant"), created=layout.column("created"), id=layout.column("id"),
        table=sql.Identifier(audit.table), t=sql.Literal(tenant), last=sql.Literal(snap.last_id))
    reports = list(walker.walk(copy_rows(conn, layout.select(after)), {},
                               start={tenant: (snap.count, snap.hash.encode())}))
    if any(report.counts.get("link_break") for report in reports):
        # A row written after the head can sort before it (a slow clock, a backdated insert), where the
        # increment does not read: only the whole chain tells a skewed writer from a deleted or forged row.
        notes.append("links after the snapshot are broken, so the whole chain was verified to explain them")
        return full_walk(), "full", notes
    if not reports:  # nothing appended since the snapshot
        reports = [TenantReport(tenant, rows=snap.count, offset=snap.count, head_id=snap.last_id, head_hash=snap.hash,
                                head_created=snap.last_created)]
    last_full = records.last_run(full_only=True)
    age = None if last_full is None else (datetime.now(UTC) - last_full.finished_at).total_seconds()
    if age is None or age > audit.full_rescan_every:
        when = "no full verification is on record" if age is None else \
            f"the last full verification was {format_duration(age)} ago"
        notes.append(f"{when}: run a full `audit verify {tenant}` (advised every"
                     f" {format_duration(audit.full_rescan_every)})")
    return reports, "incremental", notes


def _fork(inv: Invocation):
    """Opens more connections on the audit database, each joining an exported snapshot; None where they should
    not (behind a transaction-mode pooler, or with a one-connection limit): then the screen uses one connection."""
    audit = inv.settings.audit
    if not inv.targets.shares_snapshots(audit.database):
        return None
    return lambda snapshot: inv.targets.database(audit.database, repeatable_read=True, statement_timeout=audit.timeout,
                                                 snapshot=snapshot)


def _snapshot_moved(conn, layout: Layout, snap: Snapshot | None) -> bool:
    """Whether the walk would have something to say about this snapshot: unsigned, or its head gone or changed."""
    from psycopg import sql

    if snap is None:
        return False
    if not snap.signature_ok:
        return True
    head = conn.execute(sql.SQL("SELECT {hash}::text FROM {table} WHERE {tenant} = %s AND {id}::text = %s").format(
        hash=layout.column("hash"), table=sql.Identifier(layout.settings.table), tenant=layout.column("tenant"),
        id=layout.column("id")), (snap.tenant, snap.last_id)).fetchone()
    return head is None or head[0] != snap.hash


def verify(inv: Invocation) -> Result:
    tenant, everyone = inv.args["tenant"], inv.args["all"]
    if bool(tenant) == bool(everyone):
        raise CommandError("name one tenant or --all: audit verify <tenant> | audit verify --all")
    started = datetime.now(UTC)
    clock = time.perf_counter()

    def on_rows(count: int) -> None:
        inv.progress(Result.ok(f"audit verify: {count:,} rows checked so far ({format_duration(time.perf_counter() - clock)})"))

    records = records_for(inv)
    with _open(inv) as conn:
        reports, mode, notes = walk_chains(conn, inv, records, tenant, since_snapshot=inv.args["since_snapshot"],
                                           limit=inv.args["limit"], on_rows=on_rows)
    elapsed = time.perf_counter() - clock
    if not reports:
        raise _no_rows(inv, tenant)
    records.save_run(tenant or "*", mode, reports, started, inv.actor.label)
    return verify_result(inv, reports, mode, notes, elapsed)


def verify_result(inv: Invocation, reports: list[TenantReport], mode: str, notes: list[str],
                  elapsed: float) -> Result:
    table = inv.settings.audit.table
    rows = sum(r.checked for r in reports)
    bad = [r for r in reports if not r.valid]
    rate = f"{rows / elapsed:,.0f} rows/s" if elapsed > 0 else ""
    data = {"valid": not bad, "mode": mode, "tenants": [_report_dict(r) for r in reports], "rows": rows,
            "seconds": round(elapsed, 3), "notes": notes}
    sections = []
    for report in bad:
        sections.append(Section(f"{report.tenant}: INVALID", text=verify_text(report)))
    if bad:
        kinds = sorted({kind for r in bad for kind in r.counts})
        sections.append(Section("Next steps", text="\n".join(f"• *{k}*: {_NEXT_STEP[k]}" for k in kinds)
                                + f"\nRunbook: `/ops runbook {RUNBOOK}`"))
    valid_lines = [f"{r.tenant}: {r.rows:,} rows{_new(r)}, head {r.head_id} {(r.head_hash or '')[:12]}…" for r in reports
                   if r.valid]
    if valid_lines:
        sections.append(Section("Valid chains", text="\n".join(valid_lines[:50])
                                + (f"\n… and {len(valid_lines) - 50} more" if len(valid_lines) > 50 else "")))
    if notes:
        sections.append(Section("Notes", text="\n".join(f"• {n}" for n in notes)))
    scope = f"{len(reports)} tenant{'s' if len(reports) != 1 else ''}"
    if not bad:
        return Result.ok(f"{table} chain valid ({mode}): {scope}, {rows:,} rows checked in {elapsed:.1f}s ({rate})",
                         data=data, sections=sections)
    first = min((r.earliest for r in bad if r.earliest), key=lambda f: (f.tenant, f.position), default=None)
    where = f"; earliest failure: {first.kind} at row {first.row_id} ({first.created}) in {first.tenant}" if first else ""
    suspected = any(r.tampering_suspected() for r in bad)
    verdict = "tampering or data loss suspected" if suspected else "no sign of tampering"
    return Result.fail(f"{table} chain INVALID for {len(bad)} of {scope} ({verdict}){where}", data=data,
                       sections=sections)


def _new(report: TenantReport) -> str:
    return f" ({report.checked:,} new since the snapshot)" if report.offset else ""


def verify_text(report: TenantReport) -> str:
    counts = ", ".join(f"{kind} ×{number}" for kind, number in sorted(report.counts.items()))
    lines = [f"{report.checked:,} rows checked{_new(report) and ' since the snapshot'} · {counts}"]
    for finding in report.findings:
        line = f"• `{finding.kind}` row {finding.row_id} ({finding.created}, #{finding.position}): {finding.message}"
        if finding.expected is not None or finding.actual is not None:
            line += f"\n   expected {_shown(finding.expected)}\n   actual   {_shown(finding.actual)}"
        lines.append(line)
    shown = len(report.findings)
    total = sum(report.counts.values())
    if total > shown:
        lines.append(f"… {total - shown} more not shown (--limit)")
    return "\n".join(lines)


def _shown(value: str | None) -> str:
    """A hash as the reader should see it: NULL and an empty string are not the same thing."""
    return "`NULL`" if value is None else f"`{value}`" if value else "(empty)"


def _report_dict(report: TenantReport) -> dict:
    return {"tenant": report.tenant, "valid": report.valid, "rows": report.rows, "checked": report.checked,
            "head_id": report.head_id,
            "head_hash": report.head_hash, "counts": report.counts, "reordered": report.reordered,
            "findings": [f.as_dict() for f in report.findings]}


# -- snapshot ----------------------------------------------------------------------------------

def snapshot(inv: Invocation) -> Result:
    tenant = inv.args["tenant"]
    records = records_for(inv)
    if records.secret is None:
        raise CommandError("audit snapshot needs a signing secret: set audit.snapshot_secret"
                           " (e.g. ${AUDIT_SNAPSHOT_SECRET}) in app.yaml")
    clock = time.perf_counter()
    with _open(inv) as conn:
        reports, mode, notes = walk_chains(conn, inv, records, tenant)
    report = next(iter(reports), None)
    if report is None:
        raise _no_rows(inv, tenant)
    if not report.valid:
        return Result.fail(f"no snapshot taken: the {tenant} chain is INVALID; a last-known-good head must verify",
                           data={"taken": False, "tenant": _report_dict(report)},
                           sections=[Section(f"{tenant}: INVALID", text=verify_text(report))])
    records.save_run(tenant, mode, reports, datetime.now(UTC), inv.actor.label)
    snap = records.save_snapshot(report, inv.actor.label)
    return Result.ok(
        f"snapshot of {tenant}: {snap.count:,} rows, head {snap.last_id} {snap.hash[:12]}… (verified in"
        f" {time.perf_counter() - clock:.1f}s, signed)",
        data={"taken": True, "tenant": tenant, "last_id": snap.last_id, "hash": snap.hash, "count": snap.count,
              "taken_at": snap.taken_at.isoformat()},
        sections=[Section(fields=(("head row", snap.last_id), ("head created", snap.last_created),
                                  ("head hash", snap.hash), ("rows", f"{snap.count:,}")))])


# -- export ------------------------------------------------------------------------------------

def export(inv: Invocation) -> Result:
    from commands.audit.rows import copy_rows
    from commands.audit.scheme import CREATED, HASH, ID, Layout

    tenant = inv.args["tenant"]
    audit = inv.settings.audit
    handle = tempfile.NamedTemporaryFile("wb", prefix="opsbot-audit-", suffix=".jsonl", delete=False)
    count, head, digest = 0, None, None
    try:
        with handle, _open(inv) as conn:
            layout = Layout.load(conn, audit)
            names = [getattr(audit.columns, name) for name in layout.names]
            rows = copy_rows(conn, layout.select(_tenant_filter(layout, tenant)))
            digest = hashlib.sha256()
            for row in rows:
                record = {n: (None if v is None else v.decode("utf-8", "replace")) for n, v in zip(names, row)}
                line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
                handle.write(line)
                digest.update(line)
                count += 1
                head = row
    except BaseException:
        os.unlink(handle.name)
        raise
    if count == 0:
        os.unlink(handle.name)
        raise _no_rows(inv, tenant)
    head_hash = head[HASH].decode()
    filename = f"audit-{tenant}-{head_hash[:12]}.jsonl"
    data = {"tenant": tenant, "rows": count, "head_id": head[ID].decode(), "head_hash": head_hash,
            "head_created": head[CREATED].decode(), "file": filename, "sha256": digest.hexdigest()}
    return Result.ok(
        f"exported {count:,} rows of {tenant}; head {head[ID].decode()} {head_hash[:12]}…",
        data=data,
        sections=[Section(fields=(("head hash", head_hash), ("rows", f"{count:,}"),
                                  ("file sha256", digest.hexdigest()), ("file", filename))),
                  Section(text="Two exports describe the same chain when their head hashes and row counts match;"
                               " `diff` them to find where they part.")],
        attachments=[Attachment(filename, path=handle.name, title=f"AuditLog {tenant} (head {head_hash[:12]})")])


COMMANDS = [
    Command("audit verify", "Verify the AuditLog hash chain and classify the earliest failing record",
            args=(Arg("tenant", "one tenant id", positional=True),
                  Arg("all", "every tenant", flag=True),
                  Arg("since_snapshot", "only rows after the tenant's last snapshot (incremental)", flag=True),
                  Arg("limit", "findings shown per tenant", type=int_between(1, 1000))),
            run=verify, examples=("audit verify tenant-a", "audit verify --all",
                                  "audit verify tenant-a --since-snapshot")),
    Command("audit snapshot", "Verify a tenant's chain and record its head as last-known-good (signed)",
            args=(Arg("tenant", "one tenant id", positional=True, required=True),), run=snapshot, role="oncall",
            examples=("audit snapshot tenant-a",)),
    Command("audit export", "Export a tenant's chain as JSONL with its head hash (a file in the thread)",
            args=(Arg("tenant", "one tenant id", positional=True, required=True),), run=export, role="oncall",
            examples=("audit export tenant-a",)),
]

GROUP = Group(
    "audit",
    commands=COMMANDS,
    settings={"audit": (AuditSettings, AuditSettings())},
    migrations=Path(__file__).with_name("migrations"),
    status=lazy("commands.audit.overview", "status_lines"),
    checks=lazy("commands.audit.overview", "checks"),
    gauges={"audit verify": chain_gauges},
)
