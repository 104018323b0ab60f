"""The Lua filter (``_MATCH`` in :mod:`commands.dlq.lua`) decided here, in the client, entry for entry.

Usage::

    lua_filter = LuaFilter.of(filters.to_lua(now, fields))    # the document the scripts read
    if lua_filter.cheap:                                       # --type, --error or --id: a byte pre-check
        for index, document in lua_filter.select(items):       # items: raw entries, in any order
            ...                                                # the entries the Lua filter would take

Reading a dead list with plain ``LRANGE`` and deciding here costs Redis a fraction of what the
same filter costs it in Lua, and runs on the client's core. Most entries are ruled out by one
search over a chunk's bytes at C speed: the type as a quoted JSON string, an ``--id`` as one, or
the ``--error`` text in the lower-cased bytes must appear, unless the entry has a backslash (an
escape could spell them). The candidates left are parsed and decided as the Lua side decides:
strings compared as bytes, ``string.lower`` only on A-Z, ``failedAt`` strings of at most 64
bytes. A filter with no pre-check (``--older-than`` alone) is not ``cheap``: the caller keeps it
in Lua, where reading every entry costs less than parsing every entry here.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from itertools import accumulate
from typing import Any

from commands.dlq.entries import id_text, parse_time, read_object

__all__ = ["LuaFilter", "Undecided", "epoch", "lua_number", "lua_text"]

_INTEGER = re.compile(r"-?[0-9]+\Z")
_LUA_SPACE = b" \t\n\r\x0b\x0c"  # %s of Lua's patterns (C locale)


class Undecided(ValueError):
    """An entry Python's JSON reader refuses but Lua's cjson may read (it takes hex, leading zeros, ``+1``,
    ``inf``, ``nan``, ``1.``, integers of any length, 1000 levels deep): only the Lua filter decides it."""


def _bytes(value: str) -> bytes:
    """A decoded string as the Lua side holds it (raw bytes of a partial entry come back as they were)."""
    return value.encode("utf-8", "surrogateescape")


def lua_number(value: float) -> Any:
    """A number as the Lua scripts' statistics give it back (cjson writes numbers with 14 significant digits)."""
    return json.loads("%.14g" % value)


class LuaFilter:
    """One filter document (``Filters.to_lua``), deciding raw entries exactly as the Lua ``matches`` does."""

    def __init__(self, document: dict[str, Any]):
        self.paths: dict[str, list[str]] = document.get("paths") or {}
        self.any = bool(document.get("any"))
        self.type: bytes | None = _bytes(document["type"]) if document.get("type") is not None else None
        self.error: bytes | None = _bytes(document["error"]) if document.get("error") is not None else None
        self.type_text: str | None = document.get("type")
        self.before: float | None = document.get("before")
        self.ids: frozenset[bytes] | None = (frozenset(_bytes(i) for i in document["ids"])
                                             if document.get("ids") is not None else None)
        self.needles, self.lower = self._pre_check()

    @classmethod
    def of(cls, text: str) -> "LuaFilter":
        return cls(json.loads(text))

    def _pre_check(self) -> tuple[tuple[bytes, ...], bool]:
        """Byte strings one of which every matching entry without a backslash holds; whether to look in
        the lower-cased bytes. Empty: no pre-check."""
        if self.type is not None:
            return (b'"' + self.type + b'"',), False
        if self.ids and not any(_INTEGER.match(i.decode("utf-8", "replace")) for i in self.ids):
            return tuple(b'"' + i + b'"' for i in self.ids), False  # only a string id can be any of these
        if self.error:
            return (self.error,), True
        return (), False

    @property
    def cheap(self) -> bool:
        return not self.any and bool(self.needles)

    # -- deciding -----------------------------------------------------------------------------

    def candidates(self, items: list[bytes]) -> list[int]:
        """The indexes of the entries the pre-check lets through, in order."""
        blob = b"".join(items)
        ends = list(accumulate(map(len, items)))
        found: set[int] = set()
        for needle in (*self.needles, b"\\"):
            _hits(blob.lower() if self.lower and needle != b"\\" else blob, needle, ends, found)
        return sorted(found)

    def select(self, items: list[bytes]) -> list[tuple[int, dict[str, Any]]]:
        """The entries that match, as (index in ``items``, the entry decoded), in order. Raises Undecided
        when a candidate is one only the Lua side can read."""
        chosen = []
        for index in self.candidates(items):
            document = self.decide(items[index])
            if document is not None:
                chosen.append((index, document))
        return chosen

    def decide(self, raw: bytes) -> dict[str, Any] | None:
        """The entry decoded (with the queue's fields where they point) if it matches, else None; Undecided
        for an entry that looks like an object Python cannot read (cjson may)."""
        document, partial = read_object(raw)
        if document is None:
            if raw.lstrip(_LUA_SPACE)[:1] == b"{":  # the Lua side's decode() tries cjson on it
                raise Undecided(raw[:40])
            return None
        if partial:
            document = _exact(raw, document)
        get = document.get if not self.paths else lambda name: self.field(document, name)
        if self.type is not None:
            value = get("type")
            if value != self.type_text and (not isinstance(value, str) or _bytes(value) != self.type):
                return None
        if self.error is not None:
            value = get("error")
            if not isinstance(value, str) or self.error not in _bytes(value).lower():
                return None
        if self.ids is not None:
            ident = id_text(get("id"))
            if ident is None or _bytes(ident) not in self.ids:
                return None
        if self.before is not None:
            seconds = epoch(get("failedAt"))
            if seconds is None or seconds >= self.before:
                return None
        return document

    def field(self, document: dict[str, Any], name: str) -> Any:
        """``field(e, f, name)`` of the Lua side: e[name], or where the queue's fields setting points."""
        path = self.paths.get(name) if self.paths else None
        if path is None:
            return document.get(name)
        value: Any = document
        for key in path:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value


def epoch(value: Any) -> float | None:
    """``to_epoch`` of the Lua side: as parse_time, but a string longer than 64 bytes is not read."""
    if isinstance(value, str) and not value.isascii() and len(value) <= 64 and len(_bytes(value)) > 64:
        return None
    return parse_time(value)


def lua_text(value: str, limit: int | None = None) -> str:
    """A string as the Lua scripts' JSON reply gives it back: its bytes (cut at ``limit``), read as UTF-8."""
    if value.isascii():
        return value[:limit]
    return _bytes(value)[:limit].decode("utf-8", "replace")


def _exact(raw: bytes, document: dict[str, Any]) -> dict[str, Any]:
    """A partial entry (not UTF-8) as the Lua side decodes it: its strings hold the entry's own bytes
    (``_bytes`` gives them back), not the replacement characters DeadEntry shows."""
    try:
        exact = json.loads(raw.decode("utf-8", "surrogateescape"), strict=False)
    except (ValueError, RecursionError):
        return document
    return exact if isinstance(exact, dict) else document


def _hits(blob: bytes, needle: bytes, ends: list[int], found: set[int]) -> None:
    """Add to ``found`` the index of every entry (``ends``: where each ends in ``blob``) holding ``needle``."""
    size = len(needle)
    at = blob.find(needle)
    while at >= 0:
        index = bisect_right(ends, at)
        if at + size <= ends[index]:
            found.add(index)
            at = blob.find(needle, ends[index])  # on to the next entry
        else:  # straddles two entries: look again from the next byte
            at = blob.find(needle, at + 1)
