"""Attacks on the action log's group commit: interrupts, refusals, outages and crowds in the middle of a batch.

Each test checks the promises every caller relies on: an entry whose caller got it back is in the table once
and is its own; an entry kept (None) is in the spool and appended once by a drain; a strict append that raised
is not in the table; the chain verifies; nobody waits for ever. Real PostgreSQL and Redis throughout.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import pytest

from bot.store.actionlog import ActionLogUnavailable
from tests.support.actionlog import TABLE, sql
from tests.support.appenders import (HeldChain, check_own, joined, own_servers, refuse, slow_trigger, start,
                                     stored, until)


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


def gathered(log, url: str, whats, *, settle: float = 0.3) -> tuple[dict, list[threading.Thread]]:
    """Entry 0 leads alone while the chain is held; ``whats`` gather behind it and go in the next transaction."""
    held = HeldChain(url)
    outcomes: dict = {}
    threads = start(log, [("request", 0, True)], outcomes)
    until(lambda: held.waiters() == 1)
    for what in whats:  # one by one, so the batch holds them in this order
        threads += start(log, [what], outcomes)
        time.sleep(0.02)
    time.sleep(settle)
    held.release()
    joined(threads)
    return outcomes, threads


def test_a_refused_first_entry_of_a_batch_fails_alone_strict_and_keeping_mixed(runtime, database_url):
    refuse(database_url, "NEW.action = 'poison'")
    log = runtime.state.action_log
    outcomes, _ = gathered(log, database_url, [("poison", 1, True), ("request", 2, False), ("request", 3, True),
                                               ("request", 4, False)])

    assert isinstance(outcomes[1], ActionLogUnavailable) and "refused entry poison" in str(outcomes[1])
    assert all(not isinstance(outcomes[n], BaseException) and outcomes[n] is not None for n in (0, 2, 3, 4))
    check_own(outcomes)
    assert sorted(stored(log)) == [0, 2, 3, 4] and log.kept() == 0
    assert log.verify(full=True).ok


def test_every_entry_of_a_batch_refused_each_caller_gets_its_own_error_and_the_log_goes_on(runtime, database_url):
    refuse(database_url, "NEW.action = 'poison'")
    log = runtime.state.action_log
    outcomes, _ = gathered(log, database_url, [("poison", n, True) for n in range(1, 6)])

    errors = [outcomes[n] for n in range(1, 6)]
    assert all(isinstance(exc, ActionLogUnavailable) for exc in errors), outcomes
    assert len({id(exc) for exc in errors}) == 5  # no exception object raised in two threads
    assert stored(log) == [0]
    assert log.append("request", actor="U9", payload={"n": 9}).payload["n"] == 9
    assert log.verify(full=True).ok


def test_entries_refused_only_together_are_each_committed_alone(runtime, database_url):
    """PostgreSQL refuses a row when its transaction already wrote another (as a per-transaction quota would):
    the batch fails, and every entry goes in on its own."""
    refuse(database_url, f"EXISTS (SELECT 1 FROM {TABLE} WHERE xmin::text = txid_current()::text)")
    log = runtime.state.action_log
    outcomes, _ = gathered(log, database_url, [("request", n, n % 2 == 0) for n in range(1, 7)])

    assert all(outcomes[n] is not None and not isinstance(outcomes[n], BaseException) for n in range(7)), outcomes
    check_own(outcomes)
    rows = sql(database_url, f"SELECT count(DISTINCT xmin::text) FROM {TABLE}")[0][0]
    assert sorted(stored(log)) == list(range(7)) and rows == 7
    assert log.verify(full=True).ok


def test_postgres_gone_during_the_one_by_one_pass_those_before_are_in_the_rest_fail_or_are_kept_once(
        runtime, make_runtime, database_url):
    refuse(database_url, "NEW.action = 'poison'")
    sql(database_url, "CREATE SEQUENCE opsbot.killed")
    sql(database_url, """
        CREATE OR REPLACE FUNCTION opsbot.kill_once() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.action = 'killer' AND nextval('opsbot.killed') = 1 THEN
                PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(5);
            END IF;
            RETURN NEW;
        END $$""")
    sql(database_url, f"CREATE TRIGGER kill_once BEFORE INSERT ON {TABLE} FOR EACH ROW EXECUTE FUNCTION opsbot.kill_once()")
    log = runtime.state.action_log
    outcomes, _ = gathered(log, database_url, [("poison", 1, True), ("request", 2, False), ("killer", 3, False),
                                               ("request", 4, True), ("request", 5, False)])

    assert isinstance(outcomes[1], ActionLogUnavailable)
    assert outcomes[2].payload["n"] == 2
    assert outcomes[3] is None and outcomes[5] is None  # kept
    assert isinstance(outcomes[4], ActionLogUnavailable)  # strict, never tried: not in the log
    assert sorted(stored(log)) == [0, 2] and log.kept() == 2
    fresh = make_runtime().state.action_log  # this process waits out its back-off; another drains now
    assert fresh.drain() == 2 and fresh.kept() == 0
    assert sorted(stored(fresh)) == [0, 2, 3, 5]
    assert fresh.verify(full=True).ok


def test_more_threads_than_a_transaction_takes_each_gets_its_own_entry_in_transactions_of_at_most_64(
        runtime, database_url):
    log = runtime.state.action_log
    outcomes, _ = gathered(log, database_url, [("request", n, n % 3 != 0) for n in range(1, 151)], settle=0.5)

    assert all(outcomes[n] is not None and not isinstance(outcomes[n], BaseException) for n in range(151))
    check_own(outcomes)
    sizes = [row[0] for row in sql(database_url, f"SELECT count(*) FROM {TABLE} GROUP BY xmin::text")]
    assert max(sizes) <= 64 and sum(sizes) == 151 and len(sizes) >= 4, sizes
    assert sorted(stored(log)) == list(range(151))
    report = log.verify(full=True)
    assert report.ok and report.rows == 151


def test_huge_payloads_and_nul_bytes_in_one_batch_each_stored_as_cleaned_and_its_own(runtime, database_url):
    log = runtime.state.action_log
    held = HeldChain(database_url)
    outcomes: dict = {}

    def run(n: int) -> None:
        try:
            outcomes[n] = log.append(f"req\x00{n}", actor=f"U\x00{n}",
                                     payload={"n": n, "k\x00": "v\x00" * 10, "big": chr(0x41 + n) * 900_000})
        except BaseException as exc:  # noqa: BLE001
            outcomes[n] = exc

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(20)]
    threads[0].start()
    until(lambda: held.waiters() == 1)
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.5)
    held.release()
    joined(threads)

    for n, entry in outcomes.items():
        assert not isinstance(entry, BaseException), entry
        assert entry.actor == f"U\u2400{n}" and entry.action == f"req\u2400{n}" and entry.payload["n"] == n
        assert entry.payload["k\u2400"] == "v\u2400" * 10 and entry.payload["big"] == chr(0x41 + n) * 900_000
    assert len(sql(database_url, f"SELECT DISTINCT xmin::text FROM {TABLE}")) < 20
    assert log.verify(full=True).ok


@pytest.fixture
def own(tmp_path):
    with own_servers(tmp_path) as servers:
        yield servers


def _not_in_on_the_way_down(outcomes: dict) -> bool:
    """Whether entry 0, waiting for the chain's lock (held by another session) when PostgreSQL is told to stop, was
    kept rather than committed. Both are right: a fast shutdown ends the backends one after another, and if the lock's
    holder goes first, entry 0's transaction may take the lock and commit before its own backend is ended."""
    assert outcomes[0] is None or getattr(outcomes[0], "action", None) == "request", outcomes[0]
    return outcomes[0] is None


