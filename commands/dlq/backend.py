"""What a dead-letter backend offers the ``dlq`` commands: the :class:`DeadLetterBackend` protocol.

Usage::

    backend = backend_of(inv, queue)                 # commands.dlq.factory: one table, by queue.backend
    backend.capabilities.require(TRIM, queue.name)   # CommandError("... trim works on redis-list queues")
    depth = backend.depth()                          # Depth(ready=None, dead=45) for an API without a ready count
    summary = backend.scan(Filters(type="x"), samples=3)

The commands never ask which backend they hold: they ask the protocol, and where backends
differ in kind (a resumable requeue task under a lease, or replaying entries one by one
through an API) they ask :attr:`DeadLetterBackend.capabilities`. A new backend (RQ,
Sidekiq, BullMQ ...) is one module implementing the protocol (:class:`Refusing` supplies
the refusals of what it does not support) and one entry in ``commands.dlq.factory.BACKENDS``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from bot.core.invocation import CommandError
from commands.dlq.entries import DeadEntry, Filters, safe_text

if TYPE_CHECKING:
    from commands.dlq.lease import Holder
    from commands.dlq.redis_list import RequeueReport, Task
    from commands.dlq.trimmer import TrimReport, TrimTask

__all__ = ["DeadLetterBackend", "Capabilities", "Refusing", "Depth", "ScanSummary", "ReplayResult", "spread",
           "SAMPLE_ENTRIES",
           "REQUEUE", "RESUME", "REPLAY", "TRIM", "CANCEL", "READY_DEPTH", "RATE", "OPERATIONS"]

# What a backend may support (Capabilities.supported):
REQUEUE = "requeue"          # put dead letters back to work (``dlq requeue``)
RESUME = "resume"            # ... as one task under the queue's lease, resumed after a crash (start/run_requeue)
REPLAY = "replay"            # ... entry by entry (entries + replay), idempotently
TRIM = "trim"                # drop all but the newest N, archiving them first (``dlq trim``)
CANCEL = "cancel"            # stop a running requeue task (``dlq cancel``)
READY_DEPTH = "ready-depth"  # depth() knows how many jobs are ready, not only the dead ones
RATE = "rate"                # requeue --rate paces the work
OPERATIONS = (REQUEUE, RESUME, REPLAY, TRIM, CANCEL, READY_DEPTH, RATE)

MAX_GROUPS = 200
SAMPLE_ENTRIES = 1000  # the most entries a sample (the preview of an unfiltered requeue) reads
SAMPLE_SPANS = 10      # ... in this many runs, from the oldest end to the newest


def spread(total: int, entries: int = SAMPLE_ENTRIES, spans: int = SAMPLE_SPANS) -> list[tuple[int, int]]:
    """``(offset, count)`` runs, counted from the oldest entry, reading at most ``entries`` of ``total``
    positions spread evenly over them: the first run starts at the oldest, the last ends at the newest."""
    if total <= entries:
        return [(0, total)] if total > 0 else []
    span = entries // spans
    return [(round(i * (total - span) / (spans - 1)), span) for i in range(spans)]


@dataclass(frozen=True)
class Capabilities:
    """What a backend supports, and for each thing it does not, the sentence that says why.

    ``why_not`` values are templates: ``{queue!r}`` is the queue's name."""

    supported: frozenset[str]
    why_not: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = (set(self.supported) | set(self.why_not)) - set(OPERATIONS)
        if unknown:
            raise ValueError(f"unknown capabilities: {', '.join(sorted(unknown))}")
        unexplained = set(OPERATIONS) - set(self.supported) - set(self.why_not)
        if unexplained:
            raise ValueError(f"say why these are not supported: {', '.join(sorted(unexplained))}")

    def supports(self, operation: str) -> bool:
        return operation in self.supported

    def refusal(self, operation: str, queue: str) -> str:
        return self.why_not[operation].format(queue=queue)

    def require(self, operation: str, queue: str) -> None:
        """Raise CommandError with the reason when ``operation`` is not supported."""
        if not self.supports(operation):
            raise CommandError(self.refusal(operation, queue))


