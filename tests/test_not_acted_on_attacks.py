"""Attacks on the not_acted_on entry a refused request or confirm leaves in the action log.

Real servers only: a PostgreSQL cluster (and where needed a redis-server) of the test's own, stopped, frozen or
killed by PID; the shared Redis ($REDIS_URL) holds the test commands' counter.
"""

from __future__ import annotations

import threading
import time

import pytest

from bot.core.invocation import Actor, Where
from bot.store.actionlog import ActionLog
from tests.conftest import ALICE, BOB, write_config
from tests.support.actionlog import TABLE, slow_commit, sql
from tests.support.commands import executions
from tests.support.servers import PostgresCluster, RedisServer, frozen

OPS = Where("C-ops", channel_name="ops")
TRANSACTION_WAIT = 10.0  # bot.store.actionlog's bound on one append's transaction



def actions(log: ActionLog) -> list[str]:
    return [e.action for e in log.entries()]


@pytest.fixture
def own_pg_and_redis(tmp_path, redis_client):
    """The bot's state (pending actions, the log's spool) in a redis-server of the test's own; the action log in a
    PostgreSQL cluster of its own. The test commands' counter stays in the shared Redis."""
    with PostgresCluster() as pg, RedisServer() as rds:
        yield pg, rds, write_config(tmp_path / "own.yaml", pg.url, redis_url=rds.url)


def _confirm_in_thread(runtime, pending_id, actor=Actor(ALICE)):
    done: dict = {}

    def run():
        started = time.monotonic()
        try:
            done["outcome"] = runtime.engine.confirm(pending_id, actor, OPS)
        except BaseException as exc:  # what the transport would get
            done["raised"] = exc
        done["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, done


# -- timing: a frozen PostgreSQL -------------------------------------------------------------------------------------

def test_a_frozen_log_at_confirm_refuses_within_one_bound_not_two(own_state_db, make_runtime, redis_client):
    pg, path = own_state_db
    runtime = make_runtime(path)
    preview = runtime.engine.handle("test bump --by 2", Actor(ALICE), OPS)
    assert preview.kind == "preview"

    with frozen(pg):
        started = time.monotonic()
        refused = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)
        seconds = time.monotonic() - started
        assert runtime.state.action_log.kept() == 1  # the not_acted_on entry, kept at once: no second wait
    print(f"\nfrozen PostgreSQL, confirm refused after {seconds:.2f}s")

    assert refused.kind == "unavailable", refused.result
    assert "no answer within" in refused.result.summary  # the original error, not the keep's
    assert seconds < TRANSACTION_WAIT + 2.0
    assert executions(redis_client) == 0

    done = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)
    assert done.kind == "result" and executions(redis_client) == 1
    assert actions(runtime.state.action_log) == ["request", "not_acted_on", "confirm", "outcome"]
    assert runtime.state.action_log.verify(full=True).ok


def test_a_frozen_log_at_request_refuses_within_one_bound_not_two(own_state_db, make_runtime, redis_client):
    pg, path = own_state_db
    runtime = make_runtime(path)
    runtime.engine.handle("dlq status", Actor(ALICE), OPS)

    with frozen(pg):
        started = time.monotonic()
        refused = runtime.engine.handle("test bump --by 2", Actor(ALICE), OPS)
        seconds = time.monotonic() - started
    print(f"\nfrozen PostgreSQL, request refused after {seconds:.2f}s")

    assert refused.result.status == "error" and "was not offered" in refused.result.summary
    assert seconds < TRANSACTION_WAIT + 2.0
    log = make_runtime(path).state.action_log
    assert log.drain() == 1
    assert actions(log) == ["request", "outcome", "not_acted_on"]
    assert log.verify(full=True).ok


def test_a_stopped_log_at_confirm_refuses_promptly(own_state_db, make_runtime, redis_client):
    pg, path = own_state_db
    runtime = make_runtime(path)
    preview = runtime.engine.handle("test bump", Actor(ALICE), OPS)
    pg.stop()
    started = time.monotonic()
    refused = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)
    seconds = time.monotonic() - started
    print(f"\nstopped PostgreSQL, confirm refused after {seconds:.2f}s")
    assert refused.kind == "unavailable" and seconds < 5.0


# -- PostgreSQL and Redis down together --------------------------------------------------------------------------------

