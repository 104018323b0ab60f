"""What a chain walk reports: findings per tenant, the options it ran with, the snapshot it compared to.

Usage::

    report = TenantReport("tenant-a")
    report.valid, report.counts, report.findings     # findings: earliest row first
    seconds_between("2026-03-01T09:00:00.000Z", "2026-03-01T09:00:02.500Z")   # 2.5
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = ["KINDS", "TAMPERING", "Finding", "Snapshot", "TenantReport", "WalkOptions", "seconds_between", "text"]

KINDS = ("content_mismatch", "link_break", "fork", "clock_skew", "scheme_suspect", "truncated", "rewritten",
         "snapshot_invalid")
TAMPERING = {"content_mismatch", "link_break", "truncated", "rewritten", "snapshot_invalid"}


@dataclass(frozen=True)
class Snapshot:
    """A signed last-known-good head (see :mod:`commands.audit.records`)."""

    tenant: str
    last_id: str
    last_created: str
    hash: str
    count: int
    taken_at: datetime
    signature_ok: bool = True


@dataclass(frozen=True)
class WalkOptions:
    limit: int = 20
    window: int = 4096
    fork_window: float = 2.0
    writer: int | None = None  # index of the writer column, when configured


@dataclass(frozen=True)
class Finding:
    kind: str
    tenant: str
    position: int  # 1-based place of the row in (createdAt, id) order
    row_id: str
    created: str
    message: str
    expected: str | None = None
    actual: str | None = None
    detail: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {"kind": self.kind, "tenant": self.tenant, "position": self.position, "id": self.row_id,
               "createdAt": self.created, "message": self.message}
        if self.expected is not None or self.actual is not None:
            out.update(expected=self.expected, actual=self.actual)
        return out | ({"detail": self.detail} if self.detail else {})


@dataclass
class TenantReport:
    tenant: str
    rows: int = 0
    offset: int = 0  # rows before the walk started (an incremental walk continues a snapshot)
    head_id: str | None = None
    head_hash: str | None = None
    head_created: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    reordered: int = 0  # failed links explained by a row dated before its predecessor
    snapshot: Snapshot | None = None
    _heap: list = field(default_factory=list, repr=False)

    @property
    def checked(self) -> int:
        return self.rows - self.offset

    @property
    def valid(self) -> bool:
        return not any(self.counts.values())

    @property
    def findings(self) -> list[Finding]:
        """At most ``limit`` findings, the earliest row first."""
        return [entry[2] for entry in sorted(self._heap, key=lambda e: (-e[0], e[1]))]

    @property
    def earliest(self) -> Finding | None:
        found = self.findings
        return found[0] if found else None

    def tampering_suspected(self) -> bool:
        return any(self.counts.get(kind) for kind in TAMPERING)


def text(value: bytes | None) -> str | None:
    """A stored field as text (``None`` for NULL)."""
    return None if value is None else bytes(value).decode("utf-8", "replace")


def _moment(created: str) -> datetime | None:
    try:
        if created.isdigit():
            return datetime.fromtimestamp(int(created) / 1000, UTC)
        return datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return None


def seconds_between(earlier: str, later: str) -> float | None:
    a, b = _moment(earlier), _moment(later)
    return None if a is None or b is None else (b - a).total_seconds()
