"""A bound on a PostgreSQL connection's work (bot.store.deadline) against a real server: it ends a wait the
server never would, and touches nothing once its block is over."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from bot.store.deadline import Bound


def test_a_query_past_its_bound_fails_at_once_and_the_connection_is_closed(database_url):
    conn = psycopg.connect(database_url, autocommit=True)
    bound = Bound(0.3)
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        with bound.on(conn):
            conn.execute("SELECT pg_sleep(30)")  # the server would answer in 30 s; the bound ends it in 0.3
    assert 0.25 < time.monotonic() - started < 3
    assert bound.cut and conn.closed


def test_a_bound_whose_block_ended_never_touches_the_connection(database_url):
    """Bounds close to the block's own length, many times over: each connection is either cut while its block ran
    (the block failed, or it is closed) or still answers after, and the next block on it is never cut."""
    conn = psycopg.connect(database_url, autocommit=True)
    cut = kept = 0
    for n in range(300):
        bound = Bound(0.0002 * (n % 20))
        try:
            with bound.on(conn):
                conn.execute("SELECT pg_sleep(0.001)")
        except psycopg.OperationalError:
            assert bound.cut
        if bound.cut:
            assert conn.closed
            cut += 1
            conn = psycopg.connect(database_url, autocommit=True)
            continue
        kept += 1
        assert conn.execute("SELECT 1").fetchone() == (1,)  # after its bound's time passes too
    time.sleep(0.01)
    assert conn.execute("SELECT 2").fetchone() == (2,)
    assert cut and kept, (cut, kept)


def test_bounds_from_many_threads_each_cut_only_its_own(database_url):
    conns = [psycopg.connect(database_url, autocommit=True) for _ in range(8)]
    results: dict[int, str] = {}

    def run(n: int) -> None:
        bound = Bound(0.3 if n % 2 else 10)
        try:
            with bound.on(conns[n]):
                conns[n].execute("SELECT pg_sleep(%s)", (2 if n % 2 else 0.6,))
            results[n] = "answered"
        except psycopg.OperationalError:
            results[n] = "cut" if bound.cut else "failed"

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {n: "cut" if n % 2 else "answered" for n in range(8)}
    assert all(conns[n].execute("SELECT 1").fetchone() == (1,) for n in range(0, 8, 2))
