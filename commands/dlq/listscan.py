"""A filtered scan of a dead list shared between Redis's core and the bot's: the preview of a filtered requeue.

Usage (inside ``RedisListQueue.scan``)::

    here = LuaFilter.of(lua_filter)
    if here.cheap:
        split_scan(client, dead, lua_filter, here, summary, chunk=1000, samples=10, fields=fields)

The list is read a window of ``WINDOW`` chunks at a time, oldest first. Of each window the scan
script (``lua.SCAN``) counts the oldest ``LUA_CHUNKS`` chunks in Redis, while the bot counts the
window before it, read with one plain ``LRANGE``, with :class:`~commands.dlq.clientfilter.LuaFilter`:
the requests for the next window are sent before this one is counted, so both cores work at once.
Every chunk is folded into the summary in order with the statistics the script gives for it, so
the summary is the one the script alone would give. On a Redis Cluster client (no connection of
its own to pipeline on) the bot counts every chunk, with plain ``LRANGE`` calls.
"""

from __future__ import annotations

import json
import time
from typing import Any, TYPE_CHECKING

from commands.dlq import lua
from commands.dlq.backend import ScanSummary
from commands.dlq.clientfilter import LuaFilter, Undecided, epoch, lua_number, lua_text
from commands.dlq.listmove import own_connection

if TYPE_CHECKING:
    import redis

__all__ = ["GROUP_KEY_CHARS", "WINDOW", "LUA_CHUNKS", "LUA_MOST", "split_scan", "fold_chunk", "fold_reply",
           "fold_items"]

GROUP_KEY_CHARS = 120
WINDOW = 10      # chunks per round trip
LUA_CHUNKS = 3   # of the first, counted by the script in Redis (the rest here); then as Redis keeps up,
LUA_MOST = WINDOW - 1  # up to this many


def split_scan(client: redis.Redis, dead: str, lua_filter: str, here: LuaFilter, summary: ScanSummary, *,
               chunk: int, samples: int, fields: dict[str, str] | None) -> ScanSummary:
    """Count the dead list's matching entries into ``summary`` (whose ``total`` is its length), oldest first."""
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        return _scan_here(client, dead, lua_filter, here, summary, chunk=chunk, samples=samples, fields=fields)
    span = chunk * WINDOW

    def requests(window: int, scripted: int) -> list[tuple[Any, ...]]:
        base = window * span
        scripts = [("EVAL", lua.SCAN, 1, dead, lua_filter, base + i * chunk, chunk, samples, GROUP_KEY_CHARS)
                   for i in range(scripted)]
        return [*scripts, ("LRANGE", dead, -(base + span), -(base + scripted * chunk + 1))]

    pool = client.connection_pool
    conn = own_connection(pool)
    try:
        window, scripted = 0, LUA_CHUNKS
        asked = requests(window, scripted)
        conn.send_packed_command(conn.pack_commands(asked))
        while True:
            started = time.perf_counter()
            replies = [conn.read_response() for _ in asked]
            waited = time.perf_counter() - started
            base, mine = window * span, scripted * chunk
            more = base + span < summary.total and len(replies[-1]) == span - mine
            if more:  # Redis counts the next window's first chunks while this one is counted here
                # The share that keeps both busy: less for Redis when it kept us waiting, more when it did not.
                nxt = max(0, scripted - 1) if waited > 0.002 else min(LUA_MOST, scripted + 1)
                asked = requests(window + 1, nxt)
                conn.send_packed_command(conn.pack_commands(asked))
            ended = False
            for i, reply in enumerate(replies[:-1]):
                if base + i * chunk >= summary.total or not fold_reply(summary, reply, samples, fields):
                    ended = True
                    break
            items = replies[-1]
            items.reverse()  # oldest first
            for start in range(0, len(items), chunk):
                if ended or base + mine + start >= summary.total:
                    break
                fold_chunk(client, dead, lua_filter, summary, here, items[start:start + chunk], base + mine + start,
                           samples, fields)
            if not more:
                break
            window, scripted = window + 1, nxt
    except BaseException:
        conn.disconnect()  # replies may be left unread on it
        raise
    finally:
        pool.release(conn)
    return summary


def _scan_here(client: Any, dead: str, lua_filter: str, here: LuaFilter, summary: ScanSummary, *, chunk: int, samples: int,
               fields: dict[str, str] | None) -> ScanSummary:
    """Every chunk counted here, read with plain LRANGEs of ``WINDOW`` chunks."""
    offset, span = 0, chunk * WINDOW
    while offset < summary.total:
        items = client.lrange(dead, -(offset + span), -(offset + 1))
        items.reverse()  # oldest first
        for start in range(0, len(items), chunk):
            if offset + start >= summary.total:
                break
            fold_chunk(client, dead, lua_filter, summary, here, items[start:start + chunk], offset + start, samples,
                       fields)
        if len(items) < span:
            break
        offset += span
    return summary


def fold_chunk(client: Any, dead: str, lua_filter: str, summary: ScanSummary, here: LuaFilter, items: list[bytes],
               offset: int, samples: int, fields: dict[str, str] | None) -> None:
    """Fold one chunk read ``offset`` entries from the oldest: counted here, or by the scan script when
    it holds an entry only cjson reads (``Undecided``)."""
    try:
        fold_items(summary, here, items, samples, fields)
    except Undecided:
        reply = client.eval(lua.SCAN, 1, dead, lua_filter, offset, len(items), samples, GROUP_KEY_CHARS)
        fold_reply(summary, reply, samples, fields)


def fold_reply(summary: ScanSummary, reply: list[bytes], samples: int, fields: dict[str, str] | None) -> int:
    """Fold one reply of the scan script into ``summary``; how many entries it read."""
    # Group keys are entry bytes: they need not be UTF-8 (a poisoned entry must not stop the scan).
    stats = json.loads(reply[0].decode("utf-8", "replace"))
    if stats["scanned"]:
        summary.add(stats, reply[1:], samples, fields)
    return stats["scanned"]


def fold_items(summary: ScanSummary, here: LuaFilter, items: list[bytes], samples: int,
               fields: dict[str, str] | None) -> None:
    """Fold one chunk (oldest first) into ``summary`` with the statistics the scan script gives for it."""
    types: dict[str, int] = {}
    errors: dict[str, int] = {}
    oldest = newest = None
    picked: list[bytes] = []
    for index, document in here.select(items):
        get = document.get if not here.paths else lambda name: here.field(document, name)
        kind, error = get("type"), get("error")
        # Group keys as the script's JSON reply gives them: its bytes, the error's first 120 of them.
        key = lua_text(kind) if isinstance(kind, str) else "(none)"
        types[key] = types.get(key, 0) + 1
        key = lua_text(error, GROUP_KEY_CHARS) if isinstance(error, str) else "(none)"
        errors[key] = errors.get(key, 0) + 1
        seconds = epoch(get("failedAt"))
        if seconds is not None:
            oldest = seconds if oldest is None or seconds < oldest else oldest
            newest = seconds if newest is None or seconds > newest else newest
        if len(picked) < samples:
            picked.append(items[index])
    stats: dict[str, Any] = {"scanned": len(items), "matched": sum(types.values()), "opaque": 0, "types": types,
                             "errors": errors}
    if oldest is not None:
        stats["oldest"], stats["newest"] = lua_number(oldest), lua_number(newest)
    if items:
        summary.add(stats, picked, samples, fields)
