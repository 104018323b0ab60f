"""Explain failed links from a bounded window of recent rows: deleted, inserted, forked or dated out of order.

Usage::

    links = LinkExplainer(options, report, record, intact)   # record(kind, position, row, message, **extra)
    pending = links.pending                          # waiting rows, by the hash they name
    for position, row in rows:
        if row[PREV] != last_hash:                   # last_hash: the hash of the row before it
            links.failed(position, row, last_hash)
        elif links.settling:                         # only for a few rows after a clock skew
            links.settle(position, row)
        if pending and row[HASH] in pending:         # only while a row waits for its predecessor
            links.arrived(position, row)
        links.ring.append(row)
    links.finish()

A row's link fails when its ``prevHash`` is not the hash of the row before it. What it
names instead says what happened:

* a row further back, or NULL (the chain start): if another row names the same
  predecessor, two rows claim it — a ``fork`` when they were written within
  ``fork_window`` of each other, else a ``link_break`` (one of them was inserted).
  Otherwise the rows it passes over are out of place and explain themselves (below);
* a row not seen yet: the row waits. If its predecessor comes later, the row is dated
  before it: ``clock_skew``. But if the row right after that predecessor names it too,
  two rows claim it (as above), and the early row is counted as skewed only once a later
  row links to it (else it was the inserted one). If the predecessor never comes,
  ``link_break``: it was deleted, or the row was forged (it names itself, or the row
  after it links past it to the row before it).
* a NULL prevHash is the chain start only if no row before it links to the row before
  it (they are all out of place); else the row starts a new chain.

A row dated before its predecessor is no clock skew when either fails its content
check: the date may be what was edited, and ``content_mismatch`` reports that.

Memory is bounded: ``window`` recent rows, at most ``window`` waiting rows and the hashes
of at most ``window`` early rows (their successors may come after they left the window).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from commands.audit.report import TenantReport, WalkOptions, seconds_between, text
from commands.audit.scheme import CREATED, HASH, ID, PREV

__all__ = ["MAX_EXPLAINED", "LinkExplainer"]

MAX_EXPLAINED = 10_000  # link failures explained per tenant; past this they are only counted


class _Waiting:
    """A row whose predecessor has not been seen (yet), and the row that links past it, if any."""

    __slots__ = ("position", "row", "expected", "skipper")

    def __init__(self, position: int, row: Sequence, expected: bytes | None):
        self.position, self.row, self.expected = position, row, expected
        self.skipper: tuple[Sequence, str] | None = None  # (row, what it links to)


class _Early:
    """A row dated before the predecessor it links to."""

    __slots__ = ("position", "row", "predecessor", "due")

    def __init__(self, position: int, row: Sequence, predecessor: Sequence):
        self.position, self.row, self.predecessor, self.due = position, row, predecessor, 0


def _name(row: Sequence | None) -> str:
    return "the chain start" if row is None else f"row {text(row[ID])}"


class LinkExplainer:
    """The link side of one chain's walk; findings go to ``record``."""

    def __init__(self, options: WalkOptions, report: TenantReport, record: Callable[..., None],
                 intact: Callable[[Sequence], bool]):
        self.options, self.report, self.record = options, report, record
        self.intact = intact  # whether a row still matches its hash (asked only about rows dated out of order)
        self.ring: deque = deque(maxlen=options.window)
        self.pending: dict[bytes, _Waiting] = {}  # by the hash the waiting row names
        self.early: _Early | None = None  # settled by the row after its predecessor
        self.contested: dict[bytes, _Early] = {}  # early rows claimed twice: skewed only if a row links to them
        self.placed: dict[bytes, None] = {}  # hashes of recent early rows, which may have left the window
        self.explained = 0
        self.settling = False  # an early or contested row waits for the rows that follow

    def who(self, row: Sequence) -> str:
        writer = self.options.writer
        name = text(row[writer]) if writer is not None and len(row) > writer else None
        return f" (writer {name})" if name else ""

    # -- the walk's entry points ----------------------------------------------------------
    def failed(self, position: int, row: Sequence, expected: bytes | None) -> None:
        """``row``'s prevHash is not ``expected``, the hash of the row before it."""
        if self.settling:
            self.settle(position, row, linked=False)
        self.explained += 1
        if self.explained > MAX_EXPLAINED:
            self.report.counts["link_break"] = self.report.counts.get("link_break", 0) + 1
            return
        prev = row[PREV]
        if prev is None:
            self._restarted(position, row, expected)
        elif prev in self.pending:
            what = f"a row not before them in the chain ({text(prev)[:12]}…)"
            self._pair(self.pending[prev].row, position, row, what, expected)
        else:
            self._back(position, row, prev, expected)

    def settle(self, position: int, row: Sequence, linked: bool = True) -> None:
        """Every row while :attr:`settling`; ``linked``: its link holds."""
        early, prev = self.early, row[PREV]
        if early is not None:
            self.early = None
            if linked and prev == early.predecessor[HASH]:
                self._contest(early, position, row)
            else:
                self._skewed(early)
        if self.contested:
            if prev in self.contested:
                self._skewed(self.contested.pop(prev))  # a row links to it: it is part of the chain after all
            oldest = next(iter(self.contested.values()), None)
            if oldest is not None and oldest.due < position:
                del self.contested[oldest.row[HASH]]  # nothing links to it: it was the inserted row
        self.settling = self.early is not None or bool(self.contested)

    def arrived(self, position: int, row: Sequence) -> None:
        """``row``'s hash is one a waiting row names (it is in :attr:`pending`)."""
        waiting = self.pending[row[HASH]]
        if waiting.row is row:
            return  # a row naming itself: never its own predecessor
        del self.pending[row[HASH]]
        if waiting.skipper is not None:
            self.report.reordered += 1  # the row that linked past it is explained
        self.early = _Early(waiting.position, waiting.row, row)
        self.placed[waiting.row[HASH]] = None
        if len(self.placed) > self.options.window:
            del self.placed[next(iter(self.placed))]
        self.settling = True

    def finish(self) -> None:
        if self.early is not None:
            self._skewed(self.early)
            self.early = None
        self.contested.clear()
        for waiting in list(self.pending.values()):
            self._missing(waiting)
        self.pending.clear()
        self.settling = False

    # -- where the link points ------------------------------------------------------------
    def _back(self, position: int, row: Sequence, prev: bytes, expected: bytes | None) -> None:
        passed = []
        for earlier in reversed(self.ring):
            if earlier[HASH] == prev:
                break
            passed.append(earlier)
        else:
            if prev in self.placed:
                self.report.reordered += 1  # it links to an early row further back than the window
            else:
                self._wait(position, row, expected)
            return
        rival = next((r for r in reversed(self.ring) if r[PREV] == prev), None)
        if rival is not None:
            self._pair(rival, position, row, _name(earlier), expected)
        else:
            self._passed(row, passed, _name(earlier))

    def _restarted(self, position: int, row: Sequence, expected: bytes | None) -> None:
        """A NULL prevHash after other rows: the chain start only if every row before it is out of place."""
        rival = next((r for r in reversed(self.ring) if r[PREV] is None), None)
        if rival is not None:
            self._pair(rival, position, row, _name(None), expected)
        elif position - 1 == len(self.ring) and not self._linked_any():
            self._passed(row, list(reversed(self.ring)), _name(None))
        else:  # the chain start is out of the window, or rows before it form a chain of their own
            self.record("link_break", position, row,
                        f"row {text(row[ID])} starts a new chain (prevHash is NULL) after {position - 1} rows:"
                        " it was inserted, or the rows before it were rewritten", expected=text(expected), actual=None)

    def _linked_any(self) -> bool:
        """Whether a row in the window links to the row before it."""
        before = None
        for earlier in self.ring:
            if before is not None and earlier[PREV] == before:
                return True
            before = earlier[HASH]
        return False

    def _wait(self, position: int, row: Sequence, expected: bytes | None) -> None:
        self.pending[row[PREV]] = _Waiting(position, row, expected)
        if len(self.pending) > self.options.window:
            oldest = next(iter(self.pending))
            self._missing(self.pending.pop(oldest))

    def _passed(self, row: Sequence, passed: list, target: str) -> None:
        """``row`` links past ``passed`` (newest first); a waiting row among them explains it when it resolves."""
        for earlier in passed:
            waiting = self.pending.get(earlier[PREV])
            if waiting is not None and waiting.row is earlier and waiting.skipper is None:
                waiting.skipper = (row, target)
                return
        self.report.reordered += 1

    # -- findings -------------------------------------------------------------------------
    def _pair(self, rival: Sequence, position: int, row: Sequence, what: str, expected: bytes | None) -> bool:
        """Two rows claim the same predecessor (``what``); True when it is a fork."""
        gap = seconds_between(text(rival[CREATED]) or "", text(row[CREATED]) or "")
        gap_text = "an unknown time" if gap is None else f"{abs(gap):.3f} s"
        both = f"rows {text(rival[ID])}{self.who(rival)} and {text(row[ID])}{self.who(row)}"
        extra = {"expected": text(expected), "actual": text(row[PREV]), "detail": {"rival": text(rival[ID])}}
        if gap is not None and abs(gap) <= self.options.fork_window:
            self.record("fork", position, row, f"{both} both follow {what}, written {gap_text} apart:"
                        " two writers appended concurrently from the same head", **extra)
            return True
        self.record("link_break", position, row, f"{both} both claim {what} as predecessor, {gap_text} apart:"
                    " a row was inserted (the one no later row links to)", **extra)
        return False

    def _contest(self, early: _Early, position: int, row: Sequence) -> None:
        """The row after ``early``'s predecessor names it too."""
        if self._pair(early.row, position, row, _name(early.predecessor), row[PREV]):
            self._skewed(early)  # concurrent writers, one of them dated before the head it read
            return
        early.due = position + self.options.window
        self.contested[early.row[HASH]] = early
        self.settling = True

    def _skewed(self, early: _Early) -> None:
        row, predecessor, writer = early.row, early.predecessor, self.options.writer
        if not (self.intact(row) and self.intact(predecessor)):
            return  # its date may be the edited field: content_mismatch says so, not a clock
        behind = seconds_between(text(row[CREATED]) or "", text(predecessor[CREATED]) or "")
        detail = {"predecessor": text(predecessor[ID]), "seconds_behind": behind}
        if writer is not None:
            detail.update(writer=text(row[writer]), predecessor_writer=text(predecessor[writer]))
        behind_text = "" if behind is None else f"{behind:.3f} s "
        self.record("clock_skew", early.position, row,
                    f"row {text(row[ID])}{self.who(row)} links to row {text(predecessor[ID])}{self.who(predecessor)}"
                    f" but is dated {behind_text}earlier: the links are intact, the writer's clock was behind",
                    detail=detail)

    def _missing(self, waiting: _Waiting) -> None:
        row, position = waiting.row, waiting.position
        if row[PREV] == row[HASH]:
            what, cause = f"row {text(row[ID])} names itself as predecessor (its prevHash is its own hash)", "forged"
        else:
            what = "the first row" if position == 1 else f"row {text(row[ID])}"
            what += " links to a hash no row in the chain has"
            cause = "the row before it was deleted, or this row was forged or re-linked"
        if waiting.skipper is not None:
            skipper, target = waiting.skipper
            what += f", and row {text(skipper[ID])} after it links past it to {target}"
            cause = "it was inserted (forged)"
        self.record("link_break", position, row, f"{what}: {cause}", expected=text(waiting.expected),
                    actual=text(row[PREV]))
