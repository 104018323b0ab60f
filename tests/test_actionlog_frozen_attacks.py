"""Attacks on the bound around the action log's PostgreSQL work (bot.store.deadline): a server that froze, by
SIGSTOP to every process of the test's own cluster, at the moments the bound does not cover by itself. Each server
is the test's own and is stopped and resumed by PID only.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from bot.store.actionlog import ActionLogUnavailable
from tests.support.actionlog import TABLE, slow_commit, sql
from tests.support.appenders import joined, own_servers, start, states, stored, until
from tests.support.servers import frozen


@pytest.fixture
def own(tmp_path):
    with own_servers(tmp_path) as servers:
        yield servers


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_dropped_connection_then_a_frozen_server_does_not_hang_the_pool_check(own):
    """The pool holds two idle connections. The server ends one (idle_session_timeout, a pooler or a firewall
    dropping idle sessions: here SIGTERM to its backend, as pg_terminate_backend), then freezes. The next append
    gets the dropped one: a plain OperationalError on attempt 1, nothing written, so ``_commit`` asks the pool to
    check its connections; the other idle one's check is sent to the frozen server and, unbounded, waits for ever,
    and with it every append behind it in the group commit. Each must return within the bounds."""
    pg, _, state = own
    log = state().action_log
    log.append("request", actor="U0", payload={"n": -1})
    first, second = log.pool.getconn(), log.pool.getconn()
    dropped = first.info.backend_pid
    log.pool.putconn(first)  # handed out first: the pool takes from the front, returns to the back
    log.pool.putconn(second)
    os.kill(dropped, signal.SIGTERM)
    until(lambda: _gone(dropped))
    outcomes: dict = {}
    with frozen(pg):
        started = time.monotonic()
        head = start(log, [("request", 0, True)], outcomes)
        time.sleep(0.5)
        behind = start(log, [("request", n, False) for n in range(1, 4)], outcomes)
        try:
            joined(head + behind, timeout=45)
        finally:
            took = time.monotonic() - started
    assert took < 40, took
    assert isinstance(outcomes[0], ActionLogUnavailable), outcomes
    assert all(outcomes[n] is None for n in range(1, 4)), outcomes
    later = state().action_log
    until(lambda: later.drain() == 3 or None, timeout=30)
    assert sorted(stored(later)) == [-1, 1, 2, 3]
    assert later.verify(full=True).ok


def test_an_entry_whose_commit_outlives_the_bound_is_in_the_log_once(own):
    """The server has received COMMIT and is still working on it (here a deferred trigger, as a storage stall during
    the commit's flush would) when the bound passes: the client is cut and ``append_or_keep`` keeps the entry, but
    PostgreSQL goes on and commits it. The kept copy carries the id and hash of the row it was written as, so the
    drain finds it in the log and does not append it again (it did: [-1, 1, 1]). The module's promise is 'exactly
    once'."""
    pg, _, state = own
    log = state().action_log
    log.append("request", actor="U0", payload={"n": -1})
    slow_commit(pg.url, 13)
    started = time.monotonic()
    assert log.append_or_keep("slowcommit", actor="U1", payload={"n": 1}) is None  # cut: kept
    assert time.monotonic() - started < 12
    assert log.kept() == 1
    until(lambda: sql(pg.url, f"SELECT count(*) FROM {TABLE} WHERE action = 'slowcommit'")[0][0] == 1, timeout=30)
    sql(pg.url, f"DROP TRIGGER slow_commit ON {TABLE}")
    later = state().action_log
    until(lambda: later.drain() >= 0 and later.kept() == 0, timeout=40)
    assert later.verify(full=True).ok
    assert sorted(stored(later)) == [-1, 1]


def test_an_entry_whose_cut_commit_was_rolled_back_is_appended_by_the_drain(own):
    """The other outcome of a commit whose answer was lost: PostgreSQL rolled it back (here the deferred trigger
    fails after the bound passed). The row the kept copy names is not in the log, so the drain appends the copy:
    the entry is in the log once, not lost."""
    pg, _, state = own
    log = state().action_log
    log.append("request", actor="U0", payload={"n": -1})
    slow_commit(pg.url, 13, then_fail=True)
    assert log.append_or_keep("slowcommit", actor="U1", payload={"n": 1}) is None  # cut: kept, with its row's id
    sql(pg.url, f"DROP TRIGGER slow_commit ON {TABLE}")  # waits for the cut transaction's end: its rollback
    assert sql(pg.url, f"SELECT count(*) FROM {TABLE} WHERE action = 'slowcommit'")[0][0] == 0
    later = state().action_log
    until(lambda: later.drain() >= 0 and later.kept() == 0, timeout=40)
    assert sorted(stored(later)) == [-1, 1]
    assert later.verify(full=True).ok


def test_through_pgbouncer_in_transaction_mode_a_frozen_postgres_bounds_appends_and_the_chain_survives(own, tmp_path):
    """PgBouncer itself answers (logins, queueing); the PostgreSQL behind it froze. The bound cuts the client's
    socket to the pooler, which must drop the server session it was in the middle of a transaction on, not hand it
    to the next client: after the thaw appends go through the pooler at once, the kept ones are drained once and the
    chain verifies."""
    from tests.conftest import write_config
    from tests.support.pgbouncer import PgBouncer

    pg, rds, _ = own
    with PgBouncer(pg.url, pool_mode="transaction", pool_size=2) as bouncer, states(
            write_config(tmp_path / "pooled.yaml", bouncer.url + "?pgbouncer=true", redis_url=rds.url)) as state:
        log = state().action_log
        log.append("request", actor="U0", payload={"n": -1})
        outcomes: dict = {}
        with frozen(pg):
            started = time.monotonic()
            threads = start(log, [("request", n, n % 2 == 0) for n in range(6)], outcomes)
            try:
                joined(threads, timeout=45)
            finally:
                took = time.monotonic() - started
        assert took < 40, took
        assert all(isinstance(outcomes[n], ActionLogUnavailable) for n in range(0, 6, 2)), outcomes
        assert all(outcomes[n] is None for n in range(1, 6, 2)), outcomes
        later = state().action_log
        until(lambda: later.drain() == 3 or None, timeout=40)
        assert later.append("request", actor="U9", payload={"n": 9}).payload["n"] == 9
        assert sorted(stored(later)) == [-1, 1, 3, 5, 9]
        assert later.verify(full=True).ok


def test_readiness_probes_against_a_frozen_redis_do_not_take_the_threads_slacks_ack_needs(
        tmp_path, make_runtime, fake_slack, slack_env):
    """The same outage as a frozen PostgreSQL, on the bot's Redis: /readyz pings it with the general client (5 s
    socket timeout), so as many probes as waitress has threads hold every one of them for 5 s and the slash command
    that arrives meanwhile is acked after Slack's 3 s are up. The ack itself needs only 1 s to say the queue is
    down, and the probe needs no longer to say Redis does not answer."""
    from concurrent.futures import ThreadPoolExecutor

    from slack_sdk import WebClient

    from tests.conftest import BOT_TOKEN, SIGNING_SECRET, write_config
    from tests.support.harness import SlackBot
    from tests.support.servers import PostgresCluster, RedisServer

    with PostgresCluster() as pg, RedisServer() as rds:
        runtime = make_runtime(write_config(tmp_path / "app.yaml", pg.url, redis_url=rds.url),
                               slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))
        bot = SlackBot(runtime, fake_slack, SIGNING_SECRET, with_worker=False)
        try:
            assert bot.ready()[1] == 200

            os.kill(rds.pid, signal.SIGSTOP)
            try:
                with ThreadPoolExecutor(8) as pool:
                    probes = pool.map(bot.ready, range(8))
                    time.sleep(0.3)  # every thread of waitress's is taken by a probe
                    started = time.monotonic()
                    reply = bot.command("help", wait=False)
                    acked = time.monotonic() - started
                    probes = list(probes)
            finally:
                os.kill(rds.pid, signal.SIGCONT)
            assert reply.http.status_code == 200 and acked < 3, acked
            assert all(status == 503 and body["checks"]["redis"].startswith("error:") for _, status, body in probes)
            assert max(took for took, _, _ in probes) < 3, sorted(took for took, _, _ in probes)
        finally:
            bot.close()


@pytest.mark.parametrize("full", [False, True], ids=["status", "log-verify-full"])
def test_verifying_the_action_log_on_a_frozen_postgres_ends(own, full):
    """`/ops status` (a quick verification) and `/ops log verify --full` read the chain on a pooled connection: on a
    frozen server, unbounded, the worker thread running them waited for ever (status never answered, and each such
    command took one of the worker's threads for good). Each must end, naming PostgreSQL, and verify after."""
    import threading

    from commands.log import verify_action_log

    from bot.core.invocation import CommandError

    pg, _, state = own
    bot_state = state()
    for n in range(5):
        bot_state.action_log.append("request", actor="U0", payload={"n": n})
    got: list = []

    def run() -> None:
        try:
            got.append(verify_action_log(bot_state, full=full, quick=not full))
        except BaseException as exc:  # noqa: BLE001 - every outcome is looked at
            got.append(exc)

    with frozen(pg):
        started = time.monotonic()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(50)
        took = time.monotonic() - started
    thread.join(30)
    assert took < 45, f"the verification never ended: {got}"
    assert len(got) == 1 and isinstance(got[0], CommandError) and "PostgreSQL" in str(got[0]), got
    assert verify_action_log(state(), full=True).ok
