"""The action log's anchors outside its rows: the signed head, segment starts and the verification checkpoint.

Usage::

    signer = Signer(secret, scope="opsbot")
    key_id, signature = signer.sign("head", head.fields())
    signer.seal("head", head.fields(), head.key_id, head.signature)   # "valid", "invalid", "other_key", ...
    mirror = Mirror(redis_client, "opsbot:action_log:opsbot:head")
    mirror.publish(head)            # forward only: a lower seq never replaces a higher one
    mirror.read()                   # the newest head any process published, or None

A record is signed with HMAC-SHA256 under ``state.log_secret`` over its kind, the
schema and its fields, so someone who can write the bot's tables but does not hold
the secret cannot forge a head, a segment start or a checkpoint, nor move one
between schemas. ``seq`` counts every entry appended: a head rolled back to an
older signed value is caught by the copy in Redis (or the checkpoint) holding a
higher ``seq``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal, TYPE_CHECKING

from bot.store.chain import iso_ms

if TYPE_CHECKING:
    from psycopg import sql

__all__ = ["APPEND_LOCK", "PG_WAIT", "Signer", "Seal", "Head", "SegmentStart", "Checkpoint", "Mirror", "Tables"]

APPEND_LOCK = 0x6F70736C  # "opsl": appends, and `log verify` asking for a new segment, serialize on it
PG_WAIT = 2.0             # seconds the action log waits for a PostgreSQL connection

Seal = Literal["valid", "invalid", "other_key", "unsigned", "no_key"]
"""valid: signed with the configured key. invalid: claims that key, but the signature is wrong (altered).
other_key: signed with another key (log_secret changed, or a forged key id). unsigned: written without a key.
no_key: no log_secret is configured, so nothing can be checked."""


class Signer:
    def __init__(self, secret: str | None, scope: str):
        self.key = secret.encode() if secret else None
        self.scope = scope
        self.key_id = hmac.new(self.key, b"opsbot action log key id", hashlib.sha256).hexdigest()[:16] \
            if self.key else None

    def _mac(self, kind: str, fields: list[Any]) -> str:
        assert self.key is not None
        message = json.dumps([kind, self.scope, *fields], separators=(",", ":"), sort_keys=True, default=str)
        return hmac.new(self.key, message.encode(), hashlib.sha256).hexdigest()

    def sign(self, kind: str, fields: list[Any]) -> tuple[str | None, str | None]:
        """``(key_id, signature)``, or ``(None, None)`` without a key."""
        if self.key is None:
            return None, None
        return self.key_id, self._mac(kind, fields)

    def seal(self, kind: str, fields: list[Any], key_id: str | None, signature: str | None) -> Seal:
        if self.key is None:
            return "no_key"
        if not signature:
            return "unsigned"
        if key_id != self.key_id:
            return "other_key"
        return "valid" if hmac.compare_digest(signature, self._mac(kind, fields)) else "invalid"

    def trusted(self, seal: Seal) -> bool:
        """A record to rely on: signed with our key, or (no key configured) anything."""
        return seal in ("valid", "no_key")


@dataclass(frozen=True)
class Head:
    """The newest entry of the current segment, as the bot wrote it."""

    seq: int
    segment: int
    first_id: int | None
    head_id: int | None
    head_hash: str | None
    rows: int
    key_id: str | None = None
    signature: str | None = None

    def fields(self) -> list[Any]:
        return [self.seq, self.segment, self.first_id, self.head_id, self.head_hash, self.rows]

    def signed(self, signer: Signer) -> "Head":
        key_id, signature = signer.sign("head", self.fields())
        return Head(*self.fields(), key_id=key_id, signature=signature)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Head":
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class SegmentStart:
    """Where a segment begins and why: the previous segment's head as found, and the breaks found in it."""

    segment: int
    first_id: int
    first_hash: str
    started_at: datetime
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)
    key_id: str | None = None
    signature: str | None = None

    def fields(self) -> list[Any]:
        return [self.segment, self.first_id, self.first_hash, iso_ms(self.started_at), self.reason,
                json.dumps(self.detail, sort_keys=True, separators=(",", ":"))]

    def signed(self, signer: Signer) -> "SegmentStart":
        key_id, signature = signer.sign("segment", self.fields())
        return SegmentStart(self.segment, self.first_id, self.first_hash, self.started_at, self.reason, self.detail,
                            key_id, signature)


@dataclass(frozen=True)
class Checkpoint:
    """How far the last verification got: the head it reached, counted and signed."""

    seq: int
    segment: int
    head_id: int
    head_hash: str
    rows: int
    total: int
    verified_at: datetime
    full_at: datetime | None = None
    key_id: str | None = None
    signature: str | None = None

    def fields(self) -> list[Any]:
        return [self.seq, self.segment, self.head_id, self.head_hash, self.rows, self.total, iso_ms(self.verified_at),
                iso_ms(self.full_at) if self.full_at else None]

    def signed(self, signer: Signer) -> "Checkpoint":
        key_id, signature = signer.sign("checkpoint", self.fields())
        return Checkpoint(*self.fields_raw(), key_id=key_id, signature=signature)

    def fields_raw(self) -> tuple:
        return (self.seq, self.segment, self.head_id, self.head_hash, self.rows, self.total, self.verified_at,
                self.full_at)