def test_log_and_redis_both_gone_during_a_confirm_still_refuse_with_the_original_error(own_pg_and_redis, make_runtime,
                                                                                       redis_client, caplog):
    """PostgreSQL freezes under the confirm's row, and the bot's Redis dies while it waits: the not_acted_on entry
    cannot be kept anywhere but the log stream. The user must still get the refusal (not a Redis error), promptly."""
    pg, rds, path = own_pg_and_redis
    runtime = make_runtime(path)
    preview = runtime.engine.handle("test bump --by 2", Actor(ALICE), OPS)
    assert preview.kind == "preview"

    with frozen(pg):
        thread, done = _confirm_in_thread(runtime, preview.pending.id)
        time.sleep(1.5)  # claimed in Redis, waiting on PostgreSQL
        rds.kill()
        thread.join(timeout=60)
    print(f"\nfrozen PostgreSQL + dead Redis, confirm answered after {done.get('seconds', -1):.2f}s: "
          f"{done.get('outcome') and done['outcome'].kind or repr(done.get('raised'))}")

    assert not thread.is_alive()
    assert "raised" not in done, f"the confirm raised instead of refusing: {done['raised']!r}"
    refused = done["outcome"]
    assert refused.kind == "unavailable" and "no answer within" in refused.result.summary
    assert "was not executed" in refused.result.summary
    assert "for a fresh preview" in refused.result.summary  # its Confirm could not be given back: Redis is gone
    assert done["seconds"] < TRANSACTION_WAIT + 2.0
    assert executions(redis_client) == 0
    logged = [r.getMessage() for r in caplog.records if "not_acted_on" in r.getMessage()]
    assert logged, "the not_acted_on entry is in neither Redis nor the log stream"


def test_log_and_redis_both_gone_during_a_request_refuse_it_promptly(own_pg_and_redis, make_runtime, redis_client,
                                                                      caplog):
    """The same at a request (with both down before it, its plan fails first: Redis is the counter's target too)."""
    pg, rds, path = own_pg_and_redis
    runtime = make_runtime(path)
    runtime.engine.handle("dlq status", Actor(ALICE), OPS)
    done: dict = {}

    def run():
        started = time.monotonic()
        done["outcome"] = runtime.engine.handle("test bump --by 2", Actor(ALICE), OPS)
        done["seconds"] = time.monotonic() - started

    with frozen(pg):
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        time.sleep(1.5)  # planned, waiting on PostgreSQL for the request row
        rds.kill()
        thread.join(timeout=60)
    print(f"\nfrozen PostgreSQL + dead Redis, request refused after {done['seconds']:.2f}s")

    refused = done["outcome"]
    assert refused.result.status == "error" and "was not offered" in refused.result.summary
    assert "no answer within" in refused.result.summary  # PostgreSQL's error, not Redis's
    assert not refused.result.buttons and done["seconds"] < TRANSACTION_WAIT + 2.0
    assert any("not_acted_on" in r.getMessage() for r in caplog.records)


# -- the row a not_acted_on names --------------------------------------------------------------------------------------

def test_a_confirm_whose_lost_commit_failed_after_all_is_not_named_as_another_row(own_state_db, make_runtime,
                                                                                  redis_client):
    """The confirm row's COMMIT outlives the bound, then fails (rolled back): its id is free again, and the next row
    takes it. The not_acted_on entry must not name, as the confirm that was not acted on, a row that is not it."""
    pg, path = own_state_db
    runtime = make_runtime(path)
    preview = runtime.engine.handle("test bump --by 2", Actor(ALICE), OPS)
    slow_commit(pg.url, 12, then_fail=True, action="confirm")

    refused = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)
    assert refused.kind == "unavailable" and executions(redis_client) == 0
    time.sleep(3)  # the deferred trigger fails the COMMIT: the confirm row is rolled back
    assert sql(pg.url, f"SELECT count(*) FROM {TABLE} WHERE action = 'confirm'")[0][0] == 0
    sql(pg.url, f"DROP TRIGGER slow_commit ON {TABLE}")

    done = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)
    assert done.kind == "result" and executions(redis_client) == 1
    entries = runtime.state.action_log.entries()
    assert [e.action for e in entries] == ["request", "not_acted_on", "confirm", "outcome"]
    marker = entries[1].payload
    by_id = {e.id: e for e in entries}
    named = by_id.get(marker.get("row"))
    # Either no row is named, or what it names can be told apart from the confirm it was meant to be.
    assert named is None or named.action == "confirm" or marker.get("row_hash") not in (None, named.hash), \
        f"not_acted_on names row {marker.get('row')}, which is its own {named.action} row, as the confirm"
    assert runtime.state.action_log.verify(full=True).ok


