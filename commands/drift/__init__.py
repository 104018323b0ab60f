"""``drift [database]``: applied migrations against the ones the code expects (Prisma or Alembic).

Which migrations are expected comes from ``databases.<name>.migrations`` in app.yaml:
a folder next to app.yaml, or an http(s) URL answering the list as JSON. The applied
side is read read-only from the database. The answer says whether it is safe to run
the audit verification job (only with no pending migrations) and whether older code
would run against a newer schema (what ``rollback`` needs to know).
"""

from __future__ import annotations

from commands.drift.gauges import migration_gauges

from pathlib import Path

from bot.config.settings import Settings

from commands.drift.settings import MigrationSource
from bot.core.httpretry import request
from bot.core.invocation import BadArgument, CommandError, Invocation
from bot.core.registry import Arg, Command
from bot.core.result import Result, Section
from commands.drift.model import DriftReport, Item
from bot.core.group import Color, Group, StatusLine

__all__ = ["COMMANDS", "GROUP", "DriftReport", "check_database", "drift_reports"]

RUNBOOK = "drift-check-failure"
DEFAULT_TABLE = {"prisma": "_prisma_migrations", "alembic": "alembic_version"}


def _fetch_json(source: MigrationSource) -> object:
    import httpx

    headers = {"Accept": "application/json"}
    if source.token is not None:
        headers["Authorization"] = f"Bearer {source.token.get_secret_value()}"
    with httpx.Client(timeout=source.timeout, headers=headers) as client:
        response = request(client, "GET", source.source, retries=2)
    if response.status_code != 200:
        raise CommandError(f"{source.source} answered HTTP {response.status_code} for the expected migrations")
    try:
        return response.json()
    except ValueError:
        raise CommandError(f"{source.source} did not answer JSON for the expected migrations") from None


def _folder(settings: Settings, source: MigrationSource) -> Path:
    folder = Path(settings.base_dir, source.source)
    if not (folder.is_dir() or (source.tool == "alembic" and folder.is_file() and folder.suffix == ".ini")):
        raise CommandError(f"migrations folder {source.source!r} not found (looked in {folder})")
    return folder


def _tool(name: str) -> tuple:
    """Per tool: the expected list from JSON, from a folder; the applied side; the comparison (loaded when a check
    runs: `help` reads only the declarations)."""
    if name == "prisma":
        from commands.drift import prisma

        return prisma.expected_from_json, prisma.expected_from_folder, prisma.applied_rows, prisma.compare
    from commands.drift import alembic

    return alembic.graph_from_json, alembic.graph_from_folder, alembic.current_versions, alembic.compare


def check_database(settings: Settings, targets, name: str) -> DriftReport:
    from psycopg import sql

    source = settings.databases[name].migrations
    assert source is not None
    from_json, from_folder, applied, compare = _tool(source.tool)
    table = source.table or DEFAULT_TABLE[source.tool]
    relation = sql.Identifier(source.db_schema, table) if source.db_schema else sql.Identifier(table)
    try:
        if source.source.startswith(("http://", "https://")):
            expected = from_json(_fetch_json(source))
        else:
            expected = from_folder(_folder(settings, source))
    except (ValueError, KeyError, SyntaxError) as exc:
        raise CommandError(f"expected migrations of {name!r} cannot be read: {exc}") from None
    with targets.database(name) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (relation.as_string(conn),)).fetchone()[0] is not None
        report = compare(expected, applied(conn, relation) if exists else [])
    if not exists:
        report.notes.append(f"table {table!r} does not exist: no migration was ever applied, or"
                            " databases.<name>.migrations.table/schema is wrong")
    report.database = name
    return report


def drift_reports(settings: Settings, targets, only: str | None = None) -> list[DriftReport]:
    configured = [name for name, db in settings.databases.items() if db.migrations is not None]
    if only is not None:
        if only not in settings.databases:
            raise BadArgument(f"unknown database {only!r}; configured: {', '.join(settings.databases) or 'none'}")
        if only not in configured:
            raise CommandError(f"database {only!r} has no migrations configured (databases.{only}.migrations)")
        configured = [only]
    if not configured:
        raise CommandError("no database has migrations configured (databases.<name>.migrations in app.yaml)")
    return [check_database(settings, targets, name) for name in configured]


def _items(items: list[Item], limit: int = 15) -> str:
    lines = [f"• `{item.name}`" + (f" — {item.note}" if item.note else "") for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"… and {len(items) - limit} more")
    return "\n".join(lines)