def test_postgres_stopped_under_a_crowd_of_strict_and_keeping_appends(own):
    pg, _, state = own
    log = state().action_log
    log.append("request", actor="U0", payload={"n": -1})
    held = HeldChain(pg.url)
    outcomes: dict = {}
    threads = start(log, [("request", 0, False)], outcomes)
    until(lambda: held.waiters() == 1)
    threads += start(log, [("request", n, n % 4 == 0) for n in range(1, 121)], outcomes)
    time.sleep(0.5)
    pg.stop()
    joined(threads)

    strict = [n for n in range(121) if n % 4 == 0 and n]
    keeping = [n for n in range(121) if n not in strict and (n or _not_in_on_the_way_down(outcomes))]
    assert all(isinstance(outcomes[n], ActionLogUnavailable) for n in strict), outcomes
    assert all(outcomes[n] is None for n in keeping), outcomes
    assert log.kept() == len(keeping)
    pg.start()
    later = state().action_log
    assert later.drain() == len(keeping)
    assert sorted(stored(later)) == [-1] + [n for n in range(121) if n not in strict]
    assert later.verify(full=True).ok


def test_postgres_and_redis_down_each_kept_entry_is_one_error_line(own, caplog):
    pg, rds, state = own
    log = state().action_log
    log.append("request", actor="U0", payload={"n": -1})
    held = HeldChain(pg.url)
    outcomes: dict = {}
    threads = start(log, [("request", 0, False)], outcomes)
    until(lambda: held.waiters() == 1)
    threads += start(log, [("request", n, n % 2 == 0) for n in range(1, 21)], outcomes)
    time.sleep(0.3)
    rds.kill()
    pg.stop()
    joined(threads)

    kept = [n for n in range(21) if outcomes[n] is None]
    assert kept == [n for n in range(21) if n % 2 == 1 or (n == 0 and _not_in_on_the_way_down(outcomes))], outcomes
    lines = [r.getMessage() for r in caplog.records if r.name == "opsbot.actionlog" and r.levelno == logging.ERROR
             and "recorded here" in r.getMessage()]
    recorded = sorted(int(line.split('"n": ')[1].split("}")[0]) for line in lines)
    assert recorded == kept


