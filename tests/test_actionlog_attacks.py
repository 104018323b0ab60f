"""Attacks on the action log's own design: keys, Redis, hostile payloads, the spool, many writers at once."""

from __future__ import annotations

import os

import json
import subprocess
import sys
from pathlib import Path

import psycopg

from bot.store.chain import v1_hash
from tests.conftest import write_config
from tests.support.actionlog import APPENDER, TABLE, filled, sql


def runtime_with_secret(tmp_path, database_url, make_runtime, secret):
    """A runtime whose action log is signed with ``secret`` (none when empty), taken from the environment."""
    variable = f"TEST_LOG_SECRET_{abs(hash(secret))}"
    os.environ[variable] = secret
    path = write_config(tmp_path / f"app-{len(secret)}-{abs(hash(secret))}.yaml", database_url)
    path.write_text(path.read_text().replace("${TEST_OPSBOT_LOG_SECRET:-}", f"${{{variable}:-}}"))
    return make_runtime(path)


def test_a_new_secret_reads_as_another_key_not_tampering_and_the_next_append_re_anchors(
        runtime, tmp_path, database_url, make_runtime, caplog):
    filled(runtime, 5)
    assert runtime.state.action_log.verify().level == "ok"
    rotated = runtime_with_secret(tmp_path, database_url, make_runtime, "a-new-release-secret-987654")

    report = rotated.state.action_log.verify()

    assert report.ok and report.level == "warn" and not report.anchored
    assert [f.kind for f in report.findings if f.level == "fail"] == []
    assert "signed with another key (state.log_secret changed?)" in " ".join(f.detail for f in report.findings)
    filled(rotated, 1)
    assert "action log reanchored under the current state.log_secret at row 5" in caplog.text
    after = rotated.state.action_log.verify(full=True)
    assert after.level == "ok" and after.anchored and after.segments == 1 and after.rows == 6


def test_without_a_secret_the_chain_is_still_checked_but_the_head_is_not_anchored(tmp_path, database_url, make_runtime,
                                                                                   redis_client):
    bare = runtime_with_secret(tmp_path, database_url, make_runtime, "")
    filled(bare, 4)
    report = bare.state.action_log.verify()
    assert report.ok and report.level == "warn" and not report.anchored
    assert "state.log_secret is not set" in report.findings[0].detail
    sql(database_url, f"DELETE FROM {TABLE} WHERE id = 4")  # a naive truncation is still caught (head, Redis copy)
    assert ("truncated", 4) in [(f.kind, f.row) for f in bare.state.action_log.verify().findings]

    signed = runtime_with_secret(tmp_path, database_url, make_runtime, "set-at-last-secret-1234567")
    filled(signed, 1)  # the first append with a key anchors the log as it stands: the break found stays on record
    assert signed.state.action_log.verify(full=True).anchored


def test_redis_flushed_is_not_tampering(runtime, redis_client):
    log = filled(runtime, 3)
    assert log.verify().level == "ok"
    redis_client.flushdb()

    report = log.verify()

    assert report.level == "ok" and "no copy in Redis" in " ".join(f.detail for f in report.findings)
    filled(runtime, 2)
    assert log.verify(full=True).level == "ok" and log.verify().segments == 1


def test_an_existing_log_is_adopted_by_the_migration_and_signed_by_the_first_append(database_url, make_runtime):
    import bot.store.schema as schema

    runtime = make_runtime(migrate=False)
    with psycopg.connect(database_url, autocommit=True) as conn:  # a log written before 006
        with conn.transaction():
            conn.execute("CREATE SCHEMA opsbot")
            conn.execute("SET LOCAL search_path TO opsbot")
            conn.execute((Path(schema.__file__).parent / "migrations" / "001_action_log.sql").read_text())
        prev = None
        for n in range(1, 4):
            digest = v1_hash(prev, str(n), "T1", "2026-01-31T09:15:02.123Z", "U1", "request", '{"n": 1}')
            conn.execute(f"INSERT INTO {TABLE} VALUES (%s, 'T1', '2026-01-31T09:15:02.123Z', 'U1', 'request',"
                         """ '{"n": 1}', %s, %s)""", (n, prev, digest))
            prev = digest
    runtime.state.migrate()
    assert runtime.state.action_log.verify(save=False).ok

    entry = runtime.state.action_log.append("request", actor="U1", payload={"n": 4})

    assert entry.id == 4 and entry.prev_hash == prev  # the old chain goes on: nothing was broken
    report = runtime.state.action_log.verify(full=True)
    assert report.level == "ok" and report.anchored and report.rows == 4 and report.segments == 1


