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
"""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager

__all__ = ["Bound"]


class Bound:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.cut = False
        self.due = 0.0
        self._fd = -1

    @contextmanager
    def on(self, conn):
        """Shut ``conn``'s socket if the block is still running ``seconds`` from now."""
        self._fd, self.due = conn.fileno(), time.monotonic() + self.seconds
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

    def _shut(self) -> None:  # the watcher's, with its lock held: the block is still running
        self.cut = True
        try:
            sock = socket.socket(fileno=os.dup(self._fd))
        except OSError:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.close()  # the duplicate only: libpq's own descriptor stays, now at end of file


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
                    if bound.due <= now:
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