def test_the_leaders_backend_terminated_while_it_waits_for_the_chain(own):
    """Once: the transaction is tried again on a new connection, and every entry goes in. Twice: the batch fails,
    its strict appends raise (not in the log), its keeping ones are kept, and each is appended once."""
    pg, _, state = own
    log = state().action_log
    log.append("request", actor="U0", payload={"n": -1})
    held = HeldChain(pg.url)
    outcomes: dict = {}
    threads = start(log, [("request", 0, True)], outcomes)
    until(lambda: held.waiters() == 1)
    threads += start(log, [("request", n, n % 2 == 0) for n in range(1, 9)], outcomes)
    time.sleep(0.3)
    sql(pg.url, "SELECT pg_terminate_backend(%s)", held.waiting_pids())  # 0 retries on a new connection
    until(lambda: held.waiters() == 1)
    held.release()
    joined(threads)
    assert all(outcomes[n].payload["n"] == n for n in range(9)), outcomes

    held = HeldChain(pg.url)
    outcomes = {}
    threads = start(log, [("request", 10, True)], outcomes)
    for attempt in range(2):
        until(lambda: held.waiters() == 1)
        if attempt == 0:
            threads += start(log, [("request", n, n % 2 == 0) for n in range(11, 19)], outcomes)
            time.sleep(0.3)
        pids = held.waiting_pids()
        sql(pg.url, "SELECT pg_terminate_backend(%s)", pids)
        until(lambda: held.waiting_pids() != pids)
    joined(threads)
    held.release()
    assert all(isinstance(outcomes[n], ActionLogUnavailable) for n in range(10, 19, 2)), outcomes
    assert all(outcomes[n] is None for n in range(11, 19, 2)), outcomes
    later = state().action_log
    assert later.drain() == 4
    assert sorted(stored(later)) == [-1, *range(9), 11, 13, 15, 17]
    assert later.verify(full=True).ok



