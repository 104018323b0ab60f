"""Action-log entries PostgreSQL could not take yet, kept in the bot's Redis until it can; and payload hygiene.

Usage::

    spool = Spool(redis_client, "opsbot:action_log:opsbot:spool")
    spool.keep(Kept.new("outcome", "U1", "T1", {"status": "ok"}, occurred_at))
    for raw in spool.peek(500): ...            # oldest first
    spool.remove(raws)                         # after they are committed

    clean_payload({"text": "a\\x00b"})          # {"text": "a␀b"}: what PostgreSQL's jsonb accepts

An entry keeps its original time (``occurred_at``) and a ``spool_id``, which the
payload carries once appended, so each kept entry is appended exactly once
however many processes drain at the same time. An entry kept because its transaction's
connection was lost at the commit (PostgreSQL may have committed it after all) also
carries the ``id`` and ``hash`` of the row it was written as: the drain appends it only if
that row is not in the log.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.store.chain import iso_ms

__all__ = ["Spool", "Kept", "clean_payload", "clean_text", "MAX_PAYLOAD"]

MAX_PAYLOAD = 1 << 20      # bytes of JSON an entry may carry; longer strings are shortened to fit
MAX_DEPTH = 32             # nesting kept as is; deeper values are stored as text
_LONG = 4096               # what a too-long string is shortened to


def clean_text(value: str) -> str:
    """``value`` as PostgreSQL stores it: no NUL byte (shown as ␀), no lone surrogate."""
    if "\x00" in value:
        value = value.replace("\x00", "\u2400")  # jsonb refuses \u0000: keep a visible mark instead
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (bytes decoded with surrogateescape)
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _clean(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):  # Python refuses to print an int of more than 4300 digits
        return value if value.bit_length() < 10_000 else f"<an integer of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= MAX_DEPTH:
        return f"<{type(value).__name__} nested deeper than {MAX_DEPTH} levels>"
    if isinstance(value, dict):
        return {clean_text(str(key)): _clean(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_clean(item, depth + 1) for item in value]
    if isinstance(value, datetime):
        return iso_ms(value)
    return clean_text(str(value))


def _shorten(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _LONG:
        return value[:_LONG] + f"… [{len(value) - _LONG} more characters]"
    if isinstance(value, dict):
        return {key: _shorten(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shorten(item) for item in value]
    return value


def clean_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """A JSON object PostgreSQL's jsonb accepts, at most ``MAX_PAYLOAD`` bytes long."""
    document = _clean(payload, 0)
    if not isinstance(document, dict):
        document = {"value": document}
    size = len(json.dumps(document, ensure_ascii=False).encode())
    if size > MAX_PAYLOAD:
        document = _shorten(document)
        document["truncated_from_bytes"] = size
        text = json.dumps(document, ensure_ascii=False)
        if len(text.encode()) > MAX_PAYLOAD:
            document = {"truncated_from_bytes": size, "start": text[:_LONG]}
    return document


@dataclass(frozen=True)
class Kept:
    """One entry waiting in the spool."""

    spool_id: str
    occurred_at: str
    action: str
    actor: str
    tenant: str
    payload: dict[str, Any]
    committed_as: tuple[int, str] | None = None  # (id, hash) of the row PostgreSQL may have committed for it

    @classmethod
    def new(cls, action: str, actor: str, tenant: str, payload: dict[str, Any], occurred_at: datetime,
            committed_as: tuple[int, str] | None = None) -> "Kept":
        return cls(uuid.uuid4().hex, iso_ms(occurred_at), clean_text(action), clean_text(actor), clean_text(tenant),
                   clean_payload(payload), committed_as)

    def dumps(self) -> str:
        maybe = {"committed_as": list(self.committed_as)} if self.committed_as is not None else {}
        return json.dumps({"v": 1, "spool_id": self.spool_id, "occurred_at": self.occurred_at, "action": self.action,
                           "actor": self.actor, "tenant": self.tenant, "payload": self.payload, **maybe},
                          ensure_ascii=False)

    @classmethod
    def loads(cls, raw: bytes) -> "Kept":
        """The entry, or ValueError when ``raw`` is not one (bytes that are not JSON, a missing field)."""
        try:
            doc = json.loads(raw)
            maybe = doc.get("committed_as")
            return cls(str(doc["spool_id"]), str(doc["occurred_at"]), str(doc["action"]), str(doc["actor"]),
                       str(doc.get("tenant", "")), dict(doc["payload"]),
                       (int(maybe[0]), str(maybe[1])) if maybe is not None else None)
        except (KeyError, TypeError, AttributeError, IndexError, UnicodeDecodeError, RecursionError) as exc:
            raise ValueError(f"not a kept action-log entry: {exc}") from None

    def document(self) -> dict[str, Any]:
        """The payload as appended: the original time and the spool id travel with it."""
        return {**self.payload, "occurred_at": self.occurred_at, "spool_id": self.spool_id}


class Spool:
    """A Redis list: new entries at the tail, appended from the head (oldest first)."""

    def __init__(self, client, key: str):
        self.client = client
        self.key = key

    def keep(self, entry: Kept) -> None:
        self.client.rpush(self.key, entry.dumps())

    def peek(self, count: int) -> list[bytes]:
        return self.client.lrange(self.key, 0, count - 1)

    def remove(self, raws: list[bytes]) -> None:
        if not raws:
            return
        pipe = self.client.pipeline(transaction=False)
        for raw in raws:
            pipe.lrem(self.key, 1, raw)
        pipe.execute()

    def depth(self) -> int:
        return self.client.llen(self.key)
