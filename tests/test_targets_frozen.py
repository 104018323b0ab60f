"""A production database that freezes in the middle of a command (every process stopped: a paused VM, a storage
stall). It answers nothing, and nothing times out on its side, so the command would wait for ever and the
on-call engineer would see nothing. The bot cuts a connection whose query has had no answer at all for the
statement timeout plus SILENCE_GRACE, and says so; a slow answer, a statement the server cancels itself and a
command busy with what it already got are never cut. The test's own cluster is frozen, by PID.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from bot.config.settings import load_settings
from bot.core.invocation import Actor, CommandError, Where
from bot.runtime.targets import SILENCE_GRACE, Targets
from tests.conftest import ALICE, write_config
from tests.support import email as data
from tests.support.actionlog import sql
from tests.support.appenders import until
from tests.support.servers import PostgresCluster, frozen



@pytest.fixture(scope="module")
def cluster():
    with PostgresCluster() as pg:
        yield pg


def config(tmp_path, database_url: str, target_url: str, timeout: str):
    path = write_config(tmp_path / "app.yaml", database_url, extra="email:\n  database: main\n")
    text = path.read_text().replace(f'  main: {{url: "{database_url}"}}',
                                    f'  main: {{url: "{target_url}", statement_timeout: {timeout}}}')
    path.write_text(text)
    return path


def test_a_query_to_a_database_that_froze_is_cut_after_its_silence_and_named(tmp_path, database_url, cluster):
    targets = Targets(load_settings(config(tmp_path, database_url, cluster.url, "1s")))
    started = time.monotonic()
    with pytest.raises(CommandError) as raised:
        with targets.database("main") as conn, frozen(cluster):
            conn.execute("SELECT 1")
    took = time.monotonic() - started
    assert 1 + SILENCE_GRACE - 0.5 < took < 1 + SILENCE_GRACE + 5, took
    assert f"database 'main' at 127.0.0.1:{cluster.port}/postgres stopped answering" in str(raised.value)
    assert "nothing came back for 11s" in str(raised.value)
    with targets.database("main") as conn:  # thawed: the next command gets a new connection, and an answer
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_slow_answers_cancelled_statements_and_a_busy_command_are_never_cut(tmp_path, database_url, cluster):
    targets = Targets(load_settings(config(tmp_path, database_url, cluster.url, "3s")))
    with targets.database("main") as conn:
        assert conn.execute("SELECT pg_sleep(2.5), 1").fetchone()[1] == 1  # slow, within the statement timeout
    with pytest.raises(psycopg.errors.QueryCanceled):  # the server's own timeout: its error is the answer
        with targets.database("main") as conn:
            conn.execute("SELECT pg_sleep(30)")
    with targets.database("main") as conn:  # the command works on what it got, longer than the silence bound
        conn.execute("SELECT 1").fetchone()
        time.sleep(3 + SILENCE_GRACE + 2)
        assert conn.execute("SELECT 2").fetchone() == (2,)


def test_email_triage_on_a_database_that_froze_tells_the_engineer_instead_of_hanging(tmp_path, database_url,
                                                                                       cluster, make_runtime):
    """The freeze comes while triage's query runs (the table made slow to read, so the freeze lands in it)."""
    data.create(cluster.url)
    sql(cluster.url, 'ALTER TABLE "Communication" RENAME TO "Communication_slow"')
    sql(cluster.url, 'CREATE VIEW "Communication" AS SELECT c.* FROM "Communication_slow" c, pg_sleep(1)')
    runtime = make_runtime(config(tmp_path, database_url, cluster.url, "2s"))
    ops = Where("C-ops", channel_name="ops")
    assert runtime.engine.handle("email triage", Actor(ALICE), ops).result.status != "error"
    outcome: dict = {}
    started = time.monotonic()
    thread = threading.Thread(target=lambda: outcome.update(
        result=runtime.engine.handle("email triage", Actor(ALICE), ops).result))
    thread.start()
    until(lambda: sql(cluster.url, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                                   " AND position('pg_sleep' in query) = 0 AND position('Communication' in query) > 0"
                                   " AND pid <> pg_backend_pid()")[0][0] > 0)
    with frozen(cluster):
        thread.join(2 + SILENCE_GRACE + 10)
        took = time.monotonic() - started
    assert not thread.is_alive(), "the command never ended"
    result = outcome["result"]
    assert result.status == "error" and "stopped answering" in result.summary, result.summary
    assert took < 2 + SILENCE_GRACE + 5, took
