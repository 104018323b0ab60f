"""Writes from many threads sent together, each thread returning only once its own write is done.

Usage::

    pushes = GroupCommit(lambda documents: client.lpush(key, *documents))
    pushes.submit(document)      # returns once a send holding it succeeded; raises what that send raised,
                                 # or NotSent (from that error) when a send ahead of it failed
    appends = GroupCommit(lambda items: [write(item) for item in items])
    appends.submit(item)         # a send that returns a list: each write gets back its own element

The thread that finds no send in flight sends at once, with everything gathered so far; threads
that arrive meanwhile wait, and when that send returns, the first of them sends everything
gathered since (a database's group commit). A thread alone sends its own write at once, with no
wait for company; under load one round trip to Redis carries many writes, where each write had
cost a round trip of its own (a system call each way, the server's wake-up: most of the CPU of
an ack). Writes are sent in the order they were submitted, and each is in exactly one send.

``send`` must end within a bounded time (a socket timeout): the threads behind it wait for it.
When a send fails, the writes gathered behind it are not sent: they raise :class:`NotSent` (its cause
that send's error). A server that did not answer one send within its timeout would most likely keep the
next waiting as long, and a write would wait out two timeouts, the one ahead of it and its own, where
its caller was promised one. So a write waits for at most one send that fails.

An interrupt of the thread leading a send (a signal handler raising KeyboardInterrupt or SystemExit in the
main thread) is that thread's own: the other writes of its send raise :class:`Interrupted` (its cause the
interrupt), not the interrupt itself, which would end threads it was never meant for.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

__all__ = ["GroupCommit", "Interrupted", "NotSent"]

T = TypeVar("T")


class NotSent(Exception):
    """A write that was not sent at all, because the send ahead of it failed (that send's error is the cause)."""


class Interrupted(NotSent):
    """A write whose send was interrupted in the thread leading it (the interrupt is the cause): it may have gone."""


class _Write(Generic[T]):
    __slots__ = ("item", "done", "error", "lead", "result")

    def __init__(self, item: T):
        self.item = item
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.result: Any = None
        self.lead = False  # woken to send the next batch, rather than because its write was sent


class GroupCommit(Generic[T]):
    def __init__(self, send: Callable[[list[T]], Sequence[Any] | Any], *, limit: int = 128):
        self._send = send
        self._limit = limit
        self._lock = threading.Lock()
        self._gathered: list[_Write[T]] = []
        self._sending = False

    def submit(self, item: T) -> Any:
        """Returns once ``item`` was sent: ``send``'s element for it, if ``send`` returned a list, else None."""
        write = _Write(item)
        with self._lock:
            self._gathered.append(write)
            leads, self._sending = not self._sending, True
        if not leads:
            try:
                write.done.wait()
            except BaseException:  # a signal handler raising in the main thread: hand on what it held
                self._abandon(write)
                raise
            if not write.lead:
                if write.error is not None:
                    raise write.error
                return write.result
        with self._lock:  # this write is the first gathered: it goes in this batch
            batch, self._gathered = self._gathered[: self._limit], self._gathered[self._limit:]
        error = None
        try:
            results = self._send([each.item for each in batch])
        except BaseException as exc:  # noqa: BLE001 - every write of the batch learns it
            error = exc
        else:
            if isinstance(results, list):
                if len(results) != len(batch):
                    error = RuntimeError(f"the send returned {len(results)} results for {len(batch)} writes")
                for each, result in zip(batch, results):
                    each.result = result
        with self._lock:
            refused: list[_Write[T]] = []
            if error is not None:  # what gathered behind a failed send is not sent into the same failure
                refused, self._gathered = self._gathered, []
            following = self._lead_next()
        for each in batch[1:]:
            each.error = error
            if error is not None and not isinstance(error, Exception):  # the leading thread's interrupt
                each.error = Interrupted(f"its send was interrupted ({type(error).__name__}): it may have gone")
                each.error.__cause__ = error
            each.done.set()
        for each in refused:
            each.error = NotSent(f"not sent: the send ahead of it failed ({type(error).__name__}: {error})")
            each.error.__cause__ = error
            each.done.set()
        if following is not None:
            following.done.set()
        if error is not None:
            raise error
        return write.result

    def _lead_next(self) -> _Write[T] | None:
        """Under the lock: the first write gathered, marked to lead the next send; None (no send) if none is."""
        following = self._gathered[0] if self._gathered else None
        self._sending = following is not None
        if following is not None:
            following.lead = True
        return following

    def _abandon(self, write: _Write[T]) -> None:
        """A waiting write gave up: still gathered, it is never sent; had it been handed the lead, the next leads."""
        with self._lock:
            if write not in self._gathered:
                return  # in a send already: it is out of our hands
            self._gathered.remove(write)
            following = self._lead_next() if write.lead else None
        if following is not None:
            following.done.set()
