"""The bot's own append-only, hash-chained action log (PostgreSQL), anchored outside its rows.

Usage::

    log = ActionLog(pool, "opsbot", redis_client, secret=key)
    log.append("confirm", actor="U1", payload={...}, tenant="T1")    # strict: committed, or ActionLogUnavailable
    log.append_or_keep("outcome", actor="U1", payload={...})         # never raises for PostgreSQL: kept in Redis
    log.drain()                 # append what was kept, oldest first (worker heartbeat, `opsbot run`)
    log.verify()                # VerifyReport(ok=True, rows=2, ...): from the last signed checkpoint
    log.verify(full=True)       # every row

Entries chain in id order with the v1 scheme (:mod:`bot.store.chain`). Appends from
several replicas serialize on an advisory lock, so the chain never forks. Each
append also moves the signed head (:mod:`bot.store.loganchor`) in the same transaction
and mirrors it to Redis after commit. An append that finds the chain it would
extend broken (rows gone or re-hashed behind the head, a head that does not verify
or is older than its copy in Redis, a break ``log verify`` found) says so at ERROR,
counts it, and starts a new signed segment instead.

Appends from threads of one process are committed together (a group commit,
:mod:`bot.store.groupcommit`): an append that finds none in flight commits at once, and those
that arrive meanwhile go in the next transaction, in the order they came, each returning
once its own entry is committed. One entry PostgreSQL refuses does not take the others of its
transaction with it: they are appended one by one.

When PostgreSQL does not answer within ``PG_WAIT`` seconds (a connection), or an append's
transaction has not ended within ``TRANSACTION_WAIT`` (a server that froze answers nothing and
never times out, so the connection is cut: :mod:`bot.store.deadline`), ``append`` raises and
``append_or_keep`` keeps the entry in Redis (:mod:`bot.store.logspool`); for
``BACKOFF`` seconds after that neither waits again. Kept entries are appended
before any newer one, by the next append or ``drain()``, exactly once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg
import redis
from psycopg_pool import ConnectionPool, PoolTimeout

from bot.store.deadline import Bound
from bot.store.groupcommit import GroupCommit, Interrupted, NotSent
from bot.store.loganchor import APPEND_LOCK, PG_WAIT, Head, Mirror, Signer, Tables
from bot.store.logspool import Kept, Spool, clean_payload, clean_text
from bot.store.logverify import VerifyReport, verify_log
from bot.store.logwriter import ChainWriter, Entry, Item, now_ms

__all__ = ["ActionLog", "ActionLogUnavailable", "Entry", "VerifyReport", "APPEND_LOCK"]

log = logging.getLogger("opsbot.actionlog")

BACKOFF = 15.0       # after a failure, appends do not wait again for this long
DRAIN_BATCH = 500
GROUP_LIMIT = 64     # entries of concurrent appends committed in one transaction, at most
STATEMENT_WAIT = 5.0  # seconds an append waits for the chain's lock, or for one statement: the appends gathered
                      # behind it wait too, so a replica frozen while holding the chain must not hold them for ever
TRANSACTION_WAIT = 2 * STATEMENT_WAIT  # seconds an append's transaction may take, commit included: past it the
                                      # connection is cut (a PostgreSQL that froze answers nothing, and never times out)
# What PostgreSQL answers about one entry rather than about itself: a value it cannot store, or a row too big for
# an index (a payload's pending_id of kilobytes). Such an entry fails alone; kept, the drain sets it aside.
REFUSED = (psycopg.DataError, psycopg.errors.ProgramLimitExceeded)


class ActionLogUnavailable(Exception):
    """The entry could not be committed (PostgreSQL down, the schema not migrated, ...).

    ``written``: the rows a transaction had written when its connection was lost, by ``id()`` of their items;
    ``maybe``: the caller's own, which PostgreSQL may have committed after all (the ``COMMIT`` was on its way).
    """

    def __init__(self, message: str, *, written: dict[int, Entry] | None = None, maybe: Entry | None = None):
        super().__init__(message)
        self.written, self.maybe = written or {}, maybe

    def about(self, item: Item) -> "ActionLogUnavailable":
        """The caller's own: the same message, and its row if one was written."""
        return ActionLogUnavailable(str(self), maybe=self.written.get(id(item)))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