def test_a_replica_frozen_holding_the_chain_keeps_no_append_waiting_for_ever(own, caplog):
    """Another replica froze (SIGSTOP, a paused node) in the middle of its append, holding the chain's lock: its
    session stays open and the lock is never released. The batch waiting for it, and the appends gathered behind,
    must return within a bound: strict ones raise (not in the log), keeping ones are kept and appended once."""
    pg, _, state = own
    log = state().action_log
    log.append("request", actor="U0", payload={"n": -1})
    held = HeldChain(pg.url)
    frozen = held.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    os.kill(frozen, signal.SIGSTOP)  # a backend of this test's own cluster
    try:
        outcomes: dict = {}
        started = time.monotonic()
        threads = start(log, [("request", 0, False)], outcomes)
        time.sleep(0.3)
        threads += start(log, [("request", n, n % 2 == 0) for n in range(1, 9)], outcomes)
        joined(threads, timeout=30)
        took = time.monotonic() - started
    finally:
        os.kill(frozen, signal.SIGCONT)
    assert took < 20, took
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("the chain's lock was held elsewhere for over 5s" in line for line in warned), warned  # not "down"
    assert all(isinstance(outcomes[n], ActionLogUnavailable) for n in range(2, 9, 2)), outcomes
    assert all(outcomes[n] is None for n in (0, 1, 3, 5, 7)), outcomes
    held.release()
    later = state().action_log
    assert later.drain() == 5
    assert sorted(stored(later)) == [-1, 0, 1, 3, 5, 7]
    assert later.verify(full=True).ok


def test_a_waiter_interrupted_is_not_appended_and_the_batch_it_waited_for_goes_on(runtime, database_url):
    log = runtime.state.action_log
    held = HeldChain(database_url)
    outcomes: dict = {}
    first = start(log, [("request", 0, True)], outcomes)
    until(lambda: held.waiters() == 1)
    others: list[threading.Thread] = []

    def interrupt(signum, frame):
        others.extend(start(log, [("request", n, n % 2 == 0) for n in range(1, 6)], outcomes))  # behind the main
        time.sleep(0.2)
        raise Stop

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Stop):
            log.append("request", actor="U99", payload={"n": 99})  # waits behind 0, and gives up
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    held.release()
    joined(first + others)

    assert all(outcomes[n] is not None and not isinstance(outcomes[n], BaseException) for n in range(6)), outcomes
    check_own(outcomes)
    assert sorted(stored(log)) == list(range(6)) and log.verify(full=True).ok


def test_kept_entries_go_before_a_burst_of_new_ones_and_once_with_another_replica_draining(own):
    pg, _, state = own
    log = state().action_log
    log.append("request", actor="U0", payload={"n": -1})
    pg.stop()
    for n in range(100, 140):
        assert log.append_or_keep("request", actor=f"U{n}", payload={"n": n}) is None
    pg.start()
    burst, other = state().action_log, state().action_log
    outcomes: dict = {}
    threads = start(burst, [("request", n, n % 2 == 0) for n in range(30)], outcomes)
    drained = threading.Thread(target=other.drain, daemon=True)
    drained.start()
    joined([*threads, drained])

    assert all(outcomes[n] is not None and not isinstance(outcomes[n], BaseException) for n in range(30)), outcomes
    check_own(outcomes)
    rows = [(e.id, e.payload["n"]) for e in burst.entries(limit=1000)]
    assert [n for _, n in rows] == [-1, *range(100, 140), *[n for _, n in rows[41:]]]  # kept first, in order
    assert sorted(n for _, n in rows[41:]) == list(range(30)) and burst.kept() == 0
    assert burst.verify(full=True).ok