@dataclass(frozen=True)
class Depth:
    ready: int | None  # None: the backend does not know (no READY_DEPTH)
    dead: int
    oldest: float | None = None
    held: int = 0      # set aside by an unfinished requeue task


@dataclass(frozen=True)
class ReplayResult:
    id: str
    ok: bool
    status: int | None
    detail: str = ""


@dataclass
class ScanSummary:
    total: int = 0
    scanned: int = 0
    matched: int = 0
    opaque: int = 0
    types: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    oldest: float | None = None
    newest: float | None = None
    samples: list[DeadEntry] = field(default_factory=list)
    sampled: bool = False  # types, errors, ages and samples come from `scanned` of the `total` entries only

    @classmethod
    def of_sample(cls, total: int, read: Callable[[int, int], Iterable[DeadEntry]], samples: int) -> "ScanSummary":
        """Every entry counted (nothing is filtered), grouped from the runs :func:`spread` picks:
        ``read(offset, count)`` gives the entries of one run, oldest first."""
        summary = cls(total=total)
        for offset, count in spread(total):
            for entry in read(offset, count):
                summary.scanned += 1
                summary.count(entry, samples)
        return summary.counting_all()

    def counting_all(self) -> "ScanSummary":
        """This summary of a sample, saying it is one: every entry matches, ``scanned`` were read."""
        self.matched = self.total
        self.sampled = self.scanned < self.total
        self._bound()
        return self

    def add(self, stats: dict[str, Any], samples: list[bytes], want: int,
            fields: dict[str, str] | None = None) -> None:
        """Fold in one chunk counted elsewhere (the redis-list scan script's statistics)."""
        self.scanned += stats["scanned"]
        self.matched += stats["matched"]
        self.opaque += stats["opaque"]
        # cjson encodes an empty table as {} and a Lua table keyed by strings as an object.
        self.types.update(stats["types"] or {})
        self.errors.update(stats["errors"] or {})
        for key in ("oldest", "newest"):
            value = stats.get(key)
            current = getattr(self, key)
            if value is not None and (current is None or (value < current if key == "oldest" else value > current)):
                setattr(self, key, value)
        for raw in samples[: max(want - len(self.samples), 0)]:
            self.samples.append(DeadEntry.parse(raw, fields))
        self._bound()

    def count(self, entry: DeadEntry, want: int) -> None:
        """Fold in one matching entry read here (a backend that lists its entries)."""
        self.matched += 1
        if entry.opaque:
            self.opaque += 1
        self.types["(opaque)" if entry.opaque else safe_text(entry.type or "(none)")] += 1
        self.errors["(opaque)" if entry.opaque else safe_text((entry.error or "(none)")[:120])] += 1
        failed = entry.failed_at
        if failed is not None:
            self.oldest = failed if self.oldest is None else min(self.oldest, failed)
            self.newest = failed if self.newest is None else max(self.newest, failed)
        if len(self.samples) < want:
            self.samples.append(entry)

    def _bound(self) -> None:
        for counter in (self.types, self.errors):  # keep memory bounded whatever the list holds
            if len(counter) > MAX_GROUPS:
                keep = dict(counter.most_common(MAX_GROUPS - 1))
                other = sum(counter.values()) - sum(keep.values())
                counter.clear()
                counter.update(keep)
                counter["(other)"] += other


