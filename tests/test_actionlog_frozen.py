"""The bot's PostgreSQL freezes: every process of it stopped (a paused VM, a storage stall, a network that drops
every packet). Nothing refuses a connection and nothing times out on the server's side, so only the bot's own
bound ends the wait: no append, drain or worker may hang on it, nothing is lost, and what comes back is appended
once. The test's own cluster is frozen and thawed, by PID.
"""

from __future__ import annotations

import time

import pytest

from bot.store.actionlog import ActionLogUnavailable
from tests.support.appenders import joined, own_servers, slow_trigger, start, stored, until
from tests.support.servers import frozen
from tests.support.actionlog import sql


@pytest.fixture
def own(tmp_path):
    with own_servers(tmp_path) as servers:
        yield servers


def test_appends_to_a_frozen_postgres_each_return_within_the_bound_and_the_kept_go_in_once_it_thaws(own):
    """The pool's connections are open and idle when the cluster freezes: a query sent on one is received by the
    kernel and never answered. Strict appends raise (not in the log), keeping ones are kept, each within a bound;
    once thawed, a drain appends the kept entries once and the chain verifies."""
    pg, _, state = own
    log = state().action_log
    log.append("request", actor="U0", payload={"n": -1})
    outcomes: dict = {}
    with frozen(pg):
        started = time.monotonic()
        threads = start(log, [("request", n, n % 2 == 0) for n in range(8)], outcomes)
        joined(threads, timeout=40)
        took = time.monotonic() - started
        again = time.monotonic()
        assert log.append_or_keep("request", actor="U8", payload={"n": 8}) is None  # backing off: kept at once
        assert log.drain() == 0
        assert time.monotonic() - again < 1
    assert took < 20, took
    assert all(isinstance(outcomes[n], ActionLogUnavailable) for n in range(0, 8, 2)), outcomes
    assert all(outcomes[n] is None for n in range(1, 8, 2)), outcomes
    later = state().action_log
    until(lambda: later.drain() == 5 or None, timeout=30)
    assert sorted(stored(later)) == [-1, 1, 3, 5, 7, 8]
    assert later.verify(full=True).ok


def test_postgres_frozen_in_the_middle_of_a_transaction_rolls_it_back_and_loses_nothing(own):
    """The freeze comes while the batch's rows are being written (a trigger slows them): the bound cuts the
    connection; when PostgreSQL resumes it finds its client gone and rolls the transaction back, so the entries
    kept meanwhile are appended by the drain once, and none twice."""
    pg, _, state = own
    slow_trigger(pg.url, action="slow", seconds=1)
    log = state().action_log
    log.append("request", actor="U0", payload={"n": -1})
    outcomes: dict = {}
    threads = start(log, [("slow", n, False) for n in range(4)], outcomes)
    until(lambda: sql(pg.url, "SELECT count(*) FROM pg_stat_activity WHERE position('INSERT' in query) > 0"
                              " AND state = 'active' AND pid <> pg_backend_pid()")[0][0] > 0)
    with frozen(pg):
        joined(threads, timeout=40)
    assert outcomes == {n: None for n in range(4)}, outcomes
    sql(pg.url, "DROP TRIGGER slow_entry ON opsbot.action_log")
    later = state().action_log
    until(lambda: later.drain() == 4 or None, timeout=30)
    assert sorted(stored(later)) == [-1, 0, 1, 2, 3]
    assert later.verify(full=True).ok


def test_a_worker_thread_blocked_on_a_frozen_postgres_is_freed_while_other_threads_keep_appending(own):
    """One process, one chain: a thread whose transaction froze does not hold the threads behind it for longer
    than the bound, and appends made after the thaw commit at once."""
    pg, _, state = own
    log = state().action_log
    log.append("request", actor="U0", payload={"n": -1})
    outcomes: dict = {}
    with frozen(pg):
        first = start(log, [("request", 0, False)], outcomes)
        time.sleep(0.5)
        behind = start(log, [("request", n, False) for n in range(1, 6)], outcomes)
        joined(first + behind, timeout=40)
    assert all(outcomes[n] is None for n in range(6)), outcomes
    until(lambda: log.drain() == 6 or None, timeout=30)  # once its back-off after the failure is over
    entry = log.append("request", actor="U9", payload={"n": 9})
    assert entry.payload["n"] == 9
    assert sorted(stored(log)) == [-1, 0, 1, 2, 3, 4, 5, 9]
    assert log.verify(full=True).ok


def test_on_a_frozen_postgres_slack_is_still_answered_readyz_names_it_and_nothing_is_lost(
        tmp_path, make_runtime, fake_slack, slack_env):
    """At 3 a.m. the bot's PostgreSQL freezes. Readiness probes (more at once than the server has threads) are
    answered 503 naming PostgreSQL, each within its bound, and do not take the threads Slack's acks need; `/ops
    help` is acked and answered; once PostgreSQL resumes, the action-log entries kept meanwhile go in."""
    from concurrent.futures import ThreadPoolExecutor

    from slack_sdk import WebClient

    from tests.conftest import BOT_TOKEN, SIGNING_SECRET, write_config
    from tests.support.harness import SlackBot
    from tests.support.servers import PostgresCluster

    with PostgresCluster() as pg:
        runtime = make_runtime(write_config(tmp_path / "app.yaml", pg.url),
                               slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))
        bot = SlackBot(runtime, fake_slack, SIGNING_SECRET)
        try:
            assert bot.ready()[1] == 200

            with frozen(pg):
                with ThreadPoolExecutor(12) as pool:
                    probes = list(pool.map(bot.ready, range(12)))
                started = time.monotonic()
                reply = bot.command("help", wait=False)
                acked = time.monotonic() - started
                answer = bot.reply_to(reply.key, timeout=30)
                kept = runtime.state.action_log.kept()  # before the thaw: the worker's heartbeat drains them after
            assert all(status == 503 for _, status, _ in probes), probes
            assert all(body["checks"]["postgres"].startswith("error:") and body["checks"]["redis"] == "ok"
                       for _, _, body in probes), probes
            assert max(took for took, _, _ in probes) < 8, sorted(took for took, _, _ in probes)
            assert reply.http.status_code == 200 and acked < 3, acked
            assert "/ops: " in answer["text"] and "commands" in answer["text"]
            log = runtime.state.action_log
            assert kept >= 1
            until(lambda: log.drain() >= 0 and log.kept() == 0, timeout=40)  # this drain, or the worker's
            assert {e.action for e in log.entries()} >= {"request"}
            assert log.verify(full=True).ok
        finally:
            bot.close()
