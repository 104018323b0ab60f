"""Verify the action log: its chain row by row, and its end against the signed head, Redis and the checkpoint.

Usage::

    report = verify_log(pool, tables, signer, read_mirror, full=False)
    report.level                # "ok", "warn" or "fail"
    report.findings[0].text     # "row 3: content edited: its fields no longer give its hash"

Every row is checked twice and independently: its content (its fields still
give its hash) and its link (``prev_hash`` is the hash of the row before, and ids
follow on). A row with no predecessor must be a segment start the bot recorded
and signed. The end of each closed segment is compared with the head the bot
recorded when it started the next one; the end of the current one with the
signed head, whose ``seq`` must not be behind its copy in Redis nor the last
checkpoint. The walk runs in one read-only, repeatable-read transaction,
streaming rows; the copy in Redis is read before it starts, so a concurrent
append can only make the copy older than the snapshot, never newer.

A break nobody recorded yet fails the verification, is written to the head's
``restart`` so the next append starts a new segment, and the checkpoint does not
move past it. A break the bot recorded when it started a new segment is *known*:
it fails the first verification that sees it (if no verification reported it
already) and is a warning after that, so a break is reported loudly once and
then stays on record without keeping ``status`` red for ever.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone

from bot.store.chain import iso_ms, v1_hash
from bot.store.deadline import Bound
from bot.store.loganchor import APPEND_LOCK, PG_WAIT, Checkpoint, Head, SegmentStart, Signer, Tables

__all__ = ["Finding", "VerifyReport", "verify_log", "span", "KINDS"]

KINDS = {
    "content_edited": "a row was edited in place: its fields no longer give its hash",
    "link_broken": "a row no longer links to the row before it",
    "row_missing": "rows were deleted from the middle or the start",
    "truncated": "the newest rows are gone: the chain ends before its signed head",
    "rewritten": "rows were re-hashed: a row no longer has the hash that was signed for it",
    "foreign_rows": "rows were written after the head without the bot",
    "forged_segment": "a row starts a chain where the bot never started a segment",
    "segment_invalid": "the record of a segment's start was altered or removed",
    "head_invalid": "the signed head was altered or replaced",
    "head_missing": "the head row was deleted",
    "head_rolled_back": "the head is older than its copy in Redis or the last verification: it was rolled back",
    "checkpoint_invalid": "the checkpoint of the last verification was altered",
    "unanchored": "the head is not signed with the current state.log_secret",
    "never_verified": "no verification on record",
    "mirror": "(note) the head's copy in Redis could not be compared",
    "checkpoint_moved": "(note) the row where the last verification stopped changed",
}
LIMIT = 50  # findings kept in a report
VERIFY_WAIT = 30.0  # seconds a verification waits for PostgreSQL between answers (a frozen server never gives one)


@dataclass(frozen=True)
class Finding:
    kind: str
    row: int | None
    segment: int | None
    detail: str
    level: str = "fail"      # fail | warn | info
    known: bool = False      # recorded in a signed segment start: the bot already moved on

    @property
    def text(self) -> str:
        where = f"row {self.row}" if self.row is not None else "log"
        seg = f" (segment {self.segment})" if self.segment is not None else ""
        known = "; known: the bot continued in a new segment" if self.known else ""
        return f"{where}{seg}: {self.kind.replace('_', ' ')}: {self.detail}{known}"

    def key(self) -> tuple:
        return (self.kind, self.segment) if self.kind.startswith("head_") else (self.kind, self.segment, self.row)


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    rows: int
    first_bad: int | None = None
    level: str = "ok"
    mode: str = "full"                   # full | incremental | tail (only the end was compared)
    checked: int = 0                     # rows hashed in this run
    findings: tuple[Finding, ...] = ()
    segments: int = 0
    anchored: bool = False               # the head verifies under state.log_secret
    head: Head | None = None
    head_trusted: bool = False
    checkpoint: dict | None = None       # where this run started (incremental) or what it saved
    seconds: float = 0.0

    def as_dict(self) -> dict:
        data = asdict(self)
        data["findings"] = [{**asdict(f), "text": f.text} for f in self.findings]
        return data


def span(first: int, last: int) -> str:
    """``row 7 is`` or ``rows 7–9 are``."""
    return f"row {first} is" if first == last else f"rows {first}–{last} are"


def _short(digest: str | None) -> str:
    return "NULL" if digest is None else digest[:12]


class _Walk:
    def __init__(self, signer: Signer, starts: list[SegmentStart], head_signed: bool = False,
                 unrecorded: int | None = None):
        self.signer = signer
        self.unrecorded = unrecorded  # a log older than its anchors: where its one segment starts
        self.head_signed = head_signed  # then every segment start is signed too (anchoring signs them all)
        self.by_first = {s.first_id: s for s in starts}
        self.by_number = {s.segment: s for s in starts}
        self.seals = {s.segment: signer.seal("segment", s.fields(), s.key_id, s.signature) for s in starts}
        self.known: dict[tuple, datetime | None] = {}   # recorded breaks: when, None if a verification reported it
        self.recorded: list[Finding] = []
        for start in starts:
            if not signer.trusted(self.seals[start.segment]):
                continue
            for brk in (start.detail or {}).get("breaks", []):
                found = Finding(brk.get("kind", "?"), brk.get("row"), brk.get("segment"),
                                f"{brk.get('detail', '')} (found {iso_ms(start.started_at)})", known=True)
                self.known[found.key()] = None if brk.get("reported") else start.started_at
                self.recorded.append(found)
        self.findings: list[Finding] = []
        self.seg_no: int | None = None
        self.prev_id: int | None = None
        self.prev_hash: str | None = None
        self.seg_rows = self.total = self.checked = 0

    def add(self, kind: str, row: int | None, detail: str, level: str = "fail", segment: int | None = -1) -> None:
        finding = Finding(kind, row, self.seg_no if segment == -1 else segment, detail, level)
        if level == "fail" and finding.key() in self.known:
            finding = Finding(finding.kind, row, finding.segment, detail, level, known=True)
        if len(self.findings) < LIMIT and (level != "fail" or finding.key() not in {f.key() for f in self.findings}):
            self.findings.append(finding)

    def resume(self, point: Checkpoint) -> None:
        self.seg_no, self.prev_id, self.prev_hash = point.segment, point.head_id, point.head_hash
        self.seg_rows, self.total = point.rows, point.total

    def row(self, row_id: int, tenant, created, actor, action, payload, prev_hash: str | None, digest: str) -> None:
        self.checked += 1
        self.total += 1
        if prev_hash is None:
            self._close(self.by_first.get(row_id))
            self._open(row_id, digest)
        else:
            self.seg_rows += 1
            if self.prev_id is None:
                self.add("row_missing", row_id, f"row {row_id} links to {_short(prev_hash)}, but no row comes"
                         " before it: the first rows were deleted")
            elif row_id != self.prev_id + 1:
                self.add("row_missing", self.prev_id + 1, f"{span(self.prev_id + 1, row_id - 1)} gone: row"
                         f" {row_id} follows row {self.prev_id}")
            elif prev_hash != self.prev_hash:
                self.add("link_broken", row_id, f"row {row_id} names {_short(prev_hash)} as its predecessor, but row"
                         f" {self.prev_id} has hash {_short(self.prev_hash)}")
            if row_id in self.by_first:
                self.add("rewritten", row_id, f"row {row_id} started segment {self.by_first[row_id].segment} but now"
                         " links to a predecessor")
        if digest != v1_hash(prev_hash, str(row_id), tenant, created, actor, action, payload):
            self.add("content_edited", row_id, f"row {row_id}'s fields no longer give its hash {_short(digest)}:"
                     " it was edited in place")
        self.prev_id, self.prev_hash = row_id, digest

    def _open(self, row_id: int, digest: str) -> None:
        start = self.by_first.get(row_id)
        self.seg_no, self.seg_rows = (start.segment if start else None), 1
        if start is None and row_id == self.unrecorded:
            self.add("unanchored", row_id, "the log was written before it was anchored: the next append records"
                     " where it starts and signs it", level="warn")
            return
        if start is None:
            self.add("forged_segment", row_id, f"row {row_id} has no predecessor, but the bot never started a"
                     " segment there: a forged chain start")
            return
        seal = self.seals[start.segment]
        if seal == "invalid":
            self.add("segment_invalid", row_id, f"the record of segment {start.segment}'s start does not verify:"
                     " it was altered")
        elif seal in ("unsigned", "other_key") and self.head_signed:
            self.add("segment_invalid", row_id, f"the record of segment {start.segment}'s start is "
                     + seal.replace("_", " ") + " while the head is signed with the current key: it was forged")
        elif seal in ("unsigned", "other_key"):
            self.add("unanchored", row_id, f"segment {start.segment}'s start is "
                     + ("not signed" if seal == "unsigned" else "signed with another key (state.log_secret changed?)")
                     + ": the next append signs it", level="warn")
        if start.first_hash != digest:
            self.add("rewritten", row_id, f"row {row_id} no longer has the hash recorded when segment"
                     f" {start.segment} started ({_short(start.first_hash)})")

    def _close(self, nxt: SegmentStart | None) -> None:
        if self.seg_no is None or self.prev_id is None or nxt is None:
            return
        detail = nxt.detail or {}
        previous = detail.get("previous")
        if not previous or not detail.get("previous_trusted") or previous.get("segment") != self.seg_no:
            return
        self.end_against(previous.get("head_id"), previous.get("head_hash"), f"the head recorded when segment"
                         f" {nxt.segment} started")

    def end_against(self, head_id: int | None, head_hash: str | None, source: str) -> None:
        """Compare where the current segment ends with where ``source`` says it ends."""
        if head_id is None:
            return
        if self.prev_id is None or self.prev_id < head_id:
            ends = f"ends at row {self.prev_id}" if self.prev_id is not None else "has no rows"
            start = (self.prev_id or 0) + 1
            self.add("truncated", start, f"{span(start, head_id)} gone: the chain {ends}, {source} is row"
                     f" {head_id}")
        elif self.prev_id == head_id and self.prev_hash != head_hash:
            self.add("rewritten", head_id, f"row {head_id} has hash {_short(self.prev_hash)}, {source} signed"
                     f" {_short(head_hash)}: the chain was re-hashed at or before row {head_id}")
        elif self.prev_id > head_id:
            self.add("foreign_rows", head_id + 1, f"{span(head_id + 1, self.prev_id)} after {source} (row"
                     f" {head_id}): written without the bot")


def _check_end(walk: _Walk, signer: Signer, head: Head | None, mirror: Head | None, redis_ok: bool,
               point: Checkpoint | None, point_trusted: bool) -> tuple[bool, bool]:
    """The current segment's end against the head, the head against Redis and the checkpoint.

    Returns (anchored: the head verifies under the key, trusted: the head may be mirrored)."""
    if head is None:
        walk.add("head_missing", None, "the head row is gone from action_log_head")
        return False, False
    seal = signer.seal("head", head.fields(), head.key_id, head.signature)
    mirror_seal = signer.seal("head", mirror.fields(), mirror.key_id, mirror.signature) if mirror else None
    if seal == "invalid":
        walk.add("head_invalid", head.head_id, "the head's signature does not verify: it was altered", segment=None)
    elif seal in ("unsigned", "other_key") and mirror_seal == "valid":
        walk.add("head_invalid", head.head_id, f"the head is {seal.replace('_', ' ')} while its copy in Redis is"
                 " signed with the current key: it was replaced", segment=None)
    elif seal == "unsigned" and head.segment == 0:
        pass  # nothing appended yet: the first append signs the head
    elif seal == "unsigned":
        walk.add("unanchored", None, "the head is not signed yet (state.log_secret newly set?): the next append"
                 " signs it", level="warn")
    elif seal == "other_key":
        walk.add("unanchored", None, "the head is signed with another key (state.log_secret changed?): the next"
                 " append signs it with the current one", level="warn")
    elif seal == "no_key":
        walk.add("unanchored", None, "state.log_secret is not set, so the head is not signed: someone who can"
                 " write the bot's tables could truncate or re-hash the log unnoticed", level="warn")
    if head.segment == 0:
        if walk.prev_id is not None:
            walk.add("foreign_rows", walk.prev_id, "the log has rows but the bot never appended one")
    elif walk.seg_no is not None and walk.seg_no < head.segment:
        walk.add("truncated", head.first_id, f"segment {head.segment}, which the head is in (rows"
                 f" {head.first_id}–{head.head_id}), is gone", segment=head.segment)
    elif walk.seg_no is not None and walk.seg_no > head.segment:
        walk.add("foreign_rows", walk.prev_id, f"segment {walk.seg_no} comes after the head's segment"
                 f" {head.segment}: written without the bot")
    else:
        walk.end_against(head.head_id, head.head_hash, "the signed head")
    if mirror is not None and signer.trusted(mirror_seal) and (
            mirror.seq > head.seq or (mirror.seq == head.seq and mirror.head_hash != head.head_hash)):
        walk.add("head_rolled_back", head.head_id, f"the head (entry #{head.seq}, row {head.head_id}) is older than"
                 f" its copy in Redis (entry #{mirror.seq}, row {mirror.head_id}): rows after it were removed and"
                 " the head replayed", segment=head.segment)
    elif not redis_ok:
        walk.add("mirror", None, "Redis did not answer: the head was not compared with its copy", level="info")
    elif mirror is None:
        walk.add("mirror", None, "the head has no copy in Redis (flushed, or new): mirrored again now", level="info")
    if point is not None and point_trusted and point.seq > head.seq:
        walk.add("head_rolled_back", head.head_id, f"the head (entry #{head.seq}) is older than the last"
                 f" verification (entry #{point.seq}, row {point.head_id}): it was rolled back", segment=head.segment)
    trusted = seal == "valid" or (seal == "no_key" and not any(f.level == "fail" for f in walk.findings))
    return seal == "valid", trusted


def verify_log(pool, tables: Tables, signer: Signer, read_mirror: Callable[[], tuple[Head | None, bool]], *,
               full: bool = False, quick: bool = False, save: bool = True) -> VerifyReport:
    """Verify from the last trusted checkpoint (``full``: from the first row; ``quick``: never walk everything)."""
    started = time.perf_counter()
    mirror, redis_ok = read_mirror()  # before the snapshot: see the module's docstring
    bound = Bound(VERIFY_WAIT)
    with pool.connection(timeout=PG_WAIT) as conn, bound.on(conn):
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            head, _ = tables.read_head(conn)
            starts = tables.read_segments(conn)
            point = tables.read_checkpoint(conn)
            head_signed = head is not None and signer.seal("head", head.fields(), head.key_id,
                                                           head.signature) == "valid"
            unrecorded = head.first_id if head is not None and not head_signed and head.segment > 0 and \
                head.segment not in {s.segment for s in starts} else None
            walk = _Walk(signer, starts, head_signed, unrecorded)
            mode, point_trusted, moved = _starting_point(conn, tables, signer, walk, point, full, quick)
            if mode == "tail":
                last = conn.execute(tables.q("SELECT id, hash, (SELECT count(*) FROM {log}) FROM {log}"
                                             " ORDER BY id DESC LIMIT 1")).fetchone()
                if last is not None:
                    walk.prev_id, walk.prev_hash, walk.total = last
                    walk.seg_no = max((s.segment for s in starts if s.first_id <= last[0]), default=None)
            else:
                after = point.head_id if mode == "incremental" else 0
                with conn.cursor(name="action_log_verify") as cur:
                    cur.itersize = 2000
                    cur.execute(tables.q("SELECT id, tenant, created_at, actor, action, payload::text, prev_hash, hash"
                                         " FROM {log} WHERE id > %s ORDER BY id"), (after,))
                    for n, row in enumerate(cur, 1):
                        walk.row(*row)
                        if n % cur.itersize == 0:
                            bound.renew()  # a long walk goes on; a frozen server does not answer the next fetch
    anchored, trusted = _check_end(walk, signer, head, mirror, redis_ok, point, point_trusted)
    if moved is not None and not any(f.level == "fail" and (f.row or 0) <= moved[0] for f in walk.findings):
        walk.add(*moved[1:], segment=point.segment)
    for found in walk.recorded:
        if found.key() not in {f.key() for f in walk.findings}:
            walk.findings.append(found)
    prior = point.verified_at if point is not None and point_trusted else None

    def aged(finding: Finding) -> Finding:  # a known break fails the first verification that sees it
        if not finding.known:
            return finding
        at = walk.known.get(finding.key())
        return replace(finding, level="fail" if at is not None and (prior is None or at > prior) else "warn")

    walk.findings = [aged(f) for f in walk.findings]
    fresh = [f for f in walk.findings if f.level == "fail" and not f.known]
    now = datetime.now(timezone.utc)
    saved = None
    if save and fresh and any(f.kind != "checkpoint_invalid" for f in fresh):
        _ask_for_new_segment(pool, tables, [f for f in fresh if f.kind != "checkpoint_invalid"])
    elif save and mode != "tail" and walk.prev_id is not None and head is not None:
        full_at = now if mode == "full" else (point.full_at if point is not None else None)
        saved = Checkpoint(head.seq, walk.seg_no or 0, walk.prev_id, walk.prev_hash, walk.seg_rows, walk.total, now,
                           full_at).signed(signer)
        with pool.connection(timeout=PG_WAIT) as conn, Bound(VERIFY_WAIT).on(conn), conn.transaction():
            tables.write_checkpoint(conn, saved)
    findings = tuple(walk.findings)
    level = "fail" if any(f.level == "fail" for f in findings) else "warn" if any(
        f.level == "warn" for f in findings) else "ok"
    rows = [f.row for f in fresh if f.row is not None] or [f.row for f in findings if f.level == "fail" and f.row]
    first_bad = min(rows, default=None)
    where = saved or (point if mode == "incremental" else None)
    checkpoint = None if where is None else {
        "head_id": where.head_id, "segment": where.segment, "rows": where.total,
        "verified_at": iso_ms(where.verified_at), "full_at": iso_ms(where.full_at) if where.full_at else None}
    return VerifyReport(level != "fail", walk.total, first_bad, level, mode, walk.checked, findings, len(starts),
                        anchored, head, trusted, checkpoint, round(time.perf_counter() - started, 3))


def _starting_point(conn, tables: Tables, signer: Signer, walk: _Walk, point: Checkpoint | None, full: bool,
                    quick: bool) -> tuple[str, bool, tuple | None]:
    """(mode, whether the checkpoint is trusted, a finding to add if the full walk does not explain a moved row)."""
    seal = signer.seal("checkpoint", point.fields(), point.key_id, point.signature) if point else None
    trusted = point is not None and signer.trusted(seal)
    if point is None and quick and not full:
        walk.add("never_verified", None, "no verification on record: run `log verify` to check every row",
                 level="warn")
    elif seal == "invalid":
        walk.add("checkpoint_invalid", None, f"the checkpoint (row {point.head_id}) does not verify: it was"
                 " altered; every row was verified instead", segment=point.segment)
    elif seal == "other_key":
        walk.add("unanchored", None, "the checkpoint is signed with another key (state.log_secret changed?);"
                 " every row was verified instead", level="warn")
    elif seal == "unsigned":
        walk.add("unanchored", None, "the checkpoint is not signed (taken before state.log_secret was set);"
                 " every row was verified instead", level="info")
    if full or not trusted:
        return ("tail" if quick and not full else "full"), trusted, None
    row = conn.execute(tables.q("SELECT hash FROM {log} WHERE id = %s"), (point.head_id,)).fetchone()
    if row is not None and row[0] == point.head_hash and point.segment in walk.by_number:
        walk.resume(point)
        return "incremental", trusted, None
    kind, text = ("truncated", f"row {point.head_id}, where the last verification stopped, is gone") if row is None \
        else ("rewritten", f"row {point.head_id} no longer has the hash the last verification signed"
                           f" ({_short(point.head_hash)}): the chain was re-hashed at or before it")
    walk.add("checkpoint_moved", None, "the row where the last verification stopped changed: every row was"
             " verified instead", level="info")
    return ("tail" if quick else "full"), trusted, (point.head_id, kind, point.head_id, text)


def _ask_for_new_segment(pool, tables: Tables, fresh: list[Finding]) -> None:
    """Record the breaks in the head's ``restart``: the next append starts a new segment and signs them."""
    from psycopg.types.json import Jsonb

    with pool.connection(timeout=PG_WAIT) as conn, Bound(VERIFY_WAIT).on(conn), conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK,))
        _, breaks = tables.read_head(conn)
        seen = {(b.get("kind"), b.get("segment"), b.get("row")) for b in breaks}
        breaks += [{"kind": f.kind, "segment": f.segment, "row": f.row, "detail": f.detail, "reported": True}
                   for f in fresh if (f.kind, f.segment, f.row) not in seen]
        conn.execute(tables.q("UPDATE {head} SET restart = %s"), (Jsonb(breaks),))
