"""Dead-letter entries and the filters that select them.

Usage::

    entry = DeadEntry.parse(raw_bytes)
    entry.type, entry.error, entry.failed_at, entry.describe()
    Filters(type="send_email", error="timeout").matches(entry, now=time.time())

Entries are usually JSON objects ``{"id","type","attempts","error","failedAt","payload"}``,
but any bytes are valid: an entry that is not JSON is *opaque*, shown as bytes and
never dropped. ``failedAt`` may be ISO-8601 or epoch seconds/milliseconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

__all__ = ["DeadEntry", "Filters", "parse_time"]


def parse_time(value: Any) -> float | None:
    """Epoch seconds from an ISO-8601 string or an epoch number (ms when large); None if unreadable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return value / 1000.0 if value > 1e11 else float(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    return None


@dataclass(frozen=True)
class DeadEntry:
    raw: bytes
    document: dict[str, Any] | None

    @classmethod
    def parse(cls, raw: bytes) -> "DeadEntry":
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return cls(raw, None)
        return cls(raw, document if isinstance(document, dict) else None)

    @property
    def opaque(self) -> bool:
        return self.document is None

    def _get(self, key: str) -> Any:
        return None if self.document is None else self.document.get(key)

    @property
    def id(self) -> str | None:
        value = self._get("id")
        return None if value is None else str(value)

    @property
    def type(self) -> str | None:
        value = self._get("type")
        return None if value is None else str(value)

    @property
    def error(self) -> str | None:
        value = self._get("error")
        return None if value is None else str(value)

    @property
    def failed_at(self) -> float | None:
        return parse_time(self._get("failedAt"))

    def describe(self, payload_chars: int = 160) -> dict[str, Any]:
        """A short, display-safe view (payload truncated; redaction happens at rendering)."""
        if self.opaque:
            preview = self.raw[:48]
            return {"opaque": True, "bytes": len(self.raw), "hex": preview.hex() + ("…" if len(self.raw) > 48 else "")}
        payload = json.dumps(self._get("payload"), ensure_ascii=False, default=str)
        if len(payload) > payload_chars:
            payload = payload[:payload_chars] + "…"
        return {"id": self.id, "type": self.type, "attempts": self._get("attempts"), "error": self.error,
                "failedAt": self._get("failedAt"), "payload": payload}


@dataclass(frozen=True)
class Filters:
    """``--type NAME``, ``--error TEXT`` (case-insensitive substring), ``--older-than``, ``--id`` (repeatable)."""

    type: str | None = None
    error: str | None = None
    older_than: float | None = None
    ids: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> "Filters":
        return cls(args.get("type"), args.get("error"), args.get("older_than"), tuple(args.get("id") or ()))

    @property
    def empty(self) -> bool:
        return not (self.type or self.error or self.older_than is not None or self.ids)

    def describe(self) -> str:
        parts = []
        if self.type:
            parts.append(f"type={self.type}")
        if self.error:
            parts.append(f"error~{self.error!r}")
        if self.older_than is not None:
            from bot.durations import format_duration

            parts.append(f"older than {format_duration(self.older_than)}")
        if self.ids:
            parts.append(f"id in {', '.join(self.ids)}")
        return ", ".join(parts) or "all entries"

    def to_lua(self, now: float) -> str:
        """The filter as the Lua scripts read it (``before`` is an absolute epoch cutoff)."""
        document = {
            "any": self.empty,
            "type": self.type,
            "error": self.error.lower() if self.error else None,
            "before": (now - self.older_than) if self.older_than is not None else None,
            "ids": {i: True for i in self.ids} if self.ids else None,
        }
        # Unset filters are left out: Lua sees JSON null as a (truthy) cjson.null.
        return json.dumps({key: value for key, value in document.items() if value is not None})

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "error": self.error, "older_than": self.older_than, "ids": list(self.ids)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Filters":
        return cls(data.get("type"), data.get("error"), data.get("older_than"), tuple(data.get("ids") or ()))

    def matches(self, entry: DeadEntry, now: float) -> bool:
        if self.empty:
            return True
        if entry.opaque:
            return False
        if self.type and entry.type != self.type:
            return False
        if self.error and (entry.error is None or self.error.lower() not in entry.error.lower()):
            return False
        if self.ids and entry.id not in self.ids:
            return False
        if self.older_than is not None:
            failed = entry.failed_at
            if failed is None or failed >= now - self.older_than:
                return False
        return True