@runtime_checkable
class DeadLetterBackend(Protocol):
    """One queue's dead letters, wherever they live. Nothing here knows Slack."""

    backend: ClassVar[str]               # its name in app.yaml (queues[].backend)
    capabilities: ClassVar[Capabilities]
    name: str                            # the queue's name

    # -- describing ---------------------------------------------------------------------
    def where(self) -> str:
        """Where the dead letters are, for a person: the dead list's key, the API's URL."""

    def destination(self) -> str:
        """Where a requeue sends them, for a preview: "`jobs:dead` → `jobs`", "replay via URL"."""

    def locations(self) -> dict[str, str]:
        """Extra figures naming its storage for ``dlq status`` data (``{"ready_key": ..., "dead_key": ...}``)."""

    def probe(self) -> str:
        """``opsbot check``: "ok, ..." when it answers as expected; raises with the reason otherwise."""

    def close(self) -> None: ...

    # -- reading ------------------------------------------------------------------------
    def check_types(self) -> None:
        """Raise CommandError when its storage is not what it expects (a key of the wrong type)."""

    def depth(self) -> Depth: ...

    def dead_count(self) -> int: ...

    def oldest(self, count: int) -> list[DeadEntry]:
        """Up to ``count`` of the oldest dead letters, oldest first."""

    def scan(self, filters: Filters, samples: int = 10) -> ScanSummary:
        """Count and group the entries matching ``filters``, keeping up to ``samples`` of the oldest."""

    def sample(self, samples: int = 10) -> ScanSummary:
        """All entries counted, grouped from at most SAMPLE_ENTRIES read across the queue (``sampled``
        says when that was not all of them): the preview of an unfiltered requeue reads no more."""

    def entries(self, filters: Filters | None = None) -> Iterator[DeadEntry]:
        """The dead letters (matching ``filters``), oldest first where the backend knows the order."""

    # -- requeue ------------------------------------------------------------------------
    def task(self) -> Task | None:
        """Its requeue task (RESUME), running, interrupted or finished; None without one."""

    def trim_task(self) -> TrimTask | None: ...

    def lease_holder(self) -> Holder | None:
        """Who runs a task on the queue now (requeue or trim); None when nobody does."""

    def start_requeue(self, filters: Filters, *, limit: int | None, rate: float | None, matching: int,
                      requested_by: str, task_id: str | None = None) -> Task: ...

    def run_requeue(self, task_id: str, *, owner: str, progress: Callable[[Task, float], None] = ...,
                    batch: int = 1000, lease_ttl: float = 15.0, should_stop: Callable[[], bool] = ...,
                    before: Callable[[], Any] = ...) -> RequeueReport: ...

    def replay(self, entry_id: str, *, key: str) -> ReplayResult:
        """Replay one entry (REPLAY); ``key`` makes running it again harmless."""

    def cancel(self) -> Task | None: ...

    # -- trim ---------------------------------------------------------------------------
    def run_trim(self, *, keep: int, archive: Callable[[str, int, list[bytes]], None], batch: int = 500,
                 should_stop: Callable[[], bool] = ..., **options: Any) -> TrimReport: ...


class Refusing:
    """The part of the protocol a backend without tasks or trims does not support: refusals and nothing-here.

    A subclass sets ``capabilities`` and ``name``; what it does support it overrides."""

    capabilities: ClassVar[Capabilities]
    name: str

    def _refuse(self, operation: str) -> CommandError:
        return CommandError(self.capabilities.refusal(operation, self.name))

    def locations(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass

    def check_types(self) -> None:
        pass

    def sample(self, samples: int = 10) -> ScanSummary:
        """Where entries cannot be read by position: all of them (``sampled`` stays False)."""
        return self.scan(Filters(), samples)  # type: ignore[attr-defined]

    def task(self) -> Task | None:
        return None

    def trim_task(self) -> TrimTask | None:
        return None

    def lease_holder(self) -> Holder | None:
        return None

    def start_requeue(self, filters: Filters, **kw: Any) -> Task:
        raise self._refuse(RESUME)

    def run_requeue(self, task_id: str, **kw: Any) -> RequeueReport:
        raise self._refuse(RESUME)

    def replay(self, entry_id: str, *, key: str) -> ReplayResult:
        raise self._refuse(REPLAY)

    def cancel(self) -> Task | None:
        raise self._refuse(CANCEL)

    def run_trim(self, **kw: Any) -> TrimReport:
        raise self._refuse(TRIM)
