"""Attacks on bot.store.deadline against a real server: a forked child's bounds, and many bounds at once on pooled
connections ending as they pass."""

from __future__ import annotations

import os
import threading
import time

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from bot.store.deadline import Bound


def test_a_forked_child_gets_a_watcher_of_its_own(database_url):
    """The parent's watcher thread does not exist in a child forked after it started (threads are not forked):
    the child's bounds must still cut."""
    with psycopg.connect(database_url, autocommit=True) as conn, Bound(5).on(conn):
        conn.execute("SELECT 1")  # the parent's watcher is running
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if its bound cut a 30 s sleep within 5 s
        code = 1
        try:
            child = psycopg.connect(database_url, autocommit=True)
            bound, started = Bound(0.3), time.monotonic()
            try:
                with bound.on(child):
                    child.execute("SELECT pg_sleep(30)")
            except psycopg.OperationalError:
                code = 0 if bound.cut and time.monotonic() - started < 5 else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise AssertionError("the child's bound never cut")
    assert os.waitstatus_to_exitcode(status) == 0


def test_bounds_passing_as_pooled_blocks_end_never_cut_a_connection_another_thread_holds(database_url):
    """Eight threads share a four-connection pool; each bound is about its block's own length. A connection a
    bound cut is closed before it goes back, so no block ever finds its connection cut by another's bound: every
    failure is its own bound's."""
    pool = ConnectionPool(database_url, min_size=4, max_size=4, kwargs={"autocommit": True}, open=True)
    pool.wait(timeout=30)
    stray: list[str] = []
    counts = {"cut": 0, "answered": 0}
    lock = threading.Lock()

    def run(n: int) -> None:
        for i in range(150):
            bound = Bound(0.0005 * ((n + i) % 8))
            try:
                with pool.connection(timeout=30) as conn, bound.on(conn):
                    conn.execute("SELECT pg_sleep(0.001)")
                with lock:
                    counts["cut" if bound.cut else "answered"] += 1
            except psycopg.OperationalError as exc:
                with lock:
                    if bound.cut:
                        counts["cut"] += 1
                    else:
                        stray.append(str(exc).strip()[:200])

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(t.is_alive() for t in threads)
    finally:
        pool.close(timeout=5)
    assert not stray, stray[:5]
    assert counts["cut"] and counts["answered"], counts


def _bounded_while_frozen(pg, conn, query: str, params=()) -> tuple[Bound, float]:
    """``query`` on ``conn`` under a 0.5 s bound while the cluster is frozen: the bound, and how long it took."""
    from tests.support.servers import frozen

    with frozen(pg):
        bound, started = Bound(0.5), time.monotonic()
        try:
            with bound.on(conn):
                conn.execute(query, params)
        except psycopg.OperationalError:
            pass
        return bound, time.monotonic() - started


def test_a_bound_ends_a_send_blocked_on_a_frozen_server(tmp_path):
    """A frozen server reads nothing: a query larger than the socket buffers blocks libpq in sending it, not in
    waiting for the answer. The bound still ends it."""

    from tests.support.servers import PostgresCluster

    with PostgresCluster() as pg:
        conn = psycopg.connect(pg.url, autocommit=True)
        conn.execute("SELECT 1")
        bound, took = _bounded_while_frozen(pg, conn, "SELECT length(%s)", ("x" * 64_000_000,))
        assert bound.cut and conn.closed and took < 10, (bound.cut, conn.closed, took)


def test_a_bound_cuts_a_tls_connection_to_a_frozen_server(tmp_path):
    """sslmode=require: the socket shut under OpenSSL, a frozen server's TLS session ends as a plain one does."""
    import shutil

    from tests.support.actionlog import sql
    from tests.support.redisplus import TestCertificates
    from tests.support.servers import PostgresCluster

    certs = TestCertificates(tmp_path / "certs")
    with PostgresCluster() as pg:
        for source, name in ((certs.server, "server.crt"), (certs.server_key, "server.key")):
            target = pg.data / name
            shutil.copy(source, target)
            os.chmod(target, 0o600)
            stat = os.stat(pg.data)
            os.chown(target, stat.st_uid, stat.st_gid)
        sql(pg.url, "ALTER SYSTEM SET ssl = on")
        sql(pg.url, "SELECT pg_reload_conf()")
        url = pg.url + "&sslmode=require"
        deadline = time.monotonic() + 15
        while True:
            try:
                conn = psycopg.connect(url, autocommit=True)
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, "ssl never came on"
                time.sleep(0.1)
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
        bound, took = _bounded_while_frozen(pg, conn, "SELECT 1")
        assert bound.cut and conn.closed and took < 10, (bound.cut, conn.closed, took)
        with psycopg.connect(url, autocommit=True) as again:
            assert again.execute("SELECT 1").fetchone() == (1,)


def test_a_renewed_bound_lets_a_block_that_makes_progress_run_past_it_and_cuts_it_once_it_stops(database_url):
    conn = psycopg.connect(database_url, autocommit=True)
    bound, started = Bound(1.0), time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        with bound.on(conn):
            for _ in range(8):  # 2.4 s in all, never 1 s without progress
                conn.execute("SELECT pg_sleep(0.3)")
                bound.renew()
            progressed = time.monotonic() - started
            conn.execute("SELECT pg_sleep(30)")  # no progress: cut 1 s after the last renewal
    assert progressed > 2 and bound.cut and conn.closed
    assert time.monotonic() - started < progressed + 5
