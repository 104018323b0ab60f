"""opsbot behind a real PgBouncer in transaction pooling mode (as Supabase's pooler, RDS Proxy and most managed
poolers run): prepared statements off, settings and locks transaction-scoped, guarded confirms and a 10,000-entry
trim with the action log and the archive through the pooler, `check` saying which mode is in use."""

from __future__ import annotations

import threading
from collections import Counter

import psycopg
import pytest
from slack_sdk import WebClient

from bot.config.pgurl import pg_params
from bot.core.invocation import Actor, Where
from bot.store.postgres import connect
from tests.conftest import ALICE, BOB, BOT_TOKEN, write_config
from tests.support.dlq import HookedArchive, archive_rows, assert_exactly_once, dead_letter, kill
from tests.support.pgbouncer import PgBouncer
from tests.support.commands import EXECUTIONS

OPS = Where("C-ops", channel_name="ops")


@pytest.fixture
def bouncer(database_url):
    with PgBouncer(database_url, pool_mode="transaction", pool_size=2) as running:
        yield running


NO_LIMITS = "limits: {per_user: '0', guarded_per_user: '0', per_command: '0'}\n"


def pooled_runtime(tmp_path, url, make_runtime, fake_slack, extra=""):
    tmp_path.mkdir(exist_ok=True)
    path = write_config(tmp_path / "app.yaml", url, api_url=fake_slack.api_url, extra=NO_LIMITS + extra)
    return make_runtime(path, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))


def _hammer(url: str, stop: threading.Event) -> None:
    """Another application on the same pooler, preparing its statements (psycopg's default) as it goes."""
    while not stop.is_set():
        try:
            with psycopg.connect(url, autocommit=True, prepare_threshold=0) as conn:
                for i in range(20):
                    conn.execute("SELECT %s::int + 1", (i,))
        except psycopg.Error:
            pass  # it breaks itself (that is the issue); opsbot must not


def test_the_issue_prepared_statements_break_behind_transaction_pooling_and_ours_do_not(bouncer):
    """The failure of the issue, deterministically: two clients share one server session; the second's automatic
    prepared statement collides with the first's. opsbot's connections (pgbouncer=true) never prepare."""
    with PgBouncer(bouncer.url.replace(f":{bouncer.port}/", f":{bouncer.server.get('port') or 5432}/"),
                   pool_size=1) as one:
        first = psycopg.connect(one.url, autocommit=True)
        second = psycopg.connect(one.url, autocommit=True)
        with first, second:
            for i in range(6):
                first.execute("SELECT %s::int", (i,))
            with pytest.raises(psycopg.errors.DuplicatePreparedStatement, match="_pg3_0"):
                for i in range(6):
                    second.execute("SELECT %s::text", (str(i),))
        params = pg_params(one.url + "?pgbouncer=true")
        assert params.pooler == "transaction" and not params.prepare
        with connect(params, autocommit=True) as ours, connect(params, autocommit=True) as theirs:
            for i in range(20):
                assert ours.execute("SELECT %s::int", (i,)).fetchone() == (i,)
                assert theirs.execute("SELECT %s::text", (str(i),)).fetchone() == (str(i),)
            assert ours.prepare_threshold is None


def test_a_long_running_bot_confirms_many_guarded_actions_through_the_pooler(bouncer, tmp_path, make_runtime,
                                                                             fake_slack, redis_client):
    runtime = pooled_runtime(tmp_path, bouncer.url + "?pgbouncer=true&connection_limit=4", make_runtime, fake_slack)
    assert runtime.state.pool.max_size == 4
    stop = threading.Event()
    others = [threading.Thread(target=_hammer, args=(bouncer.url, stop)) for _ in range(2)]
    for thread in others:
        thread.start()
    outcomes: list[str] = []
    summaries: list = []
    errors: list[str] = []

    replica = pooled_runtime(tmp_path / "replica", bouncer.url + "?pgbouncer=true&connection_limit=4", make_runtime,
                             fake_slack)  # a second `serve` replica on the same action log

    def operator(user: str, rounds: int, engine) -> None:
        for _ in range(rounds):
            preview = engine.handle("test bump", Actor(user), OPS)
            if preview.kind != "preview":
                errors.append(preview.result.summary)
                continue
            done = engine.confirm(preview.pending.id, Actor(user), OPS)
            while done.kind == "refused" and done.pending is not None:  # another operator moved the counter: the
                # new plan is shown, and confirmed
                done = engine.confirm(done.pending.id, Actor(user), OPS)
            outcomes.append(done.result.status)
            summaries.append((done.kind, done.result.summary[:40]))
            if done.result.status != "ok":
                errors.append(done.result.summary)

    try:
        workers = [threading.Thread(target=operator, args=(user, 20, engine)) for user, engine in
                   ((ALICE, runtime.engine), (BOB, replica.engine), (ALICE, replica.engine))]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
    finally:
        stop.set()
        for thread in others:
            thread.join()

    assert errors == [] and outcomes == ["ok"] * 60, Counter(summaries)
    assert int(redis_client.get(EXECUTIONS)) == 60, Counter(summaries)
    entries = runtime.state.action_log.entries()
    actions = Counter(entry.action for entry in entries)
    assert actions["request"] >= 60 and actions["confirm"] >= 60 and actions["outcome"] >= 60, actions
    verified = runtime.engine.handle("log verify", Actor(ALICE), OPS).result
    assert verified.status == "ok", verified.summary
    assert "prepared statement" not in bouncer.log()


