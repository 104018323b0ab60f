"""What ``drift`` found for one database, whatever the migration tool.

Usage::

    report = DriftReport("alembic", pending=[Item("3f2a", "add index")])
    report.color, report.safe_for_audit_job, report.schema_ahead_of_code
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["Item", "DriftReport"]


@dataclass(frozen=True)
class Item:
    name: str
    note: str = ""
    when: datetime | None = None

    def as_dict(self) -> dict:
        return {"name": self.name, "note": self.note, "when": self.when.isoformat() if self.when else None}


@dataclass
class DriftReport:
    tool: str
    database: str = ""
    current: str | None = None  # the newest applied migration / the database's revision(s)
    applied: list[Item] = field(default_factory=list)  # oldest first, with when it finished (Prisma)
    pending: list[Item] = field(default_factory=list)
    failed: list[Item] = field(default_factory=list)
    rolled_back: list[Item] = field(default_factory=list)
    unknown: list[Item] = field(default_factory=list)  # applied, but the code does not know it
    edited: list[Item] = field(default_factory=list)  # applied, then its file changed (checksum)
    heads: list[str] = field(default_factory=list)  # Alembic: heads of the code's revision graph
    notes: list[str] = field(default_factory=list)

    @property
    def color(self) -> str:
        if self.failed or self.edited:
            return "red"
        if self.pending or self.unknown or len(self.heads) > 1:
            return "amber"
        return "green"

    @property
    def safe_for_audit_job(self) -> bool:
        """The audit verification job runs only with no pending (or failed) migrations."""
        return not (self.pending or self.failed)

    @property
    def schema_ahead_of_code(self) -> bool:
        return bool(self.unknown)

    def applied_since(self, moment: datetime) -> list[Item]:
        return [item for item in self.applied if item.when is not None and item.when > moment]

    def as_dict(self) -> dict:
        lists = ("applied", "pending", "failed", "rolled_back", "unknown", "edited")
        return {"database": self.database, "tool": self.tool, "current": self.current, "color": self.color,
                "safe_for_audit_job": self.safe_for_audit_job, "schema_ahead_of_code": self.schema_ahead_of_code,
                "heads": self.heads, "notes": self.notes,
                **{name: [item.as_dict() for item in getattr(self, name)] for name in lists}}