# -- two replicas ----------------------------------------------------------------------------------------------------

def test_two_replicas_confirming_one_pending_action_while_the_log_is_frozen(own_state_db, make_runtime, redis_client):
    pg, path = own_state_db
    one, two = make_runtime(path), make_runtime(path)
    preview = one.engine.handle("test bump --by 2", Actor(ALICE), OPS)
    two.state.action_log.entries()  # the second replica has its connection, as a running one would

    with frozen(pg):
        first, a = _confirm_in_thread(one, preview.pending.id)
        second, b = _confirm_in_thread(two, preview.pending.id)
        first.join(timeout=60)
        second.join(timeout=60)
    kinds = sorted(d["outcome"].kind for d in (a, b))
    print(f"\ntwo replicas, frozen log: {kinds} after {a['seconds']:.2f}s / {b['seconds']:.2f}s")
    assert kinds == ["taken", "unavailable"]
    assert executions(redis_client) == 0

    done = two.engine.confirm(preview.pending.id, Actor(ALICE), OPS)  # the other replica takes the next click
    assert done.kind == "result" and executions(redis_client) == 1
    entries = two.state.action_log.entries()
    assert [e.action for e in entries] == ["request", "not_acted_on", "confirm", "outcome"]
    assert entries[1].payload["pending_id"] == preview.pending.id
    assert one.state.action_log.drain() == 0 and two.state.action_log.kept() == 0
    assert two.state.action_log.verify(full=True).ok


# -- secrets and markup in the error -----------------------------------------------------------------------------

INCIDENTS = """
    incidents:
      severities:
        sev2: {description: "Major functionality degraded", response: 30m}
"""


def test_a_secret_or_markup_in_the_error_is_neither_stored_nor_shown_live(tmp_path, database_url, make_runtime,
                                                                           fake_slack, slack_env, redis_client):
    """PostgreSQL's refusal of the confirm row carries a DSN with its password, a secret the config holds, and Slack
    markup: the not_acted_on entry stores none of the secrets, and the timeline shows the markup as text."""
    from slack_sdk import WebClient

    from tests.conftest import BOT_TOKEN, SIGNING_SECRET

    path = write_config(tmp_path / "app.yaml", database_url, extra=INCIDENTS, api_url=fake_slack.api_url)
    runtime = make_runtime(path, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))
    runtime.engine.handle("incident declare sev2 Exports failing", Actor(ALICE), OPS)
    preview = runtime.engine.handle("test bump --by 3 --incident INC-1", Actor(ALICE), OPS)
    assert preview.kind == "preview", preview.result
    message = f"postgresql://app:hunter2pw@db/app {SIGNING_SECRET} <!here> <@{BOB}> `x`"
    sql(database_url, f"""
        CREATE FUNCTION opsbot.refuse_confirm() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.action = 'confirm' THEN RAISE EXCEPTION '{message}' USING ERRCODE = 'invalid_parameter_value';
            END IF;
            RETURN NEW;
        END $$""")
    sql(database_url, f"CREATE TRIGGER refuse_confirm BEFORE INSERT ON {TABLE} FOR EACH ROW"
                      " EXECUTE FUNCTION opsbot.refuse_confirm()")

    refused = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)
    assert refused.kind == "unavailable" and executions(redis_client) == 0

    marker = [e.payload for e in runtime.state.action_log.entries() if e.action == "not_acted_on"]
    assert len(marker) == 1 and "<!here>" in marker[0]["error"]  # the error is there ...
    stored = str(sql(database_url, f"SELECT payload::text FROM {TABLE}"))
    assert "hunter2pw" not in stored and SIGNING_SECRET not in stored  # ... without the secrets

    shown = runtime.engine.handle("incident timeline --incident INC-1", Actor(ALICE), OPS)
    text = str(shown.result.sections[0].text)
    line = next(ln for ln in text.splitlines() if "not run" in ln)
    assert "&lt;!here&gt;" in line and "<!here>" not in line and f"<@{BOB}>" not in line
    assert "hunter2pw" not in line and SIGNING_SECRET not in line
