"""One batch of a filtered requeue decided in the bot and written in one transaction: no Lua, no entry in Lua.

Usage (a step of ``RedisListQueue.run_requeue``; None means "let REQUEUE_BATCH do this batch")::

    state = move_batch(client, keys, token, size, decider=LuaFilter.of, clock=time.time)

Under ``WATCH dead task lease`` it reads the lease, the task and the dead list's ``size`` oldest
entries (``LRANGE``), in one round trip, decides them with :class:`~commands.dlq.clientfilter.LuaFilter` (the Lua filter's
rules), then ``MULTI``: ``LTRIM`` them off the dead list, ``LPUSH`` the matches to the ready list
and the rest to the held list (oldest first, as REQUEUE_BATCH pushes them), count them in the task,
``EXEC``. Redis runs only C commands, and the lists and counters end exactly as REQUEUE_BATCH
would leave them. Killed before ``EXEC`` nothing was written; ``EXEC`` is atomic.

It returns None, having written nothing, whenever REQUEUE_BATCH should decide instead: the
lease is not the caller's, the task is not running, its limit is reached, the list is empty, the
filter has no byte pre-check (``LuaFilter.cheap``), a watched key changed before ``EXEC`` (a
producer pushed a dead letter, someone cancelled), or Redis refused a command. The Lua batch
that runs then always makes progress and stays the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TYPE_CHECKING

from commands.dlq.clientfilter import LuaFilter

if TYPE_CHECKING:
    import redis

__all__ = ["move_batch", "available", "reads_fast", "own_connection"]

_TASK_FIELDS = ("status", "total", "scanned", "moved", "limit", "filter_lua", "held_order")


def reads_fast() -> bool:
    """Whether redis-py reads replies with hiredis: without it, reading entries into Python costs more than
    filtering them in Lua, and the Lua scripts do the work."""
    from redis.utils import HIREDIS_AVAILABLE

    return HIREDIS_AVAILABLE


def available(client: Any) -> bool:
    """A client this can run on: one connection of its own to WATCH on (not a cluster client), reading fast."""
    from redis.cluster import RedisCluster

    return reads_fast() and not isinstance(client, RedisCluster) and hasattr(client, "connection_pool")


def move_batch(client: redis.Redis, keys: list[str], token: str, size: int, *,
               decider: Callable[[str], LuaFilter], clock: Callable[[], float]) -> int | None:
    """Move one batch (0 more to do, 1 finished), or None: nothing written, REQUEUE_BATCH's turn."""
    from redis.exceptions import ResponseError

    dead, ready, held, task_key, lease_key = keys
    pool = client.connection_pool
    conn = own_connection(pool)
    watching = broken = False
    try:
        reads = [("WATCH", dead, task_key, lease_key), ("GET", lease_key), ("HMGET", task_key, *_TASK_FIELDS),
                 ("TYPE", ready), ("TYPE", held), ("LRANGE", dead, -size, -1)]
        conn.send_packed_command(conn.pack_commands(reads))
        watching = True
        _, lease, (status, *numbers, text, order), *kinds, items = [conn.read_response() for _ in reads]
        if lease != token.encode() or status != b"running" or text is None:
            return None
        if any(kind not in (b"list", b"none") for kind in kinds):  # REQUEUE_BATCH says what is wrong
            return None
        total, scanned, moved, limit = (int(n) for n in numbers)
        want = min(size, total - scanned)
        here = decider(text.decode())
        if want <= 0 or 0 <= limit <= moved or not here.cheap or not items:
            return None
        items = items[::-1][:want]  # the oldest `want`, oldest first, as RPOP gives them
        chosen = {index for index, _ in here.select(items)[: limit - moved if limit >= 0 else None]}
        go = [raw for index, raw in enumerate(items) if index in chosen] if chosen else []
        stay = [raw for index, raw in enumerate(items) if index not in chosen] if chosen else items
        writes: list[tuple[Any, ...]] = [("MULTI",), ("LTRIM", dead, 0, -(len(items) + 1))]
        if go:
            writes.append(("LPUSH", ready, *go))
        if stay:  # held entries newest at the left (tasks of earlier versions: oldest at the left)
            writes.append(("LPUSH" if order == b"newest-first" else "RPUSH", held, *stay))
        writes += [("HINCRBY", task_key, "scanned", len(items)), ("HINCRBY", task_key, "moved", len(go)),
                   ("HSET", task_key, "updated_at", repr(clock())), ("EXEC",)]
        conn.send_packed_command(_pack(writes))
        replies = [conn.read_response() for _ in writes]
        watching = False  # EXEC ends the WATCH, done or not
        if replies[-1] is None:  # a watched key changed: nothing was written
            return None
    except ResponseError:
        broken = True
        conn.disconnect()  # replies may be left unread on it; its WATCH goes with it
        return None
    except BaseException:
        broken = True
        conn.disconnect()
        raise
    finally:
        if watching and not broken:
            conn.send_command("UNWATCH")
            conn.read_response()
        pool.release(conn)
    more = scanned + len(items) < total and (limit < 0 or moved + len(go) < limit)
    return 0 if more else 1


def own_connection(pool: Any) -> Any:
    """A connection of the pool's to pipeline on by hand (redis-py before 5.3 wants a command name)."""
    try:
        return pool.get_connection()
    except TypeError:
        return pool.get_connection("LRANGE")


def _pack(commands: list[tuple[Any, ...]]) -> list[bytes]:
    """The commands in Redis's protocol: hiredis packs each in C (entries are bytes already)."""
    import hiredis

    return [hiredis.pack_command(command) for command in commands]
