"""The action log when its PostgreSQL (and Redis) go away: nothing lost, nothing twice, nobody kept waiting.

Every test runs its own PostgreSQL cluster and redis-server (tests/support/servers.py)
and stops only those, by PID.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import psycopg
import pytest

from bot.store.actionlog import ActionLogUnavailable
from bot.config.settings import load_settings
from bot.runtime.logs import JsonFormatter
from bot.core.redact import Redactor
from bot.runtime.factory import Runtime
from bot.store.state import State
from bot.runtime.worker import Worker
from tests.conftest import REPO, write_config
from tests.support.servers import PostgresCluster, RedisServer
from tests.support.actionlog import APPENDER


@pytest.fixture(scope="module")
def pg():
    with PostgresCluster() as server:
        yield server


@pytest.fixture
def rds():
    with RedisServer() as server:
        yield server


@pytest.fixture
def world(tmp_path, pg, rds):
    """(config path, a function building a State as a fresh process would) on the test's own servers."""
    if pg.pid is None:
        pg.start()
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS opsbot CASCADE")
    path = write_config(tmp_path / "app.yaml", pg.url, redis_url=rds.url)
    built: list[State] = []

    def state() -> State:
        built.append(State(load_settings(path, env=os.environ)))
        return built[-1]

    state().migrate()
    yield path, state
    for each in built:
        each.close()


def numbers(log) -> list:
    return [entry.payload.get("n") for entry in log.entries(limit=10_000)]


def warnings_from(caplog, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == logging.WARNING]


def test_postgres_down_between_appends_keeps_the_entries_and_appends_them_once_in_order(world, pg, caplog):
    path, state = world
    log = state().action_log
    log.append_or_keep("request", actor="U1", payload={"n": 0})
    pg.stop()

    started = time.monotonic()
    assert log.append_or_keep("outcome", actor="U1", payload={"n": 1}) is None  # waits once, at most ~2 s
    waited = time.monotonic() - started
    started = time.monotonic()
    for n in range(2, 6):
        assert log.append_or_keep("outcome", actor="U1", payload={"n": n}) is None
    again = time.monotonic() - started  # kept at once: nobody waits twice for a database that is down
    with pytest.raises(ActionLogUnavailable):
        log.append("confirm", actor="U1", payload={"n": "strict"})  # strict: tries again, refuses, keeps nothing

    assert waited < 3.0 and again < 0.5, (waited, again)
    assert log.kept() == 5
    said = warnings_from(caplog, "opsbot.actionlog")
    assert len(said) == 1 and f"127.0.0.1:{pg.port}/postgres" in said[0] and "kept in Redis" in said[0]
    assert not [r for r in caplog.records if r.name == "psycopg.pool"]

    pg.start()
    runtime = Runtime.build(load_settings(path, env=os.environ))  # a worker: its heartbeat drains
    try:
        Worker(runtime, threads=1)._beat()
        log = runtime.state.action_log
        assert log.kept() == 0 and numbers(log) == [0, 1, 2, 3, 4, 5]
        kept = log.entries()[1:]
        assert len({e.payload["spool_id"] for e in kept}) == 5
        assert all(e.payload["occurred_at"] < e.created_at.isoformat() for e in kept)
        assert log.append("request", actor="U1", payload={"n": 6}).id == 7
        report = log.verify(full=True)
        assert report.level == "ok" and report.rows == 7 and report.segments == 1
    finally:
        runtime.close()


def test_two_processes_draining_at_once_append_each_kept_entry_exactly_once(world, pg):
    path, state = world
    log = state().action_log
    pg.stop()
    for n in range(1200):  # three batches each way, so the two drainers interleave
        log.append_or_keep("outcome", actor="U1", payload={"n": n})
    assert log.kept() == 1200
    pg.start()

    drainers = [subprocess.Popen([sys.executable, "-c", APPENDER, str(path), "drain", "3"], cwd=REPO)
                for _ in range(2)]
    assert [p.wait(timeout=120) for p in drainers] == [0, 0]

    fresh = state().action_log
    assert fresh.kept() == 0 and numbers(fresh) == list(range(1200))
    assert fresh.verify(full=True).level == "ok"


def test_with_redis_down_too_the_entry_is_one_json_line_at_error(world, pg, rds, caplog):
    _, state = world
    log = state().action_log
    pg.stop()
    rds.stop()

    assert log.append_or_keep("outcome", actor="U1", payload={"summary": "requeued 40", "n": 1}) is None

    lost = [r for r in caplog.records if r.name == "opsbot.actionlog" and r.levelno == logging.ERROR]
    assert len(lost) == 1
    line = JsonFormatter(Redactor()).format(lost[0])
    assert "\n" not in line
    entry = json.loads(json.loads(line)["msg"].split("recorded here: ", 1)[1])
    assert entry["action"] == "outcome" and entry["payload"] == {"summary": "requeued 40", "n": 1}
    assert entry["occurred_at"] and entry["spool_id"]


def test_a_postgres_restart_between_appends_costs_no_entry_and_no_wait(world, pg):
    _, state = world
    log = state().action_log
    log.append("request", actor="U1", payload={"n": 0})
    pg.stop()
    pg.start()  # the pool still holds a connection to the old server

    started = time.monotonic()
    assert log.append("request", actor="U1", payload={"n": 1}).id == 2
    assert time.monotonic() - started < 1.0
    assert log.verify(full=True).level == "ok"


def test_opsbot_run_with_postgres_down_answers_within_seconds_and_says_so_once(world, pg):
    path, _ = world
    pg.stop()
    env = {k: v for k, v in os.environ.items() if k != "RUN_MIGRATIONS"}

    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bot", "--config", str(path), "run", "dlq status"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    elapsed = time.monotonic() - started

    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    warned = [line for line in lines if line["level"] == "warning"]
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 6.0, elapsed  # was 10.9 s: two 5 s pool waits
    assert len(warned) == 1 and f"127.0.0.1:{pg.port}/postgres" in warned[0]["msg"]
    assert not [line for line in lines if line["logger"] == "psycopg.pool"]

    verify = subprocess.run([sys.executable, "-m", "bot", "--config", str(path), "run", "log verify"],
                            capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert verify.returncode == 1 and f"PostgreSQL (127.0.0.1:{pg.port}/postgres) does not answer" in verify.stdout
