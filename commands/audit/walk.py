"""Walk hash chains row by row and say what is wrong with them, in constant memory.

Usage::

    walker = ChainWalker(hasher, options)
    for report in walker.walk(rows):                 # rows: field lists, sorted by tenant, createdAt, id
        report.valid, report.rows, report.findings   # findings: earliest first, at most options.limit

Each row is checked twice, independently: its content (the hash recomputed from
its stored fields, with its stored ``prevHash``) and its link (``prevHash`` equal
to the stored hash of the row before it in (createdAt, id) order). A failed link
is then explained from a bounded window of recent rows:

* ``content_mismatch`` — the row's fields no longer produce its hash (edited in place);
* ``link_break`` — the predecessor it names is nowhere (deleted), or a second row
  was slipped in after the same predecessor long after it (inserted);
* ``fork`` — two rows written within ``fork_window`` of each other name the same
  predecessor (concurrent writers read the same head);
* ``clock_skew`` — every link exists, but a row sorts before the row it links to:
  its writer's clock was behind (the time difference and the writers are reported);
* ``scheme_suspect`` — from one row on, every row fails its content check while the
  links stay intact: the canonical form or scheme changed, not tampering;
* ``truncated`` / ``rewritten`` — against the last snapshot: fewer rows than it
  counted, or its head row is gone or carries another hash.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from commands.audit.scheme import CREATED, HASH, ID, PREV, TENANT, Hasher

__all__ = ["KINDS", "TAMPERING", "ChainWalker", "Finding", "Snapshot", "TenantReport", "WalkOptions"]

KINDS = ("content_mismatch", "link_break", "fork", "clock_skew", "scheme_suspect", "truncated", "rewritten",
         "snapshot_invalid")
TAMPERING = {"content_mismatch", "link_break", "truncated", "rewritten", "snapshot_invalid"}
SCHEME_RUN = 3  # this many failing rows in a row, up to the head, with links intact: a scheme change
MAX_EXPLAINED = 10_000  # link failures explained per tenant; past this they are only counted


@dataclass(frozen=True)
class Snapshot:
    """A signed last-known-good head (see :mod:`commands.audit.snapshots`)."""

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
    reordered: int = 0
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


def _text(value: bytes | None) -> str | None:
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


class _Tenant:
    """The state of one chain's walk; the hot loop lives in :meth:`ChainWalker.walk`."""

    _order = itertools.count()

    def __init__(self, name: str, options: WalkOptions, snapshot: Snapshot | None, offset: int, limit: int):
        self.report = TenantReport(name, rows=offset, offset=offset, snapshot=snapshot)
        self.options = options
        self.limit = limit
        self.ring: deque = deque(maxlen=options.window)
        self.pending: dict[bytes, tuple[int, Sequence]] = {}
        self.run_start: int | None = None
        self.explained = 0
        self.seen_head: tuple[bytes, int] | None = None

    # -- recording ----------------------------------------------------------------------
    def add(self, kind: str, position: int, row: Sequence, message: str, **extra) -> None:
        report = self.report
        report.counts[kind] = report.counts.get(kind, 0) + 1
        finding = Finding(kind, report.tenant, position, _text(row[ID]) or "", _text(row[CREATED]) or "",
                          message, **extra)
        entry = (-position, next(self._order), finding)
        if len(report._heap) < self.limit:
            heapq.heappush(report._heap, entry)
        elif entry > report._heap[0]:
            heapq.heapreplace(report._heap, entry)

    def who(self, row: Sequence) -> str:
        writer = self.options.writer
        name = _text(row[writer]) if writer is not None and len(row) > writer else None
        return f" (writer {name})" if name else ""

    # -- explanations -------------------------------------------------------------------
    def content_failed(self, position: int, row: Sequence, computed: bytes) -> None:
        if self.run_start is None:
            self.run_start = position
        self.add("content_mismatch", position, row,
                 f"row {_text(row[ID])} no longer matches its hash: its fields were changed after it was written",
                 expected=_text(computed), actual=_text(row[HASH]))

    def link_failed(self, position: int, row: Sequence, expected: bytes | None) -> None:
        self.explained += 1
        if self.explained > MAX_EXPLAINED:
            self.report.counts["link_break"] = self.report.counts.get("link_break", 0) + 1
            return
        prev = row[PREV]
        if prev is None:
            self.add("link_break", position, row,
                     f"row {_text(row[ID])} starts a new chain (prevHash is NULL) after {position - 1} rows:"
                     " it was inserted, or the rows before it were rewritten",
                     expected=_text(expected), actual=None)
            return
        predecessor = next((r for r in reversed(self.ring) if r[HASH] == prev), None)
        if predecessor is None:
            self.pending[prev] = (position, row)
            if len(self.pending) > self.options.window:
                old_prev, (old_position, old_row) = next(iter(self.pending.items()))
                del self.pending[old_prev]
                self.missing(old_position, old_row)
            return
        rival = next((r for r in reversed(self.ring) if r[PREV] == prev), None)
        if rival is None:
            self.report.reordered += 1  # the link exists; an out-of-order row nearby explains it
            return
        gap = seconds_between(_text(rival[CREATED]) or "", _text(row[CREATED]) or "")
        gap_text = "an unknown time" if gap is None else f"{abs(gap):.3f} s"
        both = f"rows {_text(rival[ID])}{self.who(rival)} and {_text(row[ID])}{self.who(row)}"
        if gap is not None and abs(gap) <= self.options.fork_window:
            self.add("fork", position, row,
                     f"{both} both follow row {_text(predecessor[ID])}, written {gap_text} apart:"
                     " two writers appended concurrently from the same head",
                     expected=_text(expected), actual=_text(prev), detail={"rival": _text(rival[ID])})
        else:
            self.add("link_break", position, row,
                     f"{both} both claim row {_text(predecessor[ID])} as predecessor, {gap_text} apart:"
                     " a row was inserted (the one no later row links to)",
                     expected=_text(expected), actual=_text(prev), detail={"rival": _text(rival[ID])})

    def predecessor_arrived(self, position: int, row: Sequence) -> None:
        early_position, early = self.pending.pop(row[HASH])
        behind = seconds_between(_text(early[CREATED]) or "", _text(row[CREATED]) or "")
        detail = {"predecessor": _text(row[ID]), "seconds_behind": behind}
        if self.options.writer is not None:
            detail.update(writer=_text(early[self.options.writer]), predecessor_writer=_text(row[self.options.writer]))
        behind_text = "" if behind is None else f"{behind:.3f} s "
        self.add("clock_skew", early_position, early,
                 f"row {_text(early[ID])}{self.who(early)} links to row {_text(row[ID])}{self.who(row)} but is dated"
                 f" {behind_text}earlier: the links are intact, the writer's clock was behind",
                 detail=detail)

    def missing(self, position: int, row: Sequence) -> None:
        where = "the first row" if position == 1 else f"row {_text(row[ID])}"
        self.add("link_break", position, row,
                 f"{where} links to a hash no row in the chain has: the row before it was deleted,"
                 " or this row was forged or re-linked", actual=_text(row[PREV]))

    # -- end of the chain ---------------------------------------------------------------
    def finish(self) -> TenantReport:
        for position, row in list(self.pending.values()):
            self.missing(position, row)
        self.pending.clear()
        self._scheme_run()
        self._against_snapshot()
        return self.report

    def _scheme_run(self) -> None:
        report, start = self.report, self.run_start
        if start is None:
            return
        length = report.rows - start + 1
        if length < SCHEME_RUN:
            return
        first = next((f for f in report.findings if f.kind == "content_mismatch" and f.position == start), None)
        report._heap = [e for e in report._heap if not (e[2].kind == "content_mismatch" and e[2].position >= start)]
        heapq.heapify(report._heap)
        report.counts["content_mismatch"] -= length
        if not report.counts["content_mismatch"]:
            del report.counts["content_mismatch"]
        since = "every row" if start == 1 else f"from row {first.row_id if first else start} on, every row"
        message = (f"{since} ({length}) fails its hash while the links between rows stay intact:"
                   " the writer's canonical form or scheme version changed (check audit.scheme), not tampering")
        row = [None] * (HASH + 1)
        row[ID], row[CREATED] = (first.row_id.encode(), first.created.encode()) if first else (b"", b"")
        self.add("scheme_suspect", start, row, message, expected=first.expected if first else None,
                 actual=first.actual if first else None, detail={"rows": length})

    def _against_snapshot(self) -> None:
        snap, report = self.report.snapshot, self.report
        if snap is None:
            return
        row = [None] * (HASH + 1)
        row[ID], row[CREATED] = snap.last_id.encode(), snap.last_created.encode()
        taken = snap.taken_at.strftime("%Y-%m-%d %H:%M UTC")
        if not snap.signature_ok:
            self.add("snapshot_invalid", snap.count, row,
                     f"the snapshot of {taken} does not carry a valid signature: it was forged or altered"
                     " (or audit.snapshot_secret changed); it is ignored")
            return
        if self.seen_head is None:
            if report.rows < snap.count:
                self.add("truncated", snap.count, row,
                         f"the chain has {report.rows} rows, the snapshot of {taken} counted {snap.count}, and its"
                         f" head row {snap.last_id} is gone: the newest rows were deleted",
                         expected=snap.hash, detail={"missing_rows": snap.count - report.rows})
            else:
                self.add("rewritten", snap.count, row,
                         f"the snapshot head row {snap.last_id} (of {taken}) is no longer in the chain:"
                         " the chain was rewritten since", expected=snap.hash)
            return
        stored, position = self.seen_head
        if stored.decode() != snap.hash:
            self.add("rewritten", position, row,
                     f"row {snap.last_id} had hash {snap.hash[:12]}… when the snapshot of {taken} was taken and"
                     f" now has {stored.decode()[:12]}…: the rows up to it were rewritten and re-hashed;"
                     " compare with the export taken then", expected=snap.hash, actual=stored.decode())
        elif report.rows < snap.count or position != snap.count:
            self.add("truncated", position, row,
                     f"the snapshot of {taken} counted {snap.count} rows up to its head, there are now {position}:"
                     " rows before the head were removed or added", detail={"rows_then": snap.count,
                                                                            "rows_now": position})


