"""Guarded actions when things break: the action log's database stops, the executing process is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bot.core.invocation import Actor, Where
from tests.conftest import ALICE, write_config
from tests.support.actionlog import TABLE, slow_commit, sql
from tests.support.appenders import until
from tests.support.commands import COUNTER, executions

OPS = Where("C-ops", channel_name="ops")



def test_no_side_effect_without_its_confirm_row(own_state_db, make_runtime, redis_client):
    pg, path = own_state_db
    runtime = make_runtime(path)
    preview = runtime.engine.handle("test bump --by 2", Actor(ALICE), OPS)
    assert preview.kind == "preview"

    pg.stop()
    refused = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    assert refused.kind == "unavailable", refused.result
    assert refused.exit_code == 1 and refused.ephemeral
    assert "was not executed" in refused.result.summary and "confirm again" in refused.result.summary
    assert executions(redis_client) == 0

    pg.start()
    done = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)  # the same Confirm button, once it is back

    assert done.kind == "result" and done.result.data["counter"] == 2
    assert executions(redis_client) == 1
    entries = runtime.state.action_log.entries()
    assert [e.action for e in entries] == ["request", "not_acted_on", "confirm", "outcome"]
    marker = entries[1].payload
    assert (marker["of"], marker["pending_id"], marker["command"]) == ("confirm", preview.pending.id, "test bump")
    assert "row" not in marker  # the server was down: no confirm row was written at all


def test_a_request_the_log_refused_is_not_offered_and_says_so_in_the_log(own_state_db, make_runtime, redis_client):
    pg, path = own_state_db
    runtime = make_runtime(path)
    runtime.engine.handle("dlq status", Actor(ALICE), OPS)  # the log's tables exist, with its request and outcome

    pg.stop()
    refused = runtime.engine.handle("test bump --by 2", Actor(ALICE), OPS)

    assert refused.kind == "result" and refused.result.status == "error"
    assert "action log cannot be written" in refused.result.summary and "was not offered" in refused.result.summary
    assert not refused.result.buttons and refused.pending is None

    pg.start()
    later = make_runtime(path).state.action_log  # another process: this one waits out its back-off before retrying
    assert later.drain() == 1
    entries = later.entries()
    assert [e.action for e in entries] == ["request", "outcome", "not_acted_on"]
    assert (entries[2].payload["of"], entries[2].payload["command"]) == ("request", "test bump")
    assert "row" not in entries[2].payload
    assert later.verify(full=True).ok


def test_a_confirm_committed_after_its_answer_was_lost_is_followed_by_not_acted_on(own_state_db, make_runtime,
                                                                                  redis_client):
    """The confirm row's COMMIT outlives the action log's bound (a storage stall while PostgreSQL flushes it, here a
    deferred trigger): the bot cannot tell whether the row is in, so nothing runs and the Confirm is given back; then
    PostgreSQL commits it after all. The log must not hold a confirm that never ran without saying so: the
    not_acted_on entry after it names that row. Confirming again runs once."""
    pg, path = own_state_db
    runtime = make_runtime(path)
    preview = runtime.engine.handle("test bump --by 2", Actor(ALICE), OPS)
    slow_commit(pg.url, 13, action="confirm")

    refused = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    assert refused.kind == "unavailable", refused.result
    assert "was not executed" in refused.result.summary and executions(redis_client) == 0
    until(lambda: sql(pg.url, f"SELECT count(*) FROM {TABLE} WHERE action = 'confirm'")[0][0] == 1, timeout=30)
    sql(pg.url, f"DROP TRIGGER slow_commit ON {TABLE}")

    done = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    assert done.kind == "result" and done.result.data["counter"] == 2
    assert executions(redis_client) == 1
    entries = runtime.state.action_log.entries()
    assert [e.action for e in entries] == ["request", "confirm", "not_acted_on", "confirm", "outcome"]
    assert (entries[2].payload["of"], entries[2].payload["row"]) == ("confirm", entries[1].id)
    assert entries[2].payload["row_hash"] == entries[1].hash  # that row, not another that took its id
    assert entries[2].payload["pending_id"] == entries[1].payload["pending_id"] == preview.pending.id
    assert runtime.state.action_log.verify(full=True).ok


def _executor(path, redis_client, text: str) -> subprocess.Popen:
    """An ``opsbot run --yes`` that is executing ``text`` (its side effect has started) when this returns."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.cli_with_test_commands", "--config", str(path),
                             "run", "--yes", text], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "RUN_MIGRATIONS": "true"})
    deadline = time.monotonic() + 30
    while executions(redis_client) == 0:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the executor never started"
        time.sleep(0.02)
    return proc


