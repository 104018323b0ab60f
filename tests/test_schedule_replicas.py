"""Scheduled checks across two real processes on one Redis and one PostgreSQL, on a clock the test moves.

- Two replicas sweeping as fast as they can: every due slot runs exactly once, and is posted once.
- A replica killed with SIGKILL in the middle of a run: while its lease holds nobody runs the slot
  again; once the lease has run out the other replica takes the slot over (attempt 2) and records
  and posts it exactly once; the next slot runs as usual.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from tests.conftest import BOT_TOKEN, REPO, write_config
from tests.support.servers import RedisServer

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def _set_clock(path: Path, now: datetime) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(now.isoformat())
    temporary.replace(path)  # atomic: a replica never reads half a timestamp


def _wait(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _runs(database_url: str) -> list[dict]:
    with psycopg.connect(database_url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        try:
            return cur.execute("SELECT * FROM opsbot.schedule_runs ORDER BY id").fetchall()
        except psycopg.errors.UndefinedTable:
            return []


class Replica:
    def __init__(self, config: Path, clock: Path, owner: str):
        env = {**os.environ, "TEST_SLACK_BOT_TOKEN": BOT_TOKEN, "PYTHONPATH": str(REPO)}
        self.owner = owner
        self.process = subprocess.Popen([sys.executable, "-m", "tests.support.schedule_process", str(config),
                                         str(clock), owner], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)

    def sweeps(self, redis_client) -> int:
        return int(redis_client.get(f"test:sweeps:{self.owner}") or 0)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)  # this process only, by its PID
        self.process.wait(timeout=30)


@pytest.fixture
def replicas(tmp_path, database_url, redis_client, fake_slack):
    started: list[Replica] = []
    clock = tmp_path / "clock"
    _set_clock(clock, T0)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS opsbot CASCADE")

    def start(config: Path, owner: str) -> Replica:
        replica = Replica(config, clock, owner)
        started.append(replica)
        _wait(lambda: replica.sweeps(redis_client) > 0 or replica.process.poll() is not None, what=f"{owner} up")
        assert replica.process.poll() is None, replica.process.stderr.read().decode()[-3000:]
        return replica

    yield start, clock
    for replica in started:
        replica.kill()
        replica.process.stderr.close()


def test_two_replicas_run_each_due_slot_exactly_once(tmp_path, database_url, redis_client, fake_slack, replicas):
    start, clock = replicas
    config = write_config(tmp_path / "app.yaml", database_url, api_url=fake_slack.api_url,
                          extra="schedules:\n  - {name: dead letters, every: 1m, run: dlq status, post: always}\n")
    a, b = start(config, "replica-a"), start(config, "replica-b")
    slots = 12
    for n in range(1, slots + 1):
        _set_clock(clock, T0 + timedelta(minutes=n))
        _wait(lambda: len([r for r in _runs(database_url) if r["status"] != "running"]) >= n, what=f"slot {n}")
        # both replicas have looked again since the slot was run: a second run would have happened by now
        seen = a.sweeps(redis_client), b.sweeps(redis_client)
        _wait(lambda: a.sweeps(redis_client) > seen[0] + 1 and b.sweeps(redis_client) > seen[1] + 1,
              what="both replicas sweeping again")
    runs = _runs(database_url)
    assert len(runs) == slots
    assert [r["due_at"] for r in runs] == [T0 + timedelta(minutes=n) for n in range(1, slots + 1)]
    assert {r["status"] for r in runs} == {"ok"} and {r["attempt"] for r in runs} == {1}
    assert {r["owner"] for r in runs} <= {"replica-a", "replica-b"}
    print("slots run by", {o: sum(r["owner"] == o for r in runs) for o in ("replica-a", "replica-b")})
    posts = [c for c in fake_slack.calls("chat.postMessage") if c.ok]
    assert len(posts) == slots  # post: always, once per slot


def test_a_replica_killed_mid_run_loses_nothing_and_doubles_nothing(tmp_path, database_url, redis_client,
                                                                    fake_slack, replicas):
    start, clock = replicas
    with RedisServer() as target:
        config = write_config(tmp_path / "app.yaml", database_url, api_url=fake_slack.api_url,
                              extra="schedules:\n  - {name: dlq, every: 1m, run: dlq status, post: always}\n")
        lines = config.read_text().splitlines()
        at = lines.index("redis:")
        lines[at + 1] = f'  main: {{url: "{target.url}"}}'  # the queues live on a Redis the test can freeze
        config.write_text("\n".join(lines) + "\n")
        a = start(config, "replica-a")
        os.kill(target.pid, signal.SIGSTOP)  # dlq status will hang on it
        try:
            _set_clock(clock, T0 + timedelta(minutes=1))
            running = _wait(lambda: [r for r in _runs(database_url) if r["status"] == "running"], what="a claim")
            assert running[0]["owner"] == "replica-a" and running[0]["attempt"] == 1
            a.kill()  # SIGKILL in the middle of the run
        finally:
            os.kill(target.pid, signal.SIGCONT)
        b = start(config, "replica-b")
        seen = b.sweeps(redis_client)
        _wait(lambda: b.sweeps(redis_client) > seen + 3, what="b sweeping")
        [run] = _runs(database_url)
        assert run["status"] == "running" and run["attempt"] == 1  # the lease still holds: not run twice
        # the lease (guard.executor_timeout, 15 s) runs out on the test's clock
        _set_clock(clock, T0 + timedelta(minutes=1, seconds=16))
        _wait(lambda: _runs(database_url)[0]["status"] != "running", what="the take-over")
        [run] = _runs(database_url)
        assert (run["status"], run["attempt"], run["owner"]) == ("ok", 2, "replica-b")
        assert run["due_at"] == T0 + timedelta(minutes=1)
        seen = b.sweeps(redis_client)
        _wait(lambda: b.sweeps(redis_client) > seen + 3, what="b sweeping")
        assert len(_runs(database_url)) == 1
        _set_clock(clock, T0 + timedelta(minutes=2))
        _wait(lambda: len(_runs(database_url)) == 2 and _runs(database_url)[1]["status"] == "ok", what="next slot")
        assert _runs(database_url)[1]["attempt"] == 1
        seen = b.sweeps(redis_client)
        _wait(lambda: b.sweeps(redis_client) > seen + 1, what="b done with the slot, post included")
        posts = [c for c in fake_slack.calls("chat.postMessage") if c.ok]
        assert len(posts) == 2  # the taken-over slot and the next one, once each
