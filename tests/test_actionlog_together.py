"""Concurrent appends of one process are committed together: fewer transactions, the same chain, nothing lost.

While one append holds the chain (PostgreSQL's advisory lock), the appends that arrive go in the
next transaction, in order, and each caller gets back its own entry. Rows of one transaction share
PostgreSQL's ``xmin``, so the tests count transactions from the rows themselves.
"""

from __future__ import annotations

import threading
import time

import pytest

from bot.store.actionlog import ActionLogUnavailable
from tests.support.actionlog import TABLE, sql
from tests.support.appenders import HeldChain, own_servers, start, until




def transactions(database_url) -> list[list[int]]:
    """The rows' ids, grouped by the transaction that wrote them, in id order."""
    rows = sql(database_url, f"SELECT xmin::text, array_agg(id ORDER BY id) FROM {TABLE} GROUP BY xmin::text"
                             " ORDER BY min(id)")
    return [ids for _, ids in rows]


def test_appends_arriving_while_the_chain_is_held_are_committed_in_one_transaction_each_with_its_own_entry(
        runtime, database_url):
    log = runtime.state.action_log
    held = HeldChain(database_url)
    outcomes: dict = {}
    first = start(log, [("request", 0, True)], outcomes)
    until(lambda: held.waiters() == 1)  # the first is in its transaction, waiting for the chain
    others = start(log, [("request", n, True) for n in range(1, 8)], outcomes)
    time.sleep(0.3)  # they queue behind it in this process
    held.release()
    for thread in first + others:
        thread.join(10)

    assert all(not isinstance(outcomes[n], Exception) for n in range(8)), outcomes
    for n, entry in outcomes.items():  # each caller got its own entry back
        assert entry.payload["n"] == n and entry.actor == f"U{n}"
    assert sorted(entry.id for entry in outcomes.values()) == list(range(1, 9))
    assert transactions(database_url) == [[1], [2, 3, 4, 5, 6, 7, 8]]
    report = log.verify(full=True)
    assert report.ok and report.rows == 8


def test_under_load_from_many_threads_fewer_transactions_than_entries_and_one_chain(runtime, make_runtime,
                                                                                     database_url):
    replicas = [runtime, make_runtime()]
    barrier = threading.Barrier(16)
    got: list = []

    def append(index: int) -> None:
        barrier.wait()
        for n in range(25):
            got.append(replicas[index % 2].state.action_log.append("request", actor=f"U{index}",
                                                                    payload={"n": n, "t": index}))

    threads = [threading.Thread(target=append, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert len(got) == 400 and len({entry.id for entry in got}) == 400
    stored = {(e.actor, e.payload["n"]): e.id for e in runtime.state.action_log.entries(limit=1000)}
    assert {(e.actor, e.payload["n"]): e.id for e in got} == stored  # what each caller got is what is stored
    for index in range(16):  # each thread's entries in the order it appended them
        ids = [stored[(f"U{index}", n)] for n in range(25)]
        assert ids == sorted(ids)
    assert len(transactions(database_url)) < 400
    report = runtime.state.action_log.verify(full=True)
    assert report.ok and report.rows == 400 and report.segments == 1


def test_an_entry_postgresql_refuses_fails_alone_and_the_others_of_its_transaction_are_committed(
        runtime, database_url):
    sql(database_url, """
        CREATE FUNCTION opsbot.refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.action = 'poison' THEN RAISE EXCEPTION 'poisoned entry' USING ERRCODE = 'data_exception'; END IF;
            RETURN NEW;
        END $$""")
    sql(database_url, f"CREATE TRIGGER refuse_poison BEFORE INSERT ON {TABLE}"
                      " FOR EACH ROW EXECUTE FUNCTION opsbot.refuse_poison()")
    log = runtime.state.action_log
    held = HeldChain(database_url)
    outcomes: dict = {}
    first = start(log, [("request", 0, True)], outcomes)
    until(lambda: held.waiters() == 1)
    others = start(log, [(action, n, True) for action, n in
                         (("request", 1), ("request", 2), ("poison", 3), ("request", 4), ("request", 5))], outcomes)
    time.sleep(0.3)
    held.release()
    for thread in first + others:
        thread.join(10)

    assert isinstance(outcomes[3], ActionLogUnavailable) and "poisoned entry" in str(outcomes[3])
    assert sorted(outcomes[n].payload["n"] for n in (0, 1, 2, 4, 5)) == [0, 1, 2, 4, 5]
    assert sorted(e.payload["n"] for e in log.entries()) == [0, 1, 2, 4, 5]
    assert log.verify(full=True).ok


@pytest.fixture
def own(tmp_path):
    with own_servers(tmp_path) as servers:
        yield servers


def test_postgres_stopped_under_a_waiting_transaction_keeps_every_entry_of_it_and_appends_each_once(own):
    pg, _, state = own
    log = state().action_log
    log.append("request", actor="U0", payload={"n": -1})
    held = HeldChain(pg.url)
    outcomes: dict = {}
    first = start(log, [("request", 0, False)], outcomes)
    until(lambda: held.waiters() == 1)
    others = start(log, [("request", n, False) for n in range(1, 8)], outcomes)
    time.sleep(0.3)
    started = time.monotonic()
    pg.stop()  # the transaction and the session holding the chain die with it
    for thread in first + others:
        thread.join(10)
    took = time.monotonic() - started

    assert outcomes == {n: None for n in range(8)}  # each kept in Redis, none raised
    assert took < 3.5, took  # one wait for the database that went away, not one per transaction
    assert log.kept() == 8
    pg.start()
    later = state().action_log
    assert later.drain() == 8 and later.kept() == 0
    assert sorted(e.payload["n"] for e in later.entries()) == list(range(-1, 8))
    report = later.verify(full=True)
    assert report.ok and report.rows == 9