@pytest.fixture
def quick_timeout(tmp_path, database_url, redis_client):
    path = write_config(tmp_path / "quick.yaml", database_url)
    path.write_text(path.read_text().replace("  confirm_ttl: 5m", "  confirm_ttl: 5m\n  executor_timeout: 1s"))
    return path


def test_a_killed_executor_is_reported_as_interrupted_never_as_done(quick_timeout, make_runtime, redis_client,
                                                                     fake_slack):
    from slack_sdk import WebClient

    runtime = make_runtime(quick_timeout, slack=WebClient(token="xoxb-test-token-0000", base_url=fake_slack.api_url))
    proc = _executor(quick_timeout, redis_client, "test bump --by 5 --slow 30")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    pending_id = redis_client.keys("opsbot:exec:*")[0].decode().rsplit(":", 1)[1]
    time.sleep(1.2)  # the dead executor's heartbeat runs out

    # Its click is delivered again (another replica took over the job): nothing runs twice, and it says why.
    again = runtime.engine.confirm(pending_id, Actor.local(), Where("cli"))

    assert again.kind == "interrupted" and again.exit_code == 1
    assert "`test bump --by 5 --slow 30.0` was interrupted" in again.result.summary
    assert "Nothing was run again" in again.result.summary
    assert executions(redis_client) == 1 and redis_client.get(COUNTER) is None  # it died before adding
    outcomes = [e.payload for e in runtime.state.action_log.entries() if e.action == "outcome"]
    assert [(o["status"], o["pending_id"]) for o in outcomes] == [("interrupted", pending_id)]
    announced = [c.body["text"] for c in fake_slack.calls("chat.postMessage") if "interrupted" in c.body["text"]]
    assert len(announced) == 1

    # Asked again, or swept by a worker: reported, but logged and announced only once.
    assert runtime.engine.confirm(pending_id, Actor.local(), Where("cli")).kind == "interrupted"
    assert runtime.engine.report_interrupted() == 0
    assert len([e for e in runtime.state.action_log.entries() if e.action == "outcome"]) == 1

    # Running it again shows a fresh plan.
    fresh = runtime.engine.handle("test bump --by 5", Actor(ALICE), OPS)
    assert fresh.kind == "preview" and fresh.pending.id != pending_id


def test_a_worker_sweep_reports_an_executor_that_died_with_nobody_asking(quick_timeout, make_runtime, redis_client):
    runtime = make_runtime(quick_timeout)
    proc = _executor(quick_timeout, redis_client, "test bump --slow 30")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    assert runtime.engine.report_interrupted() == 0  # still beating: not yet
    time.sleep(1.2)
    assert runtime.engine.report_interrupted() == 1
    assert runtime.engine.report_interrupted() == 0
    outcome = [e.payload for e in runtime.state.action_log.entries() if e.action == "outcome"]
    assert outcome[0]["status"] == "interrupted" and "was interrupted" in outcome[0]["summary"]


def test_a_live_slow_executor_is_not_reported(quick_timeout, make_runtime, redis_client):
    runtime = make_runtime(quick_timeout)
    proc = _executor(quick_timeout, redis_client, "test bump --slow 3")
    try:
        time.sleep(1.5)  # longer than the timeout: only its heartbeat keeps it alive
        assert runtime.engine.report_interrupted() == 0
        pending_id = redis_client.keys("opsbot:exec:*")[0].decode().rsplit(":", 1)[1]
        late = runtime.engine.confirm(pending_id, Actor.local(), Where("cli"))
        assert late.kind == "taken" and "It is running now" in str(late.result.sections)
    finally:
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert runtime.engine.report_interrupted() == 0