def verdicts(report: DriftReport) -> list[str]:
    lines = []
    if report.safe_for_audit_job:
        lines.append(":white_check_mark: safe to run the audit verification job: no pending or failed migrations")
    else:
        lines.append(f":no_entry: do not run the audit verification job yet: {len(report.pending)} pending,"
                     f" {len(report.failed)} failed (it needs no pending migrations)")
    if report.schema_ahead_of_code:
        lines.append(f":warning: the database has {len(report.unknown)} migration(s) this code does not know: the"
                     " code is older than the schema; roll code forward or keep the schema")
    newest = report.applied[-1] if report.applied else None
    if newest is not None and newest.when is not None:
        lines.append(f"code deployed before {newest.when:%Y-%m-%d %H:%M} UTC (when `{newest.name}` was applied) would"
                     " run against a newer schema: a rollback keeps the schema and picks code compatible with it")
    return lines


def _section(report: DriftReport) -> list[Section]:
    fields = [("tool", report.tool), ("current", report.current or "none"), ("applied", str(len(report.applied)))]
    for label, items in (("pending", report.pending), ("failed", report.failed),
                         ("edited after applying", report.edited), ("unknown to the code", report.unknown),
                         ("rolled back", report.rolled_back)):
        if items:
            fields.append((label, str(len(items))))
    sections = [Section(f"{report.database} ({report.tool}): {report.color}", fields=tuple(fields))]
    for label, items in (("Failed / unfinished", report.failed), ("Edited after they were applied", report.edited),
                         ("Pending", report.pending), ("Applied, unknown to this code", report.unknown),
                         ("Rolled back", report.rolled_back)):
        if items:
            sections.append(Section(f"{report.database}: {label}", text=_items(items)))
    sections.append(Section(text="\n".join(verdicts(report) + [f"• {note}" for note in report.notes])))
    return sections


def drift(inv: Invocation) -> Result:
    reports = drift_reports(inv.settings, inv.targets, inv.args["database"])
    sections = [section for report in reports for section in _section(report)]
    problems = []
    for report in reports:
        parts = [f"{len(getattr(report, attr))} {label}" for attr, label in
                 (("failed", "failed"), ("edited", "edited"), ("pending", "pending"), ("unknown", "unknown"))
                 if getattr(report, attr)]
        if parts:
            problems.append(f"{report.database}: {', '.join(parts)}")
    data = {"databases": [report.as_dict() for report in reports]}
    if not problems:
        names = ", ".join(f"{r.database} at {r.current or 'nothing applied'}" for r in reports)
        return Result.ok(f"no drift: {names}", data=data, sections=sections)
    if any(r.color == "red" for r in reports):
        sections.append(Section(text=f"Runbook: `/ops runbook {RUNBOOK}`"))
        return Result.fail("migration drift: " + "; ".join(problems), data=data, sections=sections)
    return Result.warn("migration drift: " + "; ".join(problems), data=data, sections=sections)


COMMANDS = [
    Command("drift", "Applied vs expected migrations (Prisma, Alembic): pending, failed, edited, unknown",
            args=(Arg("database", "one database from app.yaml", positional=True),), run=drift,
            examples=("drift", "drift main")),
]

def status_lines(inv: Invocation) -> list[StatusLine]:
    """`status`: one line per database with migrations configured."""
    if not any(db.migrations for db in inv.settings.databases.values()):
        return [StatusLine(Color.UNKNOWN, "migration drift", "no migrations configured (databases.<name>.migrations)")]
    try:
        reports = drift_reports(inv.settings, inv.targets)
    except Exception as exc:
        return [StatusLine.unknown("migration drift", exc)]
    lines = []
    for report in reports:
        parts = [f"{len(getattr(report, attr))} {attr}" for attr in ("failed", "edited", "pending", "unknown")
                 if getattr(report, attr)]
        text = ", ".join(parts) or f"none, at {report.current or 'nothing applied'}"
        lines.append(StatusLine(Color(report.color), f"migration drift {report.database}", text,
                                {"safe_for_audit_job": report.safe_for_audit_job}))
    return lines


GROUP = Group(
    "drift",
    commands=COMMANDS,
    extends={"databases": {"migrations": (MigrationSource | None, None)}},
    status=status_lines,
    gauges={"drift": migration_gauges},
)
