"""What ``dlq trim`` reads from a dead list and sends back to remove it.

Usage::

    chunk = StreamedChunk(pipe, dead_key, n)    # archive(task_id, first, chunk) reads it piece by piece
    chunk.entries                               # then: what was read, oldest first
    for part in parts(oldest_first, batch):     # runs a compare-and-remove (lua.TRIM_POP) checks
        lengths, joined = proof(part)           # what it compares them with
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["STREAM_PIECE", "PART_BYTES", "ShortRead", "StreamedChunk", "parts", "proof", "unchecked"]

STREAM_PIECE = 1000         # entries read at a time while a watched chunk streams into the archive
PART_BYTES = 4 * 2 ** 20    # one compare-and-remove sends at most this many entry bytes back (or one entry)


def proof(oldest_first: list[bytes]) -> tuple[str, bytes]:
    """What TRIM_POP compares the oldest entries with: their lengths and their bytes, newest first."""
    newest_first = oldest_first[::-1]
    return ",".join(map(str, map(len, newest_first))), b"".join(newest_first)


@contextmanager
def unchecked(connection: Any) -> Iterator[None]:
    """No health-check PING on ``connection`` while it WATCHes. redis-py PINGs before a command once
    the client's ``health_check_interval`` has passed, and a PING that finds the connection dead
    reconnects silently: what followed (the reads, MULTI/EXEC) ran on a connection that never
    watched, and EXEC could not fail. Without the PING a dead connection fails the next command,
    which a pipeline that watches turns into a WatchError."""
    interval = connection.health_check_interval
    connection.health_check_interval = 0
    try:
        yield
    finally:
        connection.health_check_interval = interval


class ShortRead(Exception):
    """The list held fewer entries than a StreamedChunk was to read: nothing may be archived."""


class StreamedChunk:
    """The ``n`` oldest entries of a list, read ``piece`` at a time while an archive consumes them.

    ``pieces()`` reads and yields them oldest first (raising ShortRead if the list is shorter);
    otherwise the object is the list of them (len(), iteration, indexing read them all at once
    if ``pieces()`` has not). Reading through ``reader`` (a connection under WATCH) keeps every
    read inside that watch."""

    def __init__(self, reader: Any, key: str, n: int, piece: int | None = None):
        self.reader, self.key, self.n, self.piece = reader, key, n, piece or STREAM_PIECE
        self.entries: list[bytes] = []
        self.complete = False

    def pieces(self):
        self.entries, self.complete = [], False
        for skip in range(0, self.n, self.piece):
            want = min(self.piece, self.n - skip)
            got = self.reader.lrange(self.key, -(skip + want), -(skip + 1))[::-1]
            if len(got) < want:
                raise ShortRead(f"{self.key}: {skip + len(got)} of {self.n} oldest entries")
            self.entries += got
            yield got
        self.complete = True

    def _all(self) -> list[bytes]:
        if not self.complete:
            for _ in self.pieces():
                pass
        return self.entries

    def __len__(self) -> int:
        return len(self._all())

    def __iter__(self):
        return iter(self._all())

    def __getitem__(self, index):
        return self._all()[index]


def parts(oldest_first: list[bytes], batch: int) -> list[list[bytes]]:
    """Runs of up to ``batch`` entries and PART_BYTES bytes (at least one entry each), in order."""
    runs, start, size = [], 0, 0
    for end, entry in enumerate(oldest_first):
        if end > start and (end - start == batch or size + len(entry) > PART_BYTES):
            runs.append(oldest_first[start:end])
            start, size = end, 0
        size += len(entry)
    runs.append(oldest_first[start:])
    return runs