def test_a_ten_thousand_entry_trim_archives_through_the_pooler(bouncer, tmp_path, make_runtime, fake_slack,
                                                             redis_client, database_url):
    runtime = pooled_runtime(tmp_path, bouncer.url + "?pgbouncer=true", make_runtime, fake_slack)
    entries = [dead_letter(i) for i in range(10_000)]
    kill(redis_client, entries)
    stop = threading.Event()
    other = threading.Thread(target=_hammer, args=(bouncer.url, stop))
    other.start()
    try:
        preview = runtime.engine.handle("dlq trim jobs --keep 0", Actor(ALICE), OPS)
        assert preview.kind == "preview", preview.result.summary
        done = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS).result
    finally:
        stop.set()
        other.join()

    assert done.status == "ok" and done.data["dropped"] == 10_000, done.summary
    assert redis_client.llen("jobs:dead") == 0
    assert [row[2] for row in archive_rows(database_url)] == entries
    assert_exactly_once(redis_client, database_url, Counter(entries), "jobs", "jobs:dead")


class KillPoolerAfter(HookedArchive):
    """The real trim archive; the pooler is SIGKILLed by its PID right after the n-th batch is committed."""

    def __init__(self, archive, bouncer: PgBouncer, commits: int):
        super().__init__(archive)
        self.bouncer, self.commits = bouncer, commits

    def after(self, call, first, entries):
        if call == self.commits:
            self.bouncer.kill()


def test_the_pooler_killed_mid_trim_loses_nothing_and_the_trim_resumes(bouncer, tmp_path, make_runtime, fake_slack,
                                                                       redis_client, database_url):
    from commands.dlq.archive import TrimArchive
    from commands.dlq.redis_list import RedisListQueue
    from commands.dlq.settings import find_queue

    runtime = pooled_runtime(tmp_path, bouncer.url + "?pgbouncer=true", make_runtime, fake_slack)
    entries = [dead_letter(i) for i in range(3_000)]
    kill(redis_client, entries)
    queue = RedisListQueue(find_queue(runtime.settings, "jobs"), redis_client)
    archive = TrimArchive(runtime.state.pool, "opsbot", find_queue(runtime.settings, "jobs"))
    with pytest.raises(Exception):  # noqa: B017 - whatever psycopg says when its server vanishes
        queue.run_trim(keep=0, archive=KillPoolerAfter(archive, bouncer, commits=4), batch=250)
    assert_exactly_once(redis_client, database_url, Counter(entries), "jobs", "jobs:dead")
    bouncer.start()  # the pooler is back on the same port; the bot's pool replaces the dead connections

    preview = runtime.engine.handle("dlq trim jobs --keep 0", Actor(ALICE), OPS)
    assert preview.kind == "preview" and "resume the interrupted trim" in preview.result.summary, \
        preview.result.summary
    done = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS).result

    assert done.status == "ok", done.summary
    assert redis_client.llen("jobs:dead") == 0
    assert [row[2] for row in archive_rows(database_url)] == entries
    assert_exactly_once(redis_client, database_url, Counter(entries), "jobs", "jobs:dead")


def test_check_tells_a_session_mode_pooler_from_a_transaction_mode_one(database_url, tmp_path, make_runtime,
                                                                       fake_slack, redis_client):
    from bot.runtime.checks import run_checks

    # In session mode each client connection holds a server session for its life: the checks run at once, each
    # pooler probe needs two connections together, and the runtime's pools keep theirs open, so `opsbot check`
    # needs about six (with 4, checks waited for PgBouncer's query_wait_timeout, 120 s, depending on timing).
    with PgBouncer(database_url, pool_mode="session", pool_size=12) as session:
        runtime = pooled_runtime(tmp_path, session.url, make_runtime, fake_slack)
        found = {c["target"]: c for c in run_checks(runtime).data["checks"]}
    detail = found["database main"]["detail"]
    assert found["database main"]["level"] == "ok", detail
    assert f"pooler: none (a proxy answers on port {session.port} for PostgreSQL's" in detail
    assert "session mode, or no pooling" in detail


def test_check_gives_up_on_a_pooler_that_queues_its_queries_and_exits_on_time(database_url, tmp_path):
    """A session-mode pool whose one server session another client holds: PgBouncer takes the login and queues
    every query for its query_wait_timeout (120 s). `opsbot check` reports those targets as hanging at its
    deadline and exits then, instead of waiting the pooler out (its threads would have been joined at exit)."""
    import json
    import os
    import subprocess
    import sys
    import time

    with PgBouncer(database_url, pool_mode="session", pool_size=1) as session:
        with psycopg.connect(session.url, autocommit=True) as holder:
            holder.execute("SELECT 1")  # session mode: the pool's only server session is this client's now
            config = write_config(tmp_path / "app.yaml", session.url)
            started = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "bot", "--config", str(config), "check", "--json",
                                   "--deadline", "3"], capture_output=True, text=True, timeout=100,
                                  env={**os.environ, "RUN_MIGRATIONS": "true"})
            took = time.monotonic() - started
    checks = {c["target"]: c for c in json.loads(proc.stdout)["data"]["checks"]}
    assert proc.returncode == 1, proc.stderr
    assert checks["state postgres"]["level"] == "fail"
    assert checks["state postgres"]["detail"].startswith("no answer within 3 s (a pooler queueing the query")
    assert checks["state redis"]["level"] == "ok"  # the others still answer
    assert took < 30, f"check took {took:.0f}s: it waited for the pooler"
