"""Attacks on the action log's group commit: interrupts, refusals, outages and crowds in the middle of a batch.

Each test checks the promises every caller relies on: an entry whose caller got it back is in the table once
and is its own; an entry kept (None) is in the spool and appended once by a drain; a strict append that raised
is not in the table; the chain verifies; nobody waits for ever. Real PostgreSQL and Redis throughout.
"""

from __future__ import annotations

import signal
import threading
import time

import psycopg
import pytest

from bot.store.actionlog import APPEND_LOCK
from tests.support.actionlog import TABLE, sql


class HeldChain:
    """Another session holding the action log's advisory lock, as a replica in the middle of an append would."""

    def __init__(self, url: str):
        self.url = url
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute("SELECT pg_advisory_lock(%s)", (APPEND_LOCK,))

    def waiters(self) -> int:
        return sql(self.url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")[0][0]

    def waiting_pids(self) -> list[int]:
        return [row[0] for row in sql(self.url, "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")]

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.execute("SELECT pg_advisory_unlock(%s)", (APPEND_LOCK,))
            self.conn.close()


def until(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def start(log, whats, outcomes: dict) -> list[threading.Thread]:
    """One thread per (action, n, strict); each puts in outcomes[n] what it got: an Entry, None (kept) or what it
    raised (any BaseException: a thread that dies of one is a finding)."""

    def run(action: str, n: int, strict: bool) -> None:
        try:
            call = log.append if strict else log.append_or_keep
            outcomes[n] = call(action, actor=f"U{n}", payload={"n": n})
        except BaseException as exc:  # noqa: BLE001 - every outcome is looked at
            outcomes[n] = exc

    threads = [threading.Thread(target=run, args=what, daemon=True) for what in whats]
    for thread in threads:
        thread.start()
    return threads


def joined(threads, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "an append never returned"


def stored(log) -> list:
    return [e.payload.get("n") for e in log.entries(limit=10_000)]


def check_own(outcomes: dict) -> None:
    """Each Entry returned is the caller's own."""
    for n, got in outcomes.items():
        if got is not None and not isinstance(got, BaseException):
            assert got.payload["n"] == n and got.actor == f"U{n}", (n, got)


def slow_trigger(url: str, action: str = "slow", seconds: int = 30) -> None:
    sql(url, f"""
        CREATE OR REPLACE FUNCTION opsbot.slow_entry() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.action = '{action}' THEN PERFORM pg_sleep({seconds}); END IF;
            RETURN NEW;
        END $$""")
    sql(url, f"CREATE TRIGGER slow_entry BEFORE INSERT ON {TABLE} FOR EACH ROW EXECUTE FUNCTION opsbot.slow_entry()")


class Stop(KeyboardInterrupt):
    """What a SIGTERM/SIGALRM handler raises in the main thread."""


def test_an_interrupt_of_the_leading_thread_stays_in_that_thread_and_its_batch_loses_nothing(runtime,
                                                                                              database_url):
    """The main thread leads a batch (its own entry, then five gathered behind it) and a signal handler raises
    in it mid-transaction. The interrupt is the main thread's: the others' append_or_keep must not raise it
    (a worker thread would die of it, its entry neither committed nor kept)."""
    log = runtime.state.action_log
    slow_trigger(database_url)
    held = HeldChain(database_url)
    outcomes: dict = {}
    first = start(log, [("request", 0, True)], outcomes)
    until(lambda: held.waiters() == 1)  # 0 leads, waiting for the chain
    others: list[threading.Thread] = []

    def behind_main() -> None:  # once the main thread waits behind 0, five more gather behind it; then 0 goes
        time.sleep(0.3)
        others.extend(start(log, [("request", n, False) for n in range(1, 6)], outcomes))
        time.sleep(0.3)
        held.release()

    helper = threading.Thread(target=behind_main, daemon=True)
    helper.start()

    def interrupt(signum, frame):
        raise Stop

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.5)  # the main thread is then in its batch's slow INSERT
        with pytest.raises(Stop):
            log.append("slow", actor="U99", payload={"n": 99})
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    helper.join(10)
    joined(first + others)

    assert not [exc for exc in outcomes.values() if isinstance(exc, BaseException)], outcomes
    check_own(outcomes)
    assert 99 not in stored(log)  # rolled back with the interrupted transaction
    fresh = runtime.state.action_log
    fresh.drain()
    assert sorted(stored(fresh)) == list(range(6))
    assert fresh.kept() == 0 and fresh.verify(full=True).ok