def test_hostile_payloads_are_stored_so_that_they_verify(runtime):
    log = runtime.state.action_log
    deep: list = ["x"]
    for _ in range(5000):
        deep = [deep]
    nul = log.append("denied", actor="U\x00X", tenant="T\x00",
                     payload={"text": "dlq status\x00; DROP", "k\x00": [1.5, float("nan")], "bad": "\udcff",
                              "deep": deep})
    huge = log.append("outcome", actor="U1", payload={"summary": "x" * 3_000_000, "n": 10**5000})

    assert nul.payload["text"] == "dlq status\u2400; DROP" and nul.payload["k\u2400"] == [1.5, "nan"]
    assert nul.actor == "U\u2400X" and nul.tenant == "T\u2400" and nul.payload["bad"] == "\\udcff"
    assert len(json.dumps(huge.payload)) < 1 << 20 and huge.payload["truncated_from_bytes"] > 3_000_000
    assert log.verify(full=True).level == "ok"


def test_a_kept_entry_that_cannot_be_appended_as_it_is_does_not_block_the_others(runtime, redis_client):
    from datetime import datetime, timezone

    from bot.store.logspool import Kept

    log = runtime.state.action_log
    key = log.spool.key
    at = datetime(2026, 1, 31, 9, 15, tzinfo=timezone.utc)
    raw_nul = Kept("s-nul", "2026-01-31T09:15:00.000Z", "outcome", "U1", "T1", {"text": "a\x00b"}).dumps()
    redis_client.rpush(key, Kept.new("outcome", "U1", "T1", {"n": 1}, at).dumps(), raw_nul,
                       b"\xff\xfe not json", b'{"v": 1}', Kept.new("outcome", "U1", "T1", {"n": 2}, at).dumps())

    entry = log.append("request", actor="U1", payload={"n": 3})  # kept entries first, then this one

    actions = [(e.action, e.payload.get("n"), e.payload.get("text")) for e in log.entries()]
    assert actions == [("outcome", 1, None), ("outcome", None, "a\u2400b"), ("spool_unreadable", None, None),
                       ("spool_unreadable", None, None), ("outcome", 2, None), ("request", 3, None)]
    assert entry.id == 6 and redis_client.llen(key) == 0
    assert log.entries()[0].payload["occurred_at"] == "2026-01-31T09:15:00.000Z"
    assert log.verify(full=True).level == "ok"




def test_concurrent_appends_from_several_processes_keep_one_chain(runtime, config_path):
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(config_path), f"U{p}", "40"],
                              cwd=Path(__file__).parent.parent) for p in range(4)]
    assert [proc.wait(timeout=120) for proc in procs] == [0, 0, 0, 0]

    report = runtime.state.action_log.verify(full=True)
    assert report.level == "ok" and report.rows == 160 and report.segments == 1
    by_actor = {}
    for entry in runtime.state.action_log.entries(limit=1000):
        by_actor.setdefault(entry.actor, []).append(entry.payload["n"])
    assert all(numbers == list(range(40)) for numbers in by_actor.values()) and len(by_actor) == 4


def test_verifying_while_others_append_never_raises_a_false_alarm(runtime, make_runtime):
    import threading

    other = make_runtime()
    done = threading.Event()

    def append(log, who):
        for n in range(150):
            log.append_or_keep("request", actor=who, payload={"n": n})
        done.set()

    writers = [threading.Thread(target=append, args=(r.state.action_log, f"U{i}"))
               for i, r in enumerate((runtime, other))]
    for writer in writers:
        writer.start()
    reports = []
    while not done.is_set() or any(w.is_alive() for w in writers):
        reports.append(runtime.state.action_log.verify(full=len(reports) % 3 == 0, quick=len(reports) % 3 == 1))
    for writer in writers:
        writer.join()

    alarms = [f for r in reports for f in r.findings if f.level != "info" and f.kind != "never_verified"]
    assert len(reports) > 3 and alarms == []  # the copy in Redis is read before the snapshot: never ahead of it
    final = other.state.action_log.verify(full=True)
    assert final.level == "ok" and final.rows == 300 and final.segments == 1


def test_an_entry_too_big_for_an_index_fails_alone_and_once_kept_never_blocks_the_log(runtime):
    """A payload's ``pending_id`` of kilobytes of random text is a row too big for the pending-id index
    (PostgreSQL's ProgramLimitExceeded, an OperationalError). It was taken for PostgreSQL being down, and,
    kept in Redis, it failed every later drain, and so every later append: no Confirm could be recorded."""
    import secrets

    import pytest

    from bot.store.actionlog import ActionLogUnavailable

    log = runtime.state.action_log
    with pytest.raises(ActionLogUnavailable, match="refused the entry"):
        log.append("expired", actor="U1", payload={"pending_id": secrets.token_hex(3000)})
    assert log.append("confirm", actor="U1", payload={"n": 1}).id == 1  # no back-off: PostgreSQL is fine

    assert log.append_or_keep("expired", actor="U1", payload={"pending_id": secrets.token_hex(3000)}) is None
    assert log.kept() == 1
    confirm = log.append("confirm", actor="U1", payload={"n": 2})  # the kept entry first, set aside as unreadable
    assert log.kept() == 0
    actions = [(e.action, e.payload.get("n")) for e in log.entries()]
    assert actions == [("confirm", 1), ("spool_unreadable", None), ("confirm", 2)] and confirm.id == 3
    assert "expired" in log.entries()[1].payload["entry"]  # its bytes, as kept
    assert log.verify(full=True).ok
