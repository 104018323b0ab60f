"""The bot's action log: hash-chained with the v1 scheme, tamper-evident, safe under concurrent appends."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import psycopg

from bot.store.chain import field, iso_ms, v1_hash
from bot.store.schema import migrate
from tests.conftest import write_config
from tests.support.actionlog import HERE, ME, TABLE, filled, kinds, log_verify, rehash, sql
from commands import GROUPS


def test_v1_field_encoding_matches_the_spec():
    assert field(None) == b"-1:"
    assert field("é") == "2:é".encode()
    from datetime import datetime, timezone

    assert iso_ms(datetime(2026, 1, 31, 9, 15, 2, 123456, tzinfo=timezone.utc)) == "2026-01-31T09:15:02.123Z"
    expected = hashlib.sha256(b"-1:" b"1:1" b"2:t1" b"24:2026-01-31T09:15:02.123Z" b"1:a" b"1:b" b"2:{}").hexdigest()
    assert v1_hash(None, "1", "t1", "2026-01-31T09:15:02.123Z", "a", "b", "{}") == expected


def test_entries_chain_and_verify(runtime):
    log = runtime.state.action_log
    first = log.append("request", actor="U1", payload={"command": "help", "n": 1.5, "x": [1, {"b": 2, "a": 1}]})
    second = log.append("outcome", actor="U1", payload={"status": "ok"}, tenant="T1")

    assert first.prev_hash is None and second.prev_hash == first.hash
    assert log.verify().ok and log.verify().rows == 2


def test_hash_is_computed_over_postgres_own_jsonb_text(runtime, database_url):
    entry = runtime.state.action_log.append("request", actor="U1", payload={"b": 1, "a": "x"})
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT id, tenant, created_at, actor, action, payload::text FROM opsbot.action_log WHERE id = %s",
            (entry.id,),
        ).fetchone()
    assert row[5] == '{"a": "x", "b": 1}'
    assert v1_hash(None, str(row[0]), row[1], row[2], row[3], row[4], row[5]) == entry.hash


def test_a_manual_edit_is_detected_at_that_row(runtime, database_url):
    log = runtime.state.action_log
    for n in range(5):
        log.append("request", actor="U1", payload={"n": n})
    with psycopg.connect(database_url) as conn:
        conn.execute("""UPDATE opsbot.action_log SET payload = '{"n": 99}' WHERE id = 3""")

    report = log.verify()
    assert not report.ok and report.first_bad == 3


def test_concurrent_appends_from_many_threads_keep_one_chain(runtime, make_runtime):
    replicas = [runtime, make_runtime()]
    barrier = threading.Barrier(10)

    def append(index):
        barrier.wait()
        for n in range(10):
            replicas[index % 2].state.action_log.append("request", actor=f"U{index}", payload={"n": n})

    threads = [threading.Thread(target=append, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    report = runtime.state.action_log.verify()
    assert report.ok and report.rows == 100


def test_migrations_are_idempotent_and_safe_when_replicas_start_together(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS opsbot_twice CASCADE")
    results = []
    folders = [group.migrations for group in GROUPS if group.migrations]

    def run():
        with psycopg.connect(database_url, autocommit=True) as conn:
            results.append(migrate(conn, "opsbot_twice", folders))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    applied = [name for names in results for name in names]
    every = sorted(path.stem for folder in [Path(__file__).parent.parent / "bot" / "store" / "migrations", *folders]
                   for path in folder.glob("*.sql"))
    assert len(every) >= 6 and sorted(applied) == every  # each exactly once, by whichever replica
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert migrate(conn, "opsbot_twice", folders) == []
        conn.execute("DROP SCHEMA opsbot_twice CASCADE")


# -- tampering: each scenario detected and named, through `log verify` ------------------------------------------

def test_an_intact_log_verifies_incrementally_from_a_signed_checkpoint(runtime):
    filled(runtime)
    first = log_verify(runtime)
    assert first.status == "ok", first.summary
    assert first.data["mode"] == "full" and first.data["anchored"] and first.data["first_bad"] is None

    again = log_verify(runtime)  # only what was appended since: the outcome of the first run and this request
    assert again.status == "ok" and again.data["mode"] == "incremental" and again.data["checked"] == 2
    assert again.data["rows"] == 13 and again.data["checkpoint"]["head_id"] == 13

    whole = log_verify(runtime, "--full")
    assert whole.status == "ok" and whole.data["mode"] == "full" and whole.data["checked"] == 15


def test_an_edited_payload_is_named_at_its_row(runtime, database_url):
    filled(runtime)
    sql(database_url, f"""UPDATE {TABLE} SET payload = '{{"n": 99}}' WHERE id = 4""")

    result = log_verify(runtime)

    assert result.status == "fail" and result.data["first_bad"] == 4
    assert ("content_edited", 4) in kinds(result, "fail")
    assert "row 4 (segment 1): content edited" in result.summary


def test_a_deleted_middle_row_is_named_as_missing(runtime, database_url):
    filled(runtime)
    sql(database_url, f"DELETE FROM {TABLE} WHERE id = 5")

    result = log_verify(runtime)

    assert result.status == "fail" and result.data["first_bad"] == 5
    assert kinds(result, "fail")[0] == ("row_missing", 5)


def test_deleting_the_newest_rows_is_caught_by_the_signed_head(runtime, database_url):
    filled(runtime)
    sql(database_url, f"DELETE FROM {TABLE} WHERE id >= 8")

    result = log_verify(runtime)  # its request row found the head ahead of the table: a new segment, then this

    assert result.status == "fail" and result.data["first_bad"] == 8
    assert ("truncated", 8) in kinds(result, "fail")
    assert "rows 8–10 are gone" in result.summary
    assert result.data["segments"] == 2  # the bot did not extend the broken chain


def test_deleting_a_row_and_rehashing_the_rest_consistently_is_caught(runtime, database_url):
    log = filled(runtime)
    sql(database_url, f"DELETE FROM {TABLE} WHERE id = 4")
    for row_id in range(5, 11):  # close the gap, re-hash, and forge a last row so the ids match the head again
        sql(database_url, f"UPDATE {TABLE} SET id = id - 1 WHERE id = %s", (row_id,))
    sql(database_url, f"INSERT INTO {TABLE} SELECT 10, tenant, created_at, actor, action, payload, hash, hash"
                      f" FROM {TABLE} WHERE id = 9")
    rehash(database_url, 4)
    chain = log.verify(save=False)
    assert chain.checked == 10 and [f.kind for f in chain.findings if f.level == "fail"] == ["rewritten"]

    result = log_verify(runtime)

    assert result.status == "fail" and ("rewritten", 10) in kinds(result, "fail")
    assert "re-hashed" in result.summary


def test_a_signed_head_rolled_back_to_an_older_value_is_caught(runtime, database_url, redis_client):
    log = filled(runtime, 5)
    old_head = sql(database_url, "SELECT * FROM opsbot.action_log_head")[0]
    filled(runtime, 5)
    sql(database_url, f"DELETE FROM {TABLE} WHERE id > 5")
    sql(database_url, "DELETE FROM opsbot.action_log_head")
    sql(database_url, "INSERT INTO opsbot.action_log_head VALUES (" + ", ".join(["%s"] * len(old_head)) + ")",
        old_head)
    alone = log.verify(save=False)  # the table and the (genuinely signed) head agree; the copy in Redis does not
    assert [(f.kind, f.level) for f in alone.findings if f.level == "fail"] == [("head_rolled_back", "fail")]

    result = log_verify(runtime)

    assert result.status == "fail" and ("head_rolled_back", 5) in kinds(result, "fail")
    assert "older than its copy in Redis (entry #10" in result.summary


def test_a_replayed_head_is_caught_by_the_checkpoint_when_redis_was_flushed(runtime, database_url, redis_client):
    log = filled(runtime, 5)
    old_head = sql(database_url, "SELECT * FROM opsbot.action_log_head")[0]
    filled(runtime, 5)
    assert log.verify().ok  # checkpoint at entry #10
    sql(database_url, f"DELETE FROM {TABLE} WHERE id > 5")
    sql(database_url, "UPDATE opsbot.action_log_head SET (seq, segment, first_id, head_id, head_hash, row_count,"
                      " key_id, signature) = (%s, %s, %s, %s, %s, %s, %s, %s)", old_head[1:9])
    redis_client.flushdb()

    report = log.verify()

    failed = [f for f in report.findings if f.level == "fail"]
    assert not report.ok and [f.kind for f in failed] == ["head_rolled_back"]
    assert "older than the last verification (entry #10" in failed[0].detail


def test_a_segment_start_forged_without_the_key_is_named(runtime, database_url):
    filled(runtime)
    sql(database_url, f"DELETE FROM {TABLE} WHERE id < 4")
    rehash(database_url, 4)  # row 4 now starts a chain of its own

    result = log_verify(runtime)

    assert result.status == "fail" and result.data["first_bad"] == 4
    assert ("forged_segment", 4) in kinds(result, "fail")


def test_a_forged_segment_record_does_not_verify(runtime, database_url):
    filled(runtime)
    sql(database_url, f"DELETE FROM {TABLE} WHERE id < 4")
    rehash(database_url, 4)
    key_id = sql(database_url, "SELECT key_id FROM opsbot.action_log_segments")[0][0]
    first_hash = sql(database_url, f"SELECT hash FROM {TABLE} WHERE id = 4")[0][0]
    for forged_key in (key_id, "0123456789abcdef"):  # our key's id with a made-up signature, or another key's
        sql(database_url, "DELETE FROM opsbot.action_log_segments WHERE segment = 9")
        sql(database_url, "INSERT INTO opsbot.action_log_segments VALUES (9, 4, %s, now(), 'first', '{}', %s, %s)",
            (first_hash, forged_key, "f" * 64))
        report = runtime.state.action_log.verify(save=False)
        assert ("segment_invalid", 4) in [(f.kind, f.row) for f in report.findings if f.level == "fail"]


def test_a_tampered_checkpoint_is_named_and_everything_is_verified_instead(runtime, database_url):
    filled(runtime)
    assert log_verify(runtime).status == "ok"
    sql(database_url, "UPDATE opsbot.action_log_checkpoint SET head_id = head_id + 50, row_count = row_count + 50")
    sql(database_url, f"""UPDATE {TABLE} SET payload = '{{"n": 7}}' WHERE id = 2""")  # hidden behind it?

    result = log_verify(runtime)

    assert result.status == "fail" and result.data["mode"] == "full"
    assert {k for k, _ in kinds(result, "fail")} == {"checkpoint_invalid", "content_edited"}
    assert result.data["first_bad"] == 2


def test_after_a_break_the_bot_continues_in_a_new_segment_that_verifies(runtime, database_url, caplog):
    filled(runtime)
    sql(database_url, f"""UPDATE {TABLE} SET payload = '{{"n": 99}}' WHERE id = 3""")
    assert log_verify(runtime).status == "fail"  # found: the next entry (this run's outcome) starts segment 2
    assert sql(database_url, f"SELECT prev_hash FROM {TABLE} WHERE id = 12")[0][0] is None
    assert "action log chain broken" in caplog.text and runtime.metrics.action_log_broken.labels(
        kind="content_edited")._value.get() >= 1
    filled(runtime, 3)

    later = log_verify(runtime, "--full")

    assert later.status == "warn" and later.data["segments"] == 2  # reported loudly once, then on record
    assert [(f["kind"], f["row"], f["known"]) for f in later.data["findings"] if f["known"]] == \
        [("content_edited", 3, True)]
    assert "earlier breaks in segment 1" in later.summary
    status = {line["what"]: line for line in runtime.engine.handle("status", ME, HERE).result.data["lines"]}
    assert status["action log"]["color"] == "amber"


def test_cli_log_verify_exits_0_with_a_fail_status(tmp_path, database_url, redis_client, fake_slack):
    from tests.test_cli import opsbot

    config = write_config(tmp_path / "app.yaml", database_url, api_url=fake_slack.api_url)
    sql(database_url, "DROP SCHEMA IF EXISTS opsbot CASCADE")
    assert opsbot("run", "runbook", config=config).returncode == 0  # rows 1 and 2: its request and outcome
    sql(database_url, f"DELETE FROM {TABLE} WHERE id = (SELECT max(id) FROM {TABLE})")

    proc = opsbot("run", "--json", "log", "verify", config=config)

    body = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert body["status"] == "fail" and body["data"]["first_bad"] == 2
    assert body["data"]["findings"][0]["kind"] == "truncated"
    text = opsbot("run", "log", "verify", "--full", config=config)
    assert text.returncode == 0 and text.stdout.startswith("[WARN]") and "truncated" in text.stdout



def test_status_and_check_show_the_action_log_on_one_line(runtime, database_url):
    from bot.runtime.checks import run_checks

    def line():
        lines = runtime.engine.handle("status", ME, HERE).result.data["lines"]
        return next(entry for entry in lines if entry["what"] == "action log")

    filled(runtime, 3)
    assert line()["color"] == "amber" and "never verified" in line()["detail"]  # only the end compared
    check = next(c for c in run_checks(runtime).data["checks"] if c["target"] == "action log")
    assert check["ok"] and check["detail"].startswith("ok, intact:")  # check verifies: a checkpoint now exists
    assert line()["color"] == "green" and line()["detail"].startswith("intact:")
    sql(database_url, f"DELETE FROM {TABLE} WHERE id = (SELECT max(id) FROM {TABLE})")

    broken = line()

    assert broken["color"] == "red" and broken["detail"].startswith("BROKEN: row 11 (segment 1): truncated: row 11"
                                                                    " is gone")
    later = line()  # the bot moved on to a new segment, and a verification has reported the break: on record
    assert later["color"] == "amber" and "earlier breaks in segment 1: truncated" in later["detail"]
    check = next(c for c in run_checks(runtime).data["checks"] if c["target"] == "action log")
    assert check["level"] == "warn" and "earlier breaks in segment 1" in check["detail"]
    sql(database_url, "DELETE FROM opsbot.action_log_head")
    check = next(c for c in run_checks(runtime).data["checks"] if c["target"] == "action log")
    assert not check["ok"] and "head missing" in check["detail"] and "run `opsbot run log verify`" in check["detail"]
