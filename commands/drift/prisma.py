"""Prisma: ``_prisma_migrations`` against ``prisma/migrations/<name>/migration.sql``.

Usage::

    expected = expected_from_folder(Path("prisma/migrations"))      # [Expected(name, checksum)]
    applied = applied_rows(conn, sql.Identifier("_prisma_migrations"))  # [Applied(...)] oldest first
    report = compare(expected, applied)

Per migration name the newest row counts. Besides what ``prisma migrate status``
says (pending, failed, applied-but-unknown), a checksum that differs from the
file's sha256 means the migration was edited after it was applied. Line endings do not count,
exactly as in Prisma (its ``script_matches_checksum`` also accepts the file with CRLF made LF or
LF made CRLF, and the unpadded hex of old Prisma versions).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from commands.drift.model import DriftReport, Item

if TYPE_CHECKING:
    from psycopg import sql

__all__ = ["CHECKSUM_LEN", "Expected", "Applied", "script_digests", "expected_from_folder", "expected_from_json", "applied_rows", "compare"]


@dataclass(frozen=True)
class Expected:
    """``digests``: the sha256 of the file as written and with its line endings changed (empty from JSON)."""

    name: str
    checksum: str
    digests: tuple[bytes, ...] = ()

    def matches(self, stored: str) -> bool:
        """Whether the checksum Prisma stored accepts this file, as Prisma's ``script_matches_checksum`` decides."""
        if not self.digests:
            return stored == self.checksum
        old_format = bool(stored) and len(stored) != CHECKSUM_LEN
        return any(_format(digest, old_format) == stored for digest in self.digests)


CHECKSUM_LEN = 64


def script_digests(script: bytes) -> tuple[bytes, ...]:
    """Prisma accepts a script whose checksum matches it as is, with CRLF made LF, or with LF made CRLF."""
    return tuple(hashlib.sha256(variant).digest()
                 for variant in (script, script.replace(b"\r\n", b"\n"), script.replace(b"\n", b"\r\n")))


def _format(digest: bytes, old_format: bool) -> str:
    """Hex; migrations tables written by old Prisma versions hold checksums without zero-padded bytes."""
    return "".join(f"{byte:x}" for byte in digest) if old_format else digest.hex()


@dataclass(frozen=True)
class Applied:
    name: str
    checksum: str
    started_at: datetime
    finished_at: datetime | None
    rolled_back_at: datetime | None
    logs: str | None


def expected_from_folder(folder: Path) -> list[Expected]:
    found = []
    for entry in sorted(folder.iterdir()):
        script = entry / "migration.sql"
        if entry.is_dir() and script.is_file():
            body = script.read_bytes()
            found.append(Expected(entry.name, hashlib.sha256(body).hexdigest(), script_digests(body)))
    return found


def expected_from_json(body: object) -> list[Expected]:
    """``[{"name": ..., "checksum": ...}, ...]`` (``migration_name`` is accepted for ``name``)."""
    if not isinstance(body, list):
        raise ValueError("expected a JSON list of {name, checksum}")
    return sorted((Expected(str(item.get("name") or item["migration_name"]), str(item.get("checksum") or ""))
                   for item in body), key=lambda e: e.name)


def applied_rows(conn, table: sql.Identifier) -> list[Applied]:
    from psycopg import sql

    rows = conn.execute(sql.SQL(
        "SELECT migration_name, checksum, started_at, finished_at, rolled_back_at, logs FROM {}"
        " ORDER BY started_at, migration_name").format(table)).fetchall()
    return [Applied(*row) for row in rows]


def compare(expected: list[Expected], applied: list[Applied]) -> DriftReport:
    report = DriftReport("prisma")
    latest: dict[str, Applied] = {}
    for row in applied:  # oldest first: the newest row of each name wins
        latest[row.name] = row
    known = {e.name: e for e in expected}
    done = {name for name, row in latest.items() if row.finished_at and not row.rolled_back_at}
    report.applied = [Item(row.name, when=row.finished_at) for row in latest.values() if row.name in done]
    report.applied.sort(key=lambda item: item.when)
    newest_done = max(done, default="")
    for entry in expected:
        row = latest.get(entry.name)
        if row is None or row.rolled_back_at:
            note = "rolled back, not re-applied" if row is not None else ""
            if entry.name < newest_done:
                note = (note + "; " if note else "") + f"older than the applied {newest_done}: applied out of order"
            report.pending.append(Item(entry.name, note))
    for name, row in latest.items():
        if row.rolled_back_at:
            report.rolled_back.append(Item(name, f"rolled back at {row.rolled_back_at:%Y-%m-%d %H:%M}",
                                           when=row.rolled_back_at))
        elif row.finished_at is None:
            first_line = (row.logs or "").strip().splitlines()[:1]
            report.failed.append(Item(name, f"started {row.started_at:%Y-%m-%d %H:%M}, never finished"
                                      + (f": {first_line[0][:200]}" if first_line else ""), when=row.started_at))
        if name in done and name not in known:
            report.unknown.append(Item(name, "applied, but not in this code's migrations", when=row.finished_at))
        elif name in done and not known[name].matches(row.checksum):
            report.edited.append(Item(name, f"applied with checksum {row.checksum[:12]}…, the file is now"
                                            f" {known[name].checksum[:12]}…: edited after it was applied",
                                      when=row.finished_at))
    report.current = newest_done or None
    return report