class ActionLog:
    def __init__(self, pool: ConnectionPool, schema: str, redis_client: redis.Redis | None = None, *,
                 secret: str | None = None, prefix: str = "opsbot:", metrics=None, where: str = "PostgreSQL"):
        self.pool = pool
        self.tables = Tables(schema)
        self.table = self.tables.log
        self.signer = Signer(secret, schema)
        self.redis = redis_client
        base = f"{prefix}action_log:{schema}:"
        self.mirror = Mirror(redis_client, base + "head") if redis_client is not None else None
        self.spool = Spool(redis_client, base + "spool") if redis_client is not None else None
        self.metrics = metrics
        self.where = where
        self._pg_down_until = 0.0
        self._pg_outage = False
        self._redis_down_until = 0.0
        self._state = threading.Lock()
        self.writer = ChainWriter(self.tables, self.signer)
        self._appends: GroupCommit[Item] = GroupCommit(self._append_together, limit=GROUP_LIMIT)

    # -- the two ways in ---------------------------------------------------------------------
    def append(self, action: str, *, actor: str, payload: dict[str, Any], tenant: str = "") -> Entry:
        """Commit one entry (after any kept earlier); raises :class:`ActionLogUnavailable` if it cannot.

        It always tries (a confirm clicked again once PostgreSQL is back must go through), within the short wait.
        """
        item = Item(clean_text(action), clean_text(actor), clean_text(tenant), clean_payload(payload))
        try:
            entry = self._appends.submit(item)
        except Interrupted as exc:  # the thread committing it was interrupted: it may or may not be in the log
            raise ActionLogUnavailable(f"may not be appended: {exc}") from exc.__cause__
        except NotSent as exc:  # the transaction ahead of it failed: this one was not tried, and is not in the log
            raise ActionLogUnavailable(f"not appended: {exc.__cause__}") from exc.__cause__
        except ActionLogUnavailable as exc:  # one exception for the whole transaction: each caller gets its own
            raise exc.about(item) from exc.__cause__
        if isinstance(entry, ActionLogUnavailable):
            raise entry.about(item) from entry.__cause__
        return entry

    def append_or_keep(self, action: str, *, actor: str, payload: dict[str, Any], tenant: str = "") -> Entry | None:
        """Commit one entry, or keep it in Redis for later (returns None); never raises for PostgreSQL.

        If Redis is down too, the entry is written to the log stream at ERROR as one JSON line.
        """
        occurred, committed_as = now_ms(), None
        if time.monotonic() >= self._pg_down_until:  # after a failure, keep at once for a while: no waiting again
            try:
                return self.append(action, actor=actor, payload=payload, tenant=tenant)
            except ActionLogUnavailable as exc:
                if self.metrics is not None:
                    self.metrics.backend_errors.labels(backend="postgres").inc()
                if exc.maybe is not None:  # its row may be in: the drain looks for it before appending this copy
                    committed_as = (exc.maybe.id, exc.maybe.hash)
            except Exception:  # whatever went wrong, the entry is kept
                log.exception("could not append %s to the action log; keeping it", action)
        self._keep(Kept.new(action, actor, tenant, payload, occurred, committed_as))
        return None

    def drain(self) -> int:
        """Append the entries kept in Redis, oldest first; returns how many were appended. Never raises."""
        if self.spool is None or time.monotonic() < self._pg_down_until:
            return 0
        try:
            return self._drain(strict=False)
        except ActionLogUnavailable:
            return 0
        except Exception:
            log.exception("could not append the action-log entries kept in Redis")
            return 0

    def kept(self) -> int:
        """How many entries wait in Redis (0 when Redis does not answer)."""
        return self._redis_call(lambda: self.spool.depth(), 0) if self.spool is not None else 0

    # -- reading -------------------------------------------------------------------------------
    def entries(self, *, pending_id: str | None = None, limit: int = 1000) -> list[Entry]:
        query = self.tables.q(
            "SELECT id, tenant, created_at, actor, action, payload, prev_hash, hash FROM {log}"
            + (" WHERE payload->>'pending_id' = %s" if pending_id else "") + " ORDER BY id LIMIT %s")
        params = (pending_id, limit) if pending_id else (limit,)
        with self.pool.connection() as conn:
            return [Entry(*row) for row in conn.execute(query, params).fetchall()]

    def verify(self, *, full: bool = False, quick: bool = False, save: bool = True) -> VerifyReport:
        """Verify the chain from the last signed checkpoint (``full``: every row; ``quick``: never walk everything).

        A break nobody knew of is reported at ERROR and makes the next append start a new segment.
        """
        report = verify_log(self.pool, self.tables, self.signer, self._mirror_read, full=full, quick=quick, save=save)
        if report.level == "fail":
            failing = [f for f in report.findings if f.level == "fail"]
            log.error("action log verification failed: %s", "; ".join(f.text for f in failing[:5]))
            for finding in failing:
                if not finding.known:  # a known break was counted when the bot found it
                    self._count_break(finding.kind)
        if save and report.head is not None and self.mirror is not None and report.head_trusted:
            self._redis_call(lambda: self.mirror.publish(report.head), None)
        return report

    def _append_together(self, items: list[Item]) -> list[Entry | ActionLogUnavailable]:
        """Commit the entries of concurrent appends in one transaction, after any kept earlier; each one's entry,
        or (PostgreSQL refused one of them) why it was refused. Raises when none could be committed."""
        depth, mirror = self._peek()
        if depth:
            self._drain(strict=True)
        try:
            return list(self._commit(mirror, items)[0])
        except ActionLogUnavailable as exc:
            if len(items) == 1 or not isinstance(exc.__cause__, REFUSED):
                raise
        results: list[Entry | ActionLogUnavailable] = []
        gone: ActionLogUnavailable | None = None
        for item in items:  # one refused entry must not take the others with it
            if gone is not None:  # PostgreSQL went away meanwhile: the rest are not tried (those before are in)
                results.append(ActionLogUnavailable(f"not appended: {gone}"))
                continue
            try:
                results.append(self._commit(mirror, [item])[0][-1])
            except ActionLogUnavailable as exc:
                results.append(exc)
                if not isinstance(exc.__cause__, REFUSED):
                    gone = exc
        return results

    # -- internals: Redis ---------------------------------------------------------------------
    def _redis_call(self, fn, default):
        if self.redis is None or time.monotonic() < self._redis_down_until:
            return default
        try:
            return fn()
        except redis.RedisError as exc:
            self._redis_failed(exc)
            return default

    def _redis_failed(self, exc: BaseException) -> None:
        with self._state:
            first = time.monotonic() >= self._redis_down_until
            self._redis_down_until = time.monotonic() + BACKOFF
        if first:
            log.warning("the bot's Redis does not answer (%s): the action log's head is not mirrored and"
                        " entries cannot be kept there for now", _first_line(exc))

    def _mirror_read(self) -> tuple[Head | None, bool]:
        """(the head's copy in Redis, whether Redis answered)."""
        if self.mirror is None:
            return None, False
        answered = []
        head = self._redis_call(lambda: answered.append(1) or self.mirror.read(), None)
        return head, bool(answered)

    def _peek(self) -> tuple[int, Head | None]:
        """How many entries are kept, and the head's copy in Redis: one round trip."""
        if self.spool is None or self.mirror is None:
            return 0, None

        def both():
            pipe = self.redis.pipeline(transaction=False)
            pipe.llen(self.spool.key)
            pipe.get(self.mirror.key)
            depth, raw = pipe.execute()
            return depth, self.mirror.parse(raw)

        return self._redis_call(both, (0, None))

    def _keep(self, kept: Kept) -> None:
        try:
            if self.spool is None or time.monotonic() < self._redis_down_until:
                raise redis.ConnectionError("Redis failed moments ago")
            self.spool.keep(kept)
        except redis.RedisError as exc:
            if self.spool is not None and time.monotonic() >= self._redis_down_until:
                self._redis_failed(exc)
            if self.metrics is not None:
                self.metrics.action_log_kept.labels(outcome="logged").inc()
            log.error("action-log entry not written (PostgreSQL and Redis both unavailable), recorded here: %s",
                      kept.dumps())
            return
        if self.metrics is not None:
            self.metrics.action_log_kept.labels(outcome="kept").inc()

    # -- internals: PostgreSQL ----------------------------------------------------------------
    def _pg_failed(self, why: str) -> None:
        with self._state:
            self._pg_down_until = time.monotonic() + BACKOFF
            first, self._pg_outage = not self._pg_outage, True
        if first:
            log.warning("the bot's PostgreSQL (%s) cannot take action-log entries: %s; they are kept in Redis and"
                        " appended when it can again", self.where, why)

    def _pg_answered(self) -> None:
        self._pg_down_until = 0.0  # it answers: nothing to wait out any more
        if self._pg_outage:
            with self._state:
                self._pg_outage = False
            log.info("the bot's PostgreSQL (%s) answers again; kept action-log entries are being appended",
                     self.where)

    def _drain(self, strict: bool) -> int:
        total, batch, poison = 0, DRAIN_BATCH, set()
        while True:
            depth, mirror = self._peek()
            if not depth:
                return total
            try:
                entries, taken = self._commit(mirror, [], take=batch, poison=poison)
            except _BadBatch as exc:
                refused = exc.raws
                if len(refused) > 1:
                    batch = 1  # find the one PostgreSQL refuses
                elif refused[0] in poison:  # not even its replacement goes in: it stays in the log stream only
                    log.error("a kept action-log entry cannot be appended, recorded here: %r", refused[0][:4000])
                    self._redis_call(lambda: self.spool.remove(refused), None)
                else:
                    poison.update(refused)  # appended as spool_unreadable, with its bytes
                continue
            total += len(entries)
            batch = DRAIN_BATCH
            if not taken:
                return total

    def _commit(self, mirror: Head | None, direct: list[Item], *, take: int = 0,
                poison: set[bytes] = frozenset()) -> tuple[list[Entry], list[bytes]]:
        """Append ``take`` kept entries, then ``direct``, in one transaction; then mirror the head and
        drop the kept entries from Redis. Returns (entries appended, kept entries taken)."""
        for attempt in (1, 2):
            taken: list[bytes] = []
            wrote: list[bool] = []
            entries: list[Entry] = []
            bound = Bound(TRANSACTION_WAIT)
            try:
                with self.pool.connection(timeout=PG_WAIT) as conn, bound.on(conn), conn.transaction():
                    wait = str(int(STATEMENT_WAIT * 1000))  # set before the lock is asked for, in the same round trip
                    conn.execute("SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s,"
                                 " true), pg_advisory_xact_lock(%s)", (wait, wait, APPEND_LOCK))
                    items: list[Item] = []
                    if take:
                        taken = self._redis_call(lambda: self.spool.peek(take), [])
                        items = self._from_spool(conn, taken, poison)
                    items += direct
                    entries, head, breaks = self.writer.write(conn, items, mirror, wrote) if items else ([], None, [])
                break
            except REFUSED as exc:  # before OperationalError: ProgramLimitExceeded is one
                if take and taken:
                    raise _BadBatch(taken) from exc
                raise ActionLogUnavailable(f"the action log refused the entry: {_first_line(exc)}") from exc
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                waited = bound.cut or isinstance(exc, (PoolTimeout, psycopg.errors.LockNotAvailable,
                                                       psycopg.errors.QueryCanceled))
                if attempt == 1 and not wrote and not waited:
                    self.pool.check()  # connections the server dropped (a restart): nothing was written; replace them
                    continue
                why = (f"no answer within {TRANSACTION_WAIT:.0f}s" if bound.cut else
                       f"the chain's lock was held elsewhere for over {STATEMENT_WAIT:.0f}s (another replica stuck"
                       " in an append?)" if isinstance(exc, psycopg.errors.LockNotAvailable) else _first_line(exc))
                self._pg_failed(why)
                written = dict(zip(map(id, direct), entries[len(entries) - len(direct):])) if entries else {}
                raise ActionLogUnavailable(f"the action log ({self.where}) is unavailable: {why}",
                                           written=written) from exc  # lost at the commit: those rows may be in
            except psycopg.Error as exc:
                hint = " (run `opsbot migrate`)" if isinstance(exc, psycopg.errors.UndefinedTable) else ""
                raise ActionLogUnavailable(f"the action log cannot be written: {_first_line(exc)}{hint}") from exc
        self._pg_answered()
        if taken:
            self._redis_call(lambda: self.spool.remove(taken), None)
        if head is not None and self.mirror is not None:
            self._redis_call(lambda: self.mirror.publish(head), None)
        if breaks and entries:
            self._report_breaks(breaks, head)
        return entries, taken

    def _from_spool(self, conn, raws: list[bytes], poison: set[bytes]) -> list[Item]:
        items, ids, maybe = [], [], {}
        for raw in raws:
            try:
                if raw in poison:
                    raise ValueError("PostgreSQL refused it")
                kept = Kept.loads(raw)
            except ValueError as exc:
                items.append(Item("spool_unreadable", "opsbot", "",
                                   clean_payload({"error": str(exc), "entry": repr(raw[:4000])}), raw))
                continue
            ids.append(kept.spool_id)
            if kept.committed_as is not None:
                maybe[kept.committed_as] = kept.spool_id
            items.append(Item(clean_text(kept.action), clean_text(kept.actor), clean_text(kept.tenant),
                               clean_payload(kept.document()), raw))
        if ids:
            done = {row[0] for row in conn.execute(self.tables.q(
                "SELECT payload->>'spool_id' FROM {log} WHERE payload ? 'spool_id' AND payload->>'spool_id' = ANY(%s)"),
                (ids,)).fetchall()}
            if maybe:  # kept when the commit's answer was lost: in already if its row (id and hash) is there
                done |= {maybe[row] for row in conn.execute(self.tables.q(
                    "SELECT id, hash FROM {log} WHERE id = ANY(%s)"), ([key[0] for key in maybe],)).fetchall()
                    if row in maybe}
            items = [item for item in items if item.payload.get("spool_id") not in done]
        return items

    def _report_breaks(self, breaks: list[dict], head: Head) -> None:
        log.error("action log chain broken: %s; appending continues in new signed segment %d from row %d",
                  "; ".join(b["detail"] for b in breaks[:5]), head.segment, head.first_id)
        for brk in breaks:
            self._count_break(brk["kind"])

    def _count_break(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.action_log_broken.labels(kind=kind).inc()


class _BadBatch(Exception):
    def __init__(self, raws: list[bytes]):
        super().__init__(f"{len(raws)} kept entries refused")
        self.raws = raws
