"""Dead-letter entries and the filters that select them.

Usage::

    entry = DeadEntry.parse(raw_bytes)
    entry.type, entry.error, entry.failed_at, entry.describe()
    Filters(type="send_email", error="timeout").matches(entry, now=time.time())

Entries are usually JSON objects ``{"id","type","attempts","error","failedAt","payload"}``,
but any bytes are valid. An entry that is not a JSON object (binary, a list, JSON nested
deeper than a parser will go) is *opaque*: shown as bytes, never fatal, never dropped.
A JSON object that is not valid UTF-8 is *partial*: decoded with the bad bytes replaced,
for display and filtering only; the stored bytes are never touched. ``failedAt`` may be
ISO-8601 or epoch seconds/milliseconds. These rules match the Lua side
(:mod:`commands.dlq.lua`), so a filter selects the same entries in Redis and here.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DeadEntry", "Filters", "parse_time", "id_text", "safe_text", "read_object"]

EXACT_INTEGERS = 2 ** 53
_CONTROL = {c: f"\\x{c:02x}" for c in range(32) if chr(c) not in "\n\t"} | {127: "\\x7f"}
MAX_DEPTH = 1000  # Lua cjson's decode_max_depth
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}
_JSON = json.JSONDecoder(strict=False)  # control characters in strings, as Lua's cjson


def _too_deep(raw: bytes) -> bool:
    """Nested deeper than Lua's cjson reads (1000), decided before parsing: never a RecursionError
    (nor a C stack overflow), whatever recursion limit the process runs with."""
    if raw.count(b"{") + raw.count(b"[") <= MAX_DEPTH:
        return False
    depth = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub(b"", raw)):
        depth += 1 if bracket in b"[{" else -1
        if depth > MAX_DEPTH:
            return True
    return False


def _lone_surrogate(document: Any) -> bool:
    """Whether an escape like \\ud800 left half a character (Lua's cjson refuses such JSON)."""
    try:
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_time(value: Any) -> float | None:
    """Epoch seconds from an ISO-8601 string or an epoch number (ms when large); None if unreadable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        try:
            seconds = value / 1000.0 if value > 1e11 else float(value)
        except OverflowError:
            return None
        return seconds if math.isfinite(seconds) else None
    if isinstance(value, str) and len(value) <= 64:
        return _iso_seconds(value)
    return None


_ISO = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2}):([0-9]{2})")
_FRACTION = re.compile(r"[0-9]+-[0-9]+-[0-9]+[T ][0-9]+:[0-9]+:[0-9]+(\.[0-9]+)")
_OFFSET = re.compile(r"([+-])([0-9]{2}):?([0-9]{2})\Z")
# The usual shape (no offset), read in one match: the same seconds as the general reading below.
_PLAIN = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[T ]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?Z?\Z")


def _days_from_civil(y: int, m: int, d: int) -> int:
    y = y - 1 if m <= 2 else y
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def _iso_seconds(text: str) -> float | None:
    """ISO-8601 read exactly as the Lua filter reads it (to_epoch in commands.dlq.lua), so that
    ``--older-than`` selects the same entries in Redis as here."""
    plain = _PLAIN.match(text)
    if plain:
        y, mo, d, h, mi, sec, fraction = plain.groups()
        seconds = float(_days_from_civil(int(y), int(mo), int(d)) * 86400 + int(h) * 3600 + int(mi) * 60 + int(sec))
        return seconds + float("0" + fraction) if fraction else seconds
    found = _ISO.match(text)
    if not found:
        return None
    y, mo, d, h, mi, sec = (int(part) for part in found.groups())
    seconds = float(_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec)
    fraction = _FRACTION.match(text)
    if fraction:
        seconds += float("0" + fraction.group(1))
    offset = _OFFSET.search(text)
    if offset and len(text) > 19:
        shift = int(offset.group(2)) * 3600 + int(offset.group(3)) * 60
        seconds += -shift if offset.group(1) == "+" else shift
    return seconds


def id_text(value: Any) -> str | None:
    """The id ``--id`` compares with: a string as is, an exact integer in decimal, otherwise none."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and (not math.isfinite(value) or value != math.floor(value)):
        return None
    return str(int(value)) if abs(value) < EXACT_INTEGERS else None


def safe_text(value: Any, limit: int | None = None) -> str:
    """Display-safe text: no lone surrogates, control bytes escaped, cut at ``limit`` characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    return text.encode("utf-8", "replace").decode("utf-8").translate(_CONTROL)


def _at(document: Any, path: str) -> Any:
    """The value at a dotted path (``headers.task``); None where it leads nowhere (as the Lua side)."""
    for key in path.split("."):
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def ascii_lower(text: str) -> str:
    """Lower-case A-Z only, as Lua's string.lower does on bytes."""
    return text.translate(_ASCII_LOWER)


def read_object(raw: bytes) -> tuple[dict[str, Any] | None, bool]:
    """The JSON object an entry holds (None: opaque), and whether it was decoded with invalid UTF-8 replaced."""
    if not raw.lstrip()[:1] == b"{" or b"\x00" in raw or _too_deep(raw):  # cjson reads none of these
        return None, False
    try:
        text, partial = raw.decode("utf-8"), False
    except UnicodeDecodeError:
        text, partial = raw.decode("utf-8", "replace"), True
    try:
        document = _JSON.decode(text)  # json.loads(text, strict=False) without a decoder per entry
    except (ValueError, RecursionError):
        return None, False
    if not isinstance(document, dict) or (_SURROGATE.search(raw) and _lone_surrogate(document)):
        return None, False
    return document, partial


@dataclass(frozen=True)
class DeadEntry:
    raw: bytes
    document: dict[str, Any] | None
    partial: bool = False  # decoded with invalid UTF-8 replaced

    @classmethod
    def parse(cls, raw: bytes, fields: dict[str, str] | None = None) -> "DeadEntry":
        """Never raises: anything that is not a readable JSON object is opaque. ``fields`` maps
        id/type/attempts/error/failedAt to a dotted path in the entry (``{"type": "headers.task"}``)."""
        document, partial = read_object(raw)
        if document is None:
            return cls(raw, None)
        if fields:
            document = {**document, **{name: _at(document, path) for name, path in fields.items()}}
        return cls(raw, document, partial)

    @property
    def opaque(self) -> bool:
        return self.document is None

    def _get(self, key: str) -> Any:
        return None if self.document is None else self.document.get(key)

    @property
    def id(self) -> str | None:
        return id_text(self._get("id"))

    @property
    def type(self) -> str | None:
        value = self._get("type")
        return value if isinstance(value, str) else None

    @property
    def error(self) -> str | None:
        value = self._get("error")
        return value if isinstance(value, str) else None

    @property
    def failed_at(self) -> float | None:
        return parse_time(self._get("failedAt"))

    def describe(self, payload_chars: int = 160) -> dict[str, Any]:
        """A short, display-safe view (payload truncated; redaction happens at rendering)."""
        if self.opaque:
            preview = self.raw[:48]
            return {"opaque": True, "bytes": len(self.raw), "hex": preview.hex() + ("…" if len(self.raw) > 48 else "")}

        def shown(key: str, limit: int = 300) -> Any:
            value = self._get(key)
            if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                 and math.isfinite(value)):
                return value
            return safe_text(value, limit)

        view = {"id": shown("id"), "type": shown("type"), "attempts": shown("attempts", 40),
                "error": shown("error", 1000), "failedAt": shown("failedAt", 64),
                "payload": safe_text(self._get("payload"), payload_chars)}
        if self.partial:
            view["partial"] = True
        return view


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
            from bot.core.durations import format_duration

            parts.append(f"older than {format_duration(self.older_than)}")
        if self.ids:
            parts.append(f"id in {', '.join(self.ids)}")
        return ", ".join(parts) or "all entries"

    def to_lua(self, now: float, fields: dict[str, str] | None = None) -> str:
        """The filter as the Lua scripts read it (``before`` is an absolute epoch cutoff; ``paths``
        the queue's field paths, which the scan reads even when nothing is filtered)."""
        document = {
            "paths": {name: path.split(".") for name, path in fields.items()} if fields else None,
            "any": self.empty,
            "type": self.type,
            "error": ascii_lower(self.error) if self.error else None,
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
