"""The batches of a filtered requeue decided in the bot and written in one transaction each: no entry in Lua.

Usage (the steps of ``RedisListQueue.run_requeue``; None means "let REQUEUE_BATCH do this batch")::

    with ListMover(client, keys, decider=LuaFilter.of, clock=time.time) as mover:
        state = mover.step(token, size)          # 0 more to do, 1 finished, None
    move_batch(client, keys, token, size, decider=LuaFilter.of, clock=time.time)   # one batch, one-off

Under ``WATCH dead task lease`` a batch reads the lease, the task and the dead list's ``size``
oldest entries (``LRANGE``), decides them with :class:`~commands.dlq.clientfilter.LuaFilter`
(the Lua filter's rules), then ``MULTI``: ``LTRIM`` them off the dead list, ``LPUSH`` the matches
to the ready list and the rest to the held list (oldest first, as REQUEUE_BATCH pushes them),
count them in the task, ``EXEC``. Redis runs only C commands, and the lists and counters end
exactly as REQUEUE_BATCH would leave them. Killed before ``EXEC`` nothing was written; ``EXEC``
is atomic. A mover keeps one connection for the run and sends each ``EXEC`` together with the
next batch's ``WATCH`` and reads, so a batch costs one round trip.

A step returns None, having written nothing, whenever REQUEUE_BATCH should decide instead: the
lease is not the caller's, the task is not running, its limit is reached, the list is empty, the
filter has no byte pre-check (``LuaFilter.cheap``), a candidate entry is one only cjson reads
(``Undecided``), a watched key changed before ``EXEC`` (a
producer pushed a dead letter, someone cancelled, the lease was renewed), or Redis refused a
command. The Lua batch that runs then always makes progress and stays the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TYPE_CHECKING

from commands.dlq.clientfilter import LuaFilter, Undecided

if TYPE_CHECKING:
    import redis

__all__ = ["ListMover", "move_batch", "available", "reads_fast", "own_connection"]

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


class ListMover:
    """The batches of one run on one connection of its own: each EXEC goes out with the next batch's
    WATCH and reads, so a batch costs one round trip. ``close()`` hands the connection back."""

    def __init__(self, client: redis.Redis, keys: list[str], *, decider: Callable[[str], LuaFilter],
                 clock: Callable[[], float]):
        self.client, self.keys, self.decider, self.clock = client, keys, decider, clock
        self.conn: Any = None
        self.ahead: int | None = None  # the size of the next batch whose WATCH and reads are sent, unread

    def __enter__(self) -> "ListMover":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reads(self, size: int) -> list[tuple[Any, ...]]:
        dead, ready, held, task_key, lease_key = self.keys
        return [("WATCH", dead, task_key, lease_key), ("GET", lease_key), ("HMGET", task_key, *_TASK_FIELDS),
                ("TYPE", ready), ("TYPE", held), ("LRANGE", dead, -size, -1)]

    def step(self, token: str, size: int) -> int | None:
        """Move one batch (0 more to do, 1 finished), or None: nothing written, REQUEUE_BATCH's turn."""
        from redis.exceptions import ResponseError

        if self.conn is None:
            self.conn = own_connection(self.client.connection_pool)
        conn = self.conn
        try:
            if self.ahead is not None and self.ahead != size:
                self._unwatch(pending=len(self._reads(0)))
            if self.ahead is None:
                conn.send_packed_command(conn.pack_commands(self._reads(size)))
            self.ahead = None
            state, chained = self._move(conn, token, size)
            if chained and state is None:  # EXEC found a watched key changed: the reads sent after it go too
                self._unwatch(pending=len(self._reads(0)))
            elif chained:
                self.ahead = size
            return state
        except ResponseError:
            self._drop()  # replies may be left unread on it; its WATCH goes with it
            return None
        except BaseException:
            self._drop()
            raise

    def _move(self, conn: Any, token: str, size: int) -> tuple[int | None, bool]:
        """The batch whose reads were sent: (its state or None, whether the next one's reads went out)."""
        dead, ready, held, task_key, lease_key = self.keys
        _, lease, (status, *numbers, text, order), *kinds, items = [conn.read_response() for _ in self._reads(0)]
        if (lease != token.encode() or status != b"running" or text is None
                or any(kind not in (b"list", b"none") for kind in kinds)):  # REQUEUE_BATCH says what is wrong
            self._unwatch()
            return None, False
        total, scanned, moved, limit = (int(n) for n in numbers)
        want = min(size, total - scanned)
        here = self.decider(text.decode())
        if want <= 0 or 0 <= limit <= moved or not here.cheap or not items:
            self._unwatch()
            return None, False
        items = items[::-1][:want]  # the oldest `want`, oldest first, as RPOP gives them
        try:
            chosen = [index for index, _ in here.select(items)[: limit - moved if limit >= 0 else None]]
        except Undecided:  # an entry only cjson can read: the Lua batch decides this one
            self._unwatch()
            return None, False
        go, stay = _split(items, chosen)
        writes: list[tuple[Any, ...]] = [("MULTI",), ("LTRIM", dead, 0, -(len(items) + 1))]
        if go:
            writes.append(("LPUSH", ready, *go))
        if stay:  # held entries newest at the left (tasks of earlier versions: oldest at the left)
            writes.append(("LPUSH" if order == b"newest-first" else "RPUSH", held, *stay))
        writes += [("HINCRBY", task_key, "scanned", len(items)), ("HINCRBY", task_key, "moved", len(go)),
                   ("HSET", task_key, "updated_at", repr(self.clock())), ("EXEC",)]
        more = scanned + len(items) < total and (limit < 0 or moved + len(go) < limit)
        # After EXEC (which ends this WATCH, done or not), the next batch's WATCH and reads.
        # Never a health-check PING first: one that found the connection dead would reconnect (with retries
        # configured) and send MULTI/EXEC on a connection that never WATCHed, deciding on stale reads.
        conn.send_packed_command(_pack(writes + (self._reads(size) if more else [])), check_health=False)
        replies = [conn.read_response() for _ in writes]
        if replies[-1] is None:  # a watched key changed before EXEC: nothing was written
            return None, more
        return (0 if more else 1), more

    def _unwatch(self, pending: int = 0) -> None:
        """Read ``pending`` replies of reads sent ahead, and end their WATCH."""
        for _ in range(pending):
            self.conn.read_response()
        self.conn.send_command("UNWATCH")
        self.conn.read_response()
        self.ahead = None

    def _drop(self) -> None:
        """Close the connection (a WATCH and unread replies go with it)."""
        if self.conn is not None:
            self.conn.disconnect()
            self.client.connection_pool.release(self.conn)
        self.conn, self.ahead = None, None

    def close(self) -> None:
        if self.conn is None:
            return
        try:
            if self.ahead is not None:
                self._unwatch(pending=len(self._reads(0)))
        except Exception:
            self._drop()
            return
        self.client.connection_pool.release(self.conn)
        self.conn = None


def move_batch(client: redis.Redis, keys: list[str], token: str, size: int, *,
               decider: Callable[[str], LuaFilter], clock: Callable[[], float]) -> int | None:
    """One batch on a connection of its own (ListMover.step): 0 more to do, 1 finished, None REQUEUE_BATCH's turn."""
    with ListMover(client, keys, decider=decider, clock=clock) as mover:
        return mover.step(token, size)


def _split(items: list[bytes], chosen: list[int]) -> tuple[list[bytes], list[bytes]]:
    """``items`` at the ``chosen`` indexes (ascending), and the others, each in order: the others taken
    a run at a time, not one by one."""
    go = [items[index] for index in chosen]
    stay: list[bytes] = []
    start = 0
    for index in chosen:
        stay += items[start:index]
        start = index + 1
    stay += items[start:]
    return go, stay


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
