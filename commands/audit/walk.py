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
* ``link_break`` — the predecessor it names is nowhere (deleted, or the row was
  forged), or a second row was slipped in after the same predecessor long after it
  (inserted);
* ``fork`` — two rows written within ``fork_window`` of each other name the same
  predecessor (concurrent writers read the same head);
* ``clock_skew`` — every link exists, but a row sorts before the row it links to:
  its writer's clock was behind (the time difference and the writers are reported),
  unless another row claims that predecessor too (then one of them was inserted);
* ``scheme_suspect`` — from one row on, every row fails its content check while the
  links stay intact: the canonical form or scheme changed, not tampering;
* ``truncated`` / ``rewritten`` — against the last snapshot: its head row is gone and
  fewer rows than it counted remain, or its head row is gone or carries another hash.

How links are explained is in :mod:`commands.audit.links`; the report types are in
:mod:`commands.audit.report`.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator, Sequence

from commands.audit.links import MAX_EXPLAINED, LinkExplainer
from commands.audit.report import (KINDS, TAMPERING, Finding, Snapshot, TenantReport, WalkOptions,
                                   seconds_between, text)
from commands.audit.scheme import CREATED, HASH, ID, PREV, TENANT, Hasher

__all__ = ["KINDS", "MAX_EXPLAINED", "TAMPERING", "ChainWalker", "Finding", "Snapshot", "TenantReport",
           "WalkOptions", "seconds_between"]

SCHEME_RUN = 3  # this many failing rows in a row, up to the head, with links intact: a scheme change


class _Tenant:
    """The state of one chain's walk; the hot loop lives in :meth:`ChainWalker.walk`."""

    _order = itertools.count()

    def __init__(self, name: str, options: WalkOptions, snapshot: Snapshot | None, offset: int, hasher: Hasher):
        self.report = TenantReport(name, rows=offset, offset=offset, snapshot=snapshot)
        self.options = options
        self.limit = options.limit
        self.links = LinkExplainer(options, self.report, self.add, lambda row: hasher(row) == row[HASH])
        self.run_start: int | None = None  # the first of the rows failing their content check up to here
        self.run_linked = True  # and whether their links all hold
        self.seen_head: tuple[bytes, int] | None = None

    def add(self, kind: str, position: int, row: Sequence, message: str, **extra) -> None:
        report = self.report
        report.counts[kind] = report.counts.get(kind, 0) + 1
        finding = Finding(kind, report.tenant, position, text(row[ID]) or "", text(row[CREATED]) or "",
                          message, **extra)
        entry = (-position, next(self._order), finding)
        if len(report._heap) < self.limit:
            heapq.heappush(report._heap, entry)
        elif entry > report._heap[0]:
            heapq.heapreplace(report._heap, entry)

    def content_failed(self, position: int, row: Sequence, computed: bytes, linked: bool) -> None:
        """``linked``: its link holds (an edit in place), else it may as well be forged."""
        if self.run_start is None:
            self.run_start, self.run_linked = position, linked
        elif not linked:
            self.run_linked = False
        why = ("its fields were changed after it was written" if linked else
               "its fields were changed after it was written, or it was forged with a made-up hash"
               " (its link fails too)")
        self.add("content_mismatch", position, row, f"row {text(row[ID])} no longer matches its hash: {why}",
                 expected=text(computed), actual=text(row[HASH]))

    # -- end of the chain ---------------------------------------------------------------
    def finish(self) -> TenantReport:
        self.links.finish()
        self._scheme_run()
        self._against_snapshot()
        return self.report

    def _scheme_run(self) -> None:
        report, start = self.report, self.run_start
        if start is None:
            return
        length = report.rows - start + 1
        if length < SCHEME_RUN or not self.run_linked or self._verified_at_snapshot(start):
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

    def _verified_at_snapshot(self, start: int) -> bool:
        """Whether rows of the failing run were verified by the snapshot: then they were edited since.

        A scheme change only affects rows written after it; a run starting at the first row is
        the configured scheme itself changing, which a snapshot does not rule out.
        """
        snap = self.report.snapshot
        if snap is None or not snap.signature_ok or self.seen_head is None:
            return False
        stored, position = self.seen_head
        return stored.decode() == snap.hash and 1 < start <= position

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
        # The head is there with its hash: rows removed or added before it broke links the walk reports,
        # and rows appended since by a writer whose clock is behind may sort before it (clock_skew).

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
        position, last_hash, snap_id, links, pending, ring_append = 0, None, None, None, {}, None
        for row in rows:
            if row[TENANT] != current:
                if state is not None:
                    state.report.rows = position
                    yield self._close(state, last_hash)
                current = row[TENANT]
                name = text(current) or ""
                offset, last_hash = start.get(name, (0, None))
                snap = snapshots.get(name)
                state = _Tenant(name, options, snap, offset, hasher)
                position = offset
                snap_id = snap.last_id.encode() if snap is not None else None
                links = state.links
                pending, ring_append = links.pending, links.ring.append
            position += 1
            stored = row[HASH]
            computed = hasher(row)
            if computed != stored:
                state.content_failed(position, row, computed, row[PREV] == last_hash)
            elif state.run_start is not None:
                state.run_start = None
            if row[PREV] != last_hash:
                links.failed(position, row, last_hash)
            elif links.settling:
                links.settle(position, row)
            if pending and stored in pending:
                links.arrived(position, row)
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
        if state.links.ring:
            head = state.links.ring[-1]
            report.head_id, report.head_created = text(head[ID]), text(head[CREATED])
            report.head_hash = text(head_hash)
        return report