class Tables:
    """The quoted names of the action log's tables in one schema."""

    def __init__(self, schema: str):
        from psycopg import sql

        self.schema = schema
        self.log = sql.Identifier(schema, "action_log")
        self.head = sql.Identifier(schema, "action_log_head")
        self.segments = sql.Identifier(schema, "action_log_segments")
        self.checkpoint = sql.Identifier(schema, "action_log_checkpoint")

    def q(self, text: str) -> sql.Composed:
        from psycopg import sql

        return sql.SQL(text).format(log=self.log, head=self.head, segments=self.segments, checkpoint=self.checkpoint)

    # -- reading and writing the anchors (the caller holds the connection and its transaction) ---------------
    def read_segments(self, conn) -> list[SegmentStart]:
        rows = conn.execute(self.q("SELECT segment, first_id, first_hash, started_at, reason, detail, key_id,"
                                   " signature FROM {segments} ORDER BY segment")).fetchall()
        return [SegmentStart(*row) for row in rows]

    def write_segment(self, conn, start: SegmentStart) -> None:
        conn.execute(self.q(
            "INSERT INTO {segments} (segment, first_id, first_hash, started_at, reason, detail, key_id, signature)"
            " VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s) ON CONFLICT (segment) DO UPDATE SET"
            " first_id = EXCLUDED.first_id, first_hash = EXCLUDED.first_hash, started_at = EXCLUDED.started_at,"
            " reason = EXCLUDED.reason, detail = EXCLUDED.detail, key_id = EXCLUDED.key_id,"
            " signature = EXCLUDED.signature"),
            (start.segment, start.first_id, start.first_hash, start.started_at, start.reason,
             json.dumps(start.detail), start.key_id, start.signature))

    def write_head(self, conn, head: Head, exists: bool = True) -> None:
        if exists:  # the common case, cheaper than an upsert
            conn.execute(self.q(
                "UPDATE {head} SET seq = %s, segment = %s, first_id = %s, head_id = %s, head_hash = %s,"
                " row_count = %s, key_id = %s, signature = %s, restart = NULL, updated_at = now()"),
                (*head.fields(), head.key_id, head.signature))
            return
        conn.execute(self.q(
            "INSERT INTO {head} (one, seq, segment, first_id, head_id, head_hash, row_count, key_id, signature,"
            " restart, updated_at) VALUES (true, %s, %s, %s, %s, %s, %s, %s, %s, NULL, now())"
            " ON CONFLICT (one) DO UPDATE SET seq = EXCLUDED.seq, segment = EXCLUDED.segment,"
            " first_id = EXCLUDED.first_id, head_id = EXCLUDED.head_id, head_hash = EXCLUDED.head_hash,"
            " row_count = EXCLUDED.row_count, key_id = EXCLUDED.key_id, signature = EXCLUDED.signature,"
            " restart = NULL, updated_at = now()"),
            (*head.fields(), head.key_id, head.signature))

    def read_head(self, conn) -> tuple[Head | None, list[dict]]:
        row = conn.execute(self.q("SELECT seq, segment, first_id, head_id, head_hash, row_count, key_id, signature,"
                                  " restart FROM {head}")).fetchone()
        if row is None:
            return None, []
        return Head(*row[:8]), list(row[8] or [])

    def read_checkpoint(self, conn) -> Checkpoint | None:
        row = conn.execute(self.q("SELECT seq, segment, head_id, head_hash, row_count, total, verified_at, full_at,"
                                  " key_id, signature FROM {checkpoint}")).fetchone()
        return Checkpoint(*row) if row else None

    def write_checkpoint(self, conn, point: Checkpoint) -> None:
        conn.execute(self.q(
            "INSERT INTO {checkpoint} (one, seq, segment, head_id, head_hash, row_count, total, verified_at, full_at,"
            " key_id, signature) VALUES (true, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (one) DO UPDATE SET seq = EXCLUDED.seq, segment = EXCLUDED.segment,"
            " head_id = EXCLUDED.head_id, head_hash = EXCLUDED.head_hash, row_count = EXCLUDED.row_count,"
            " total = EXCLUDED.total, verified_at = EXCLUDED.verified_at, full_at = EXCLUDED.full_at,"
            " key_id = EXCLUDED.key_id, signature = EXCLUDED.signature"),
            (*point.fields_raw(), point.key_id, point.signature))


_FORWARD = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, doc = pcall(cjson.decode, current)
  if ok and type(doc) == 'table' and tonumber(doc['seq']) and tonumber(doc['seq']) >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


class Mirror:
    """A copy of the head in the bot's Redis, only ever moved forward (by ``seq``)."""

    def __init__(self, client, key: str):
        self.client = client
        self.key = key
        self._forward = client.register_script(_FORWARD)

    def publish(self, head: Head) -> bool:
        return bool(self._forward(keys=[self.key], args=[json.dumps(head.as_dict()), head.seq]))

    def parse(self, raw: bytes | None) -> Head | None:
        if raw is None:
            return None
        try:
            return Head.from_dict(json.loads(raw))
        except (ValueError, TypeError):
            return None

    def read(self) -> Head | None:
        return self.parse(self.client.get(self.key))
