"""A bound, kept by the client, on what a PostgreSQL connection does: past it, the connection's socket is shut.

Usage::

    bound = Bound(10.0)
    with pool.connection() as conn, bound.on(conn), conn.transaction():
        ...                     # blocked past 10 s: the call fails with psycopg.OperationalError
    bound.cut                   # True when the bound ended it
    bound.renew()               # inside the block, after progress: ``seconds`` from now again

A server that froze (a paused VM, a storage stall, every process stopped) answers nothing, and the kernel of a
live host still acknowledges what is sent to it: the server's ``statement_timeout`` never fires, TCP keepalives
are answered, and libpq has no timeout of its own for a query, so the call would wait for ever. When the bound
passes, another thread shuts the socket down; the blocked call returns at once ("server closed the connection
unexpectedly") and the pool discards the connection. PostgreSQL, once it resumes, finds its client gone and
rolls the transaction back, unless its ``COMMIT`` had been received: a bound that passes during the commit leaves
the outcome unknown, as any connection lost then does.

The socket is shut only while the block is running, so a connection back in its pool is never touched, and a
connection that was cut is closed when the block ends, so its pool drops it. One watcher thread serves every
bound of a process.

``Silence(seconds)`` is the bound for work of any length (a target database's transaction, which may read for
minutes): it cuts only when a command has been in flight (libpq's transaction status is ``ACTIVE``) for
``seconds`` with no data going either way on the socket, as the kernel's times of its last data each way tell
(``TCP_INFO``; over a Unix socket it never cuts). Set above the statement timeout, a server that works has
answered by then, if only with an error; a command busy with rows it already got is idle in its transaction,
not in flight. A client that stops reading a streamed answer (``COPY ... TO STDOUT``) for that long would be cut.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from contextlib import contextmanager

from psycopg.pq import TransactionStatus

__all__ = ["Bound", "Silence"]

POLL = 1.0  # seconds between two looks at a silence's socket


class Bound:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.cut = False
        self.due = 0.0
        self._fd, self._pgconn = -1, None

    @contextmanager
    def on(self, conn):
        """Shut ``conn``'s socket if the block is still running ``seconds`` from now."""
        self._fd, self._pgconn, self.due = conn.fileno(), conn.pgconn, time.monotonic() + self.seconds
        _watch().add(self)
        try:
            yield self
        finally:
            _watch().remove(self)
            if self.cut:  # even if the block got its answer just before: the socket is shut, so the pool drops it
                conn.close()

    def renew(self) -> None:
        """The block made progress: ``seconds`` from now, unless the bound has passed already."""
        _watch().renew(self)

    def _passed(self, now: float) -> bool:  # the watcher's, once ``due``: cut now, or look again at ``due``
        return True

    def _shut(self) -> None:  # the watcher's, with its lock held: the block is still running
        self.cut = True
        try:
            sock = _socket(self._fd)
        except OSError:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.close()  # the duplicate only: libpq's own descriptor stays, now at end of file


class Silence(Bound):
    """Cut when a command has been in flight ``seconds`` with nothing at all going either way meanwhile."""

    def _passed(self, now: float) -> bool:
        self.due = now + POLL
        if self._pgconn.transaction_status != TransactionStatus.ACTIVE:  # no command in flight: nothing awaited
            return False
        try:
            sock = _socket(self._fd)
        except OSError:
            return False
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 64)
        except OSError:  # not TCP: nothing to tell silence by
            self.due = now + 3600
            return False
        finally:
            sock.close()
        sent_ago, received_ago = struct.unpack_from("=I4xI", info, 44)  # tcpi_last_data_sent, tcpi_last_data_recv (ms)
        return min(sent_ago, received_ago) >= self.seconds * 1000


def _socket(fd: int) -> socket.socket:
    return socket.socket(fileno=os.dup(fd))


class _Watcher:
    def __init__(self):
        self._lock = threading.Condition()
        self._bounds: dict[int, Bound] = {}
        threading.Thread(target=self._run, name="opsbot-pg-bound", daemon=True).start()

    def add(self, bound: Bound) -> None:
        with self._lock:
            self._bounds[id(bound)] = bound
            self._lock.notify()

    def renew(self, bound: Bound) -> None:
        with self._lock:  # later than before: the watcher, waking at the old time, finds it not due yet
            if id(bound) in self._bounds:
                bound.due = time.monotonic() + bound.seconds

    def remove(self, bound: Bound) -> None:
        with self._lock:
            self._bounds.pop(id(bound), None)

    def _run(self) -> None:
        with self._lock:
            while True:
                now = time.monotonic()
                for key, bound in list(self._bounds.items()):
                    if bound.due <= now and bound._passed(now):
                        del self._bounds[key]
                        bound._shut()
                due = min((bound.due for bound in self._bounds.values()), default=None)
                self._lock.wait(None if due is None else due - now)


_watcher: _Watcher | None = None
_owner = 0  # the process that started it: a forked child starts its own
_start = threading.Lock()


def _watch() -> _Watcher:
    global _watcher, _owner
    if _watcher is None or _owner != os.getpid():
        with _start:
            if _watcher is None or _owner != os.getpid():
                _watcher, _owner = _Watcher(), os.getpid()
    return _watcher
