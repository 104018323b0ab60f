"""Writing the action log's chain: rows in id order, and the signed head moved with them.

Usage::

    writer = ChainWriter(Tables("opsbot"), Signer(secret, "opsbot"))
    with conn.transaction():            # holding APPEND_LOCK
        entries, head, breaks = writer.write(conn, [Item("request", "U1", "T1", payload)], mirror, wrote=[])

Before it writes, the writer compares the chain it would extend with the signed
head (and the head's copy in Redis): rows gone or re-hashed behind the head, rows
written without it, a head that does not verify or is older than its copy, or a
break ``log verify`` asked it to act on. If it finds one, the rows go into a new
segment: the first has no predecessor, and the segment's start is signed with
what was found. A head that is not signed yet (a log older than its anchors, or a
new ``state.log_secret``) is signed as it stands.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from bot.store.chain import v1_hash
from bot.store.loganchor import Head, SegmentStart, Signer, Tables
from bot.store.logverify import span

__all__ = ["ChainWriter", "Entry", "Item", "now_ms"]

log = logging.getLogger("opsbot.actionlog")


@dataclass(frozen=True)
class Entry:
    id: int
    tenant: str
    created_at: datetime
    actor: str
    action: str
    payload: dict[str, Any]
    prev_hash: str | None
    hash: str


@dataclass(frozen=True)
class Item:
    """An entry to append: clean action, actor, tenant and payload (see :mod:`bot.store.logspool`)."""

    action: str
    actor: str
    tenant: str
    payload: dict[str, Any]
    raw: bytes | None = None   # the spool entry it came from


def now_ms() -> datetime:
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class ChainWriter:
    def __init__(self, tables: Tables, signer: Signer):
        self.tables = tables
        self.signer = signer
        self._sql: dict[str, str] | None = None

    def write(self, conn, items: list[Item], mirror: Head | None,
               wrote: list[bool]) -> tuple[list[Entry], Head, list[dict]]:
        """Append ``items`` in id order (the caller holds APPEND_LOCK in a transaction): the entries, the new
        head and the breaks found; ``wrote`` gets an element once a write was sent."""
        queries = self._queries(conn)
        state = conn.execute(queries["state"], ([json.dumps(item.payload, ensure_ascii=False)
                                                 for item in items],)).fetchone()
        head = Head(*state[:8]) if state[0] is not None else None
        last = (state[10], state[11]) if state[10] is not None else None
        texts = state[12]
        breaks, anchor = self._examine(head, list(state[8] or []), bool(state[9]), last, mirror)
        now = now_ms()
        trusted_mirror = mirror if mirror is not None and self.signer.trusted(
            self.signer.seal("head", mirror.fields(), mirror.key_id, mirror.signature)) else None
        if anchor and not breaks:
            breaks = self._anchor(conn, head, anchor, now)
        if breaks or head is None or head.segment == 0:
            top_segment = conn.execute(self.tables.q("SELECT coalesce(max(segment), 0) FROM {segments}")).fetchone()[0]
            segment = max(top_segment, head.segment if head else 0,
                          trusted_mirror.segment if trusted_mirror else 0) + 1
            seq = max(head.seq if head else 0, trusted_mirror.seq if trusted_mirror else 0)
            prev_hash, first_id, rows, start = None, None, 0, True
        else:
            segment, seq, prev_hash, first_id, rows, start = \
                head.segment, head.seq, head.head_hash, head.first_id, head.rows, False
        row_id = last[0] if last else 0
        entries, rows_out = [], []
        for item, text in zip(items, texts):
            row_id += 1
            digest = v1_hash(prev_hash, str(row_id), item.tenant, now, item.actor, item.action, text)
            rows_out.append((row_id, item.tenant, now, item.actor, item.action, text, prev_hash, digest))
            entries.append(Entry(row_id, item.tenant, now, item.actor, item.action, json.loads(text), prev_hash,
                                 digest))
            first_id = first_id or row_id
            prev_hash, rows, seq = digest, rows + 1, seq + 1
        wrote.append(True)
        new_head = Head(seq, segment, first_id, row_id, prev_hash, rows).signed(self.signer)
        if len(rows_out) == 1 and head is not None:  # the common case: one statement
            conn.execute(queries["append"], (*rows_out[0], *new_head.fields(), new_head.key_id, new_head.signature))
        else:
            conn.cursor().executemany(queries["insert"], rows_out)
            self.tables.write_head(conn, new_head, exists=head is not None)
        if start:
            reason = breaks[0]["kind"] if breaks else "first"
            detail = {"previous": head.as_dict() if head else None, "breaks": breaks,
                      "previous_trusted": head is not None and self.signer.trusted(
                          self.signer.seal("head", head.fields(), head.key_id, head.signature)),
                      "last_row": {"id": last[0], "hash": last[1]} if last else None,
                      "mirror": trusted_mirror.as_dict() if trusted_mirror else None}
            self.tables.write_segment(conn, SegmentStart(segment, first_id, entries[0].hash, now, reason,
                                                         detail).signed(self.signer))
        return entries, new_head, breaks

    def _queries(self, conn) -> dict[str, str]:
        """The append's statements, composed once (they run on every command)."""
        if self._sql is None:
            insert = ("INSERT INTO {log} (id, tenant, created_at, actor, action, payload, prev_hash, hash)"
                      " VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s)")
            texts = {
                "state": "SELECT h.seq, h.segment, h.first_id, h.head_id, h.head_hash, h.row_count, h.key_id,"
                         " h.signature, h.restart, EXISTS (SELECT 1 FROM {segments} s WHERE s.segment = h.segment),"
                         " l.id, l.hash,"
                         " ARRAY(SELECT d::jsonb::text FROM unnest(%s::text[]) WITH ORDINALITY AS u(d, n) ORDER BY n)"
                         " FROM (SELECT 1) AS one LEFT JOIN {head} h ON true"
                         " LEFT JOIN LATERAL (SELECT id, hash FROM {log} ORDER BY id DESC LIMIT 1) l ON true",
                "insert": insert,
                "append": f"WITH r AS ({insert}) UPDATE {{head}} SET seq = %s, segment = %s, first_id = %s,"
                          " head_id = %s, head_hash = %s, row_count = %s, key_id = %s, signature = %s,"
                          " restart = NULL, updated_at = now()",
            }
            self._sql = {name: self.tables.q(text).as_string(conn) for name, text in texts.items()}
        return self._sql

    def _examine(self, head: Head | None, restart: list[dict], recorded: bool, last: tuple | None,
                 mirror: Head | None) -> tuple[list[dict], str | None]:
        """The breaks in the chain an append would extend, and whether the head needs (re-)anchoring."""
        def brk(kind: str, row: int | None, text: str) -> dict:
            return {"kind": kind, "segment": head.segment if head else None, "row": row, "detail": text}

        if head is None:
            return [brk("head_missing", None, "the head row is gone (deleted from action_log_head)")], None
        breaks, anchor = list(restart), None
        seal = self.signer.seal("head", head.fields(), head.key_id, head.signature)
        mirror_seal = self.signer.seal("head", mirror.fields(), mirror.key_id, mirror.signature) if mirror else None
        if seal == "invalid":
            breaks.append(brk("head_invalid", head.head_id, "the head's signature does not verify: it was altered"))
        elif head.segment == 0:
            pass  # nothing appended yet: the first append starts segment 1, signed
        elif seal in ("unsigned", "other_key"):
            if mirror_seal == "valid":
                breaks.append(brk("head_invalid", head.head_id, f"the head is {seal.replace('_', ' ')} while its"
                                  " copy in Redis is signed with the current key: it was replaced"))
            else:
                anchor = "reanchored" if seal == "other_key" else "anchored"
        elif head.segment > 0 and not recorded:
            if seal == "valid":
                breaks.append(brk("segment_invalid", head.first_id, f"the signed record of segment {head.segment}'s"
                                  " start is gone"))
            else:
                anchor = "adopted"
        if head.segment > 0 and head.head_id is not None:
            if last is None:
                breaks.append(brk("truncated", head.first_id, f"every row is gone; the head was row {head.head_id}"))
            elif last[0] < head.head_id:
                breaks.append(brk("truncated", last[0] + 1, f"{span(last[0] + 1, head.head_id)} gone: the table"
                                  f" ends at row {last[0]}, the head is row {head.head_id}"))
            elif last[0] == head.head_id and last[1] != head.head_hash:
                breaks.append(brk("rewritten", head.head_id, f"row {head.head_id} no longer has the head's hash:"
                                  " the chain was re-hashed"))
            elif last[0] > head.head_id:
                breaks.append(brk("foreign_rows", head.head_id + 1, f"{span(head.head_id + 1, last[0])}"
                                  " written after the head without the bot"))
        elif last is not None:
            breaks.append(brk("foreign_rows", last[0], "rows were written before the bot's first entry"))
        if mirror is not None and mirror_seal in ("valid", "no_key") and (
                mirror.seq > head.seq or (mirror.seq == head.seq and mirror.head_hash != head.head_hash)):
            breaks.append(brk("head_rolled_back", head.head_id, f"the head (entry #{head.seq}, row {head.head_id})"
                              f" is older than its copy in Redis (entry #{mirror.seq}, row {mirror.head_id})"))
        unique = {(b.get("kind"), b.get("segment"), b.get("row")): b for b in reversed(breaks)}
        return [b for b in breaks if unique[(b.get("kind"), b.get("segment"), b.get("row"))] is b], anchor

    def _anchor(self, conn, head: Head, how: str, now: datetime) -> list[dict]:
        """Sign an unsigned (or other-key) head and every segment start as found; record an unrecorded segment."""
        starts = {s.segment: s for s in self.tables.read_segments(conn)}
        if head.segment not in starts:
            row = conn.execute(self.tables.q("SELECT hash, prev_hash FROM {log} WHERE id = %s"),
                               (head.first_id,)).fetchone()
            if row is None or row[1] is not None:
                return [{"kind": "row_missing", "segment": head.segment, "row": head.first_id,
                         "detail": f"the segment's first row {head.first_id} is gone or rewritten"}]
            starts[head.segment] = SegmentStart(head.segment, head.first_id, row[0], now, "adopted",
                                                {"anchored_at": head.head_id, "breaks": []})
        for start in starts.values():
            self.tables.write_segment(conn, start.signed(self.signer))
        if how != "adopted" and self.signer.key is not None:
            log.warning("action log %s under the current state.log_secret at row %s: the head was %s, so rows"
                        " before it are vouched for as found", how, head.head_id,
                        "signed with another key" if how == "reanchored" else "not signed")
        return []
