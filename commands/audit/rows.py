"""Stream rows out of PostgreSQL with ``COPY ... TO STDOUT``, as the server's own text.

Usage::

    for fields in copy_rows(conn, query):     # fields: list[bytes | None], one per column
        ...

COPY hands over one row per protocol message and no Python object per value. The
messages are taken straight from libpq (``PQgetCopyData``, blocking) rather than
through psycopg's per-row generator, which alone cost more than hashing the row;
psycopg's ``Copy`` block still owns the operation, so an early exit or an error
cancels and drains it as usual. Text-format escapes (``\\t``, ``\\n``, ``\\\\`` ...)
are undone only on rows that have any; ``\\N`` is NULL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from psycopg import sql

__all__ = ["copy_rows"]

_ESCAPES = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v", b"\\": b"\\"}
_ESCAPE = re.compile(rb"\\(.)")


def _unescape(value: bytes) -> bytes | None:
    if value == b"\\N":
        return None
    return _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(1)), value)


def copy_rows(conn, query: sql.Composable, progress: Callable[[int], None] | None = None,
              every: int = 200_000) -> Iterator[list[bytes | None]]:
    """The rows of ``query``; ``progress(rows so far)`` is called every ``every`` rows."""
    from psycopg import errors, pq, sql

    with conn.cursor() as cur, cur.copy(sql.SQL("COPY ({}) TO STDOUT").format(query)):
        pgconn = conn.pgconn
        read = pgconn.get_copy_data
        seen, countdown = 0, every
        while True:
            size, data = read(0)
            if size < 0:
                break
            countdown -= 1
            if not countdown:
                seen, countdown = seen + every, every
                if progress is not None:
                    progress(seen)
            line = bytes(data[:-1])
            fields = line.split(b"\t")
            if b"\\" in line:
                fields = [_unescape(value) for value in fields]
            yield fields
        while (result := pgconn.get_result()) is not None:
            if result.status != pq.ExecStatus.COMMAND_OK:
                raise errors.error_from_result(result, encoding=conn.info.encoding)