class ChainWalker:
    def __init__(self, hasher: Hasher, options: WalkOptions):
        self.hasher = hasher
        self.options = options

    def walk(self, rows: Iterable[Sequence], snapshots: dict[str, Snapshot] | None = None,
             start: dict[str, tuple[int, bytes]] | None = None) -> Iterator[TenantReport]:
        """Reports per tenant, in the order the rows come.

        ``start`` continues a chain from a known point: tenant → (rows before, hash of the last of them).
        """
        snapshots, start = snapshots or {}, start or {}
        hasher, options = self.hasher, self.options
        state: _Tenant | None = None
        current: bytes | None = None
        position, last_hash, snap_id, ring_append = 0, None, None, None
        for row in rows:
            if row[TENANT] != current:
                if state is not None:
                    state.report.rows = position
                    yield self._close(state, last_hash)
                current = row[TENANT]
                name = _text(current) or ""
                offset, last_hash = start.get(name, (0, None))
                snap = snapshots.get(name)
                state = _Tenant(name, options, snap, offset, options.limit)
                position = offset
                snap_id = snap.last_id.encode() if snap is not None else None
                ring_append = state.ring.append
            position += 1
            stored = row[HASH]
            computed = hasher(row)
            if computed != stored:
                state.content_failed(position, row, computed)
            elif state.run_start is not None:
                state.run_start = None
            if row[PREV] != last_hash:
                state.link_failed(position, row, last_hash)
            if state.pending and stored in state.pending:
                state.predecessor_arrived(position, row)
            if snap_id is not None and row[ID] == snap_id:
                state.seen_head = (bytes(stored), position)
            ring_append(row)
            last_hash = stored
        if state is not None:
            state.report.rows = position
            yield self._close(state, last_hash)

    @staticmethod
    def _close(state: _Tenant, head_hash: bytes | None) -> TenantReport:
        report = state.finish()
        if state.ring:
            head = state.ring[-1]
            report.head_id, report.head_created = _text(head[ID]), _text(head[CREATED])
            report.head_hash = _text(head_hash)
        return report
