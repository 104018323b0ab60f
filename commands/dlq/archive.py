"""The PostgreSQL side of ``dlq trim``: archive rows, fenced by a per-task epoch.

Usage::

    archive = TrimArchive(pool, "opsbot", queue_settings)
    archive.begin(task_id, keep=1, to_drop=5000)   # after taking the queue's lease: epoch += 1
    archive.settle(task_id, dropped)               # rows at or past `dropped` were never removed: gone
    archive(task_id, dropped, oldest_first)        # one transaction: fence, drop stale rows, insert
    archive.finish(task_id, "done")

Redis's ``dropped`` counter is authoritative: the compare-and-remove script raises it in the
same atomic step that removes a batch, so rows of a task with ordinal >= dropped describe
entries that are still in Redis (or were requeued since). Every transaction here deletes them
before writing, and only while ``epoch`` is still this trimmer's: a trimmer that lost its
lease is fenced off in PostgreSQL (and, by the lease token, in Redis).
"""

from __future__ import annotations

import struct
from itertools import chain
from typing import TYPE_CHECKING

from commands.dlq.settings import QueueSettings
from bot.core.invocation import CommandError

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

__all__ = ["TrimArchive", "Fenced"]

# COPY's binary format (PostgreSQL docs, "COPY", Binary Format): a signature, then each row as a field
# count and length-prefixed fields, then -1. The constant fields are framed once per batch.
SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
TRAILER = struct.pack(">h", -1)
_ORDINAL_AND_LENGTH = struct.Struct(">iqi").pack  # the bigint ordinal (8 bytes), then the entry's length


def binary_rows(task_id: str, queue: str, dead_key: str, first: int, entries: list[bytes]) -> bytes:
    """The rows (task_id, queue, dead_key, ordinal, entry) of ``entries`` as ordinals first.., COPY binary."""
    return b"".join((SIGNATURE, _rows(task_id, queue, dead_key, first, entries), TRAILER))


def _rows(task_id: str, queue: str, dead_key: str, first: int, entries: list[bytes]) -> bytes:
    """The rows alone (no signature, no trailer)."""
    fixed = struct.pack(">h", 5) + b"".join(struct.pack(">i", len(v)) + v
                                            for v in (task_id.encode(), queue.encode(), dead_key.encode()))
    return b"".join(chain.from_iterable((fixed, _ORDINAL_AND_LENGTH(8, ordinal, len(entry)), entry)
                                        for ordinal, entry in enumerate(entries, first)))


class Fenced(CommandError):
    """Another trimmer took this task over: this one must stop without writing anything."""


class TrimArchive:
    def __init__(self, pool: ConnectionPool, schema: str, queue: QueueSettings):
        from psycopg import sql

        self.pool = pool
        self.queue = queue
        self.table = f"{schema}.dlq_archive"  # for people: where the dropped entries are
        self.archive = sql.Identifier(schema, "dlq_archive")
        self.tasks = sql.Identifier(schema, "dlq_trim_tasks")
        self.epoch: int | None = None

    def begin(self, task_id: str, *, keep: int | None = None, to_drop: int | None = None) -> int:
        """Take the task's next epoch (call after taking the lease); older epochs are fenced off."""
        from psycopg import sql

        with self.pool.connection() as conn, conn.transaction():
            row = conn.execute(
                sql.SQL("INSERT INTO {} (task_id, queue, epoch, keep, to_drop) VALUES (%s, %s, 1, %s, %s)"
                        " ON CONFLICT (task_id) DO UPDATE SET epoch = {}.epoch + 1, taken_at = now(),"
                        " updated_at = now() RETURNING epoch").format(self.tasks, self.tasks),
                (task_id, self.queue.name, keep, to_drop)).fetchone()
        self.epoch = row[0]
        return self.epoch

    def _fence(self, cur, task_id: str, delete_from: int | None = None) -> None:
        """Go on only while the epoch is still ours; with ``delete_from``, also delete this task's rows
        at or past that ordinal, in the same statement (one round trip; undone if fenced off)."""
        from psycopg import sql

        if self.epoch is None:
            raise Fenced(f"trim task {task_id}: no epoch taken")
        fence = sql.SQL("UPDATE {} SET updated_at = now() WHERE task_id = %s AND epoch <= %s RETURNING epoch").format(
            self.tasks)
        if delete_from is None:
            cur.execute(fence, (task_id, self.epoch))
        else:
            cur.execute(sql.SQL("WITH fence AS ({}), stale AS (DELETE FROM {} WHERE task_id = %s AND ordinal >= %s)"
                                " SELECT epoch FROM fence").format(fence, self.archive),
                        (task_id, self.epoch, task_id, delete_from))
        if cur.fetchone() is None:
            raise Fenced(f"trim task {task_id} of {self.queue.name!r} was taken over by another trimmer")

    def settle(self, task_id: str, dropped: int) -> int:
        """Delete the rows of entries that were never removed (ordinal >= dropped); returns how many."""
        from psycopg import sql

        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            self._fence(cur, task_id)
            cur.execute(sql.SQL("DELETE FROM {} WHERE task_id = %s AND ordinal >= %s").format(self.archive),
                        (task_id, dropped))
            return cur.rowcount

    def __call__(self, task_id: str, first: int, entries: list[bytes]) -> None:
        """Archive ``entries`` as ordinals first.. (first = Redis's `dropped` now), durably, or raise.

        ``entries`` may also be read while they are archived: an object with ``pieces()`` (an
        iterator of lists of entries) is streamed into the COPY piece by piece, so PostgreSQL
        stores one piece while the next is read (see trimpieces.StreamedChunk)."""
        from psycopg import sql

        pieces = entries.pieces() if hasattr(entries, "pieces") else iter((entries,))
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            self._fence(cur, task_id, delete_from=first)
            copy = sql.SQL("COPY {} (task_id, queue, dead_key, ordinal, entry) FROM STDIN (FORMAT BINARY)")
            with cur.copy(copy.format(self.archive)) as out:
                out.write(SIGNATURE)
                for piece in pieces:
                    out.write(_rows(task_id, self.queue.name, self.queue.dead, first, piece))
                    first += len(piece)
                out.write(TRAILER)

    def finish(self, task_id: str, status: str) -> None:
        from psycopg import sql

        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            self._fence(cur, task_id)
            cur.execute(sql.SQL("UPDATE {} SET status = %s WHERE task_id = %s").format(self.tasks),
                        (status, task_id))
