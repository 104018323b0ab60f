"""The bot's action log: hash-chained with the v1 scheme, tamper-evident, safe under concurrent appends."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import psycopg

from bot.chain import field, iso_ms, v1_hash
from bot.schema import migrate


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

    def run():
        with psycopg.connect(database_url, autocommit=True) as conn:
            results.append(migrate(conn, "opsbot_twice"))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    applied = [name for names in results for name in names]
    every = sorted(path.stem for path in (Path(__file__).parent.parent / "bot" / "migrations").glob("*.sql"))
    assert len(every) >= 3 and sorted(applied) == every  # each exactly once, by whichever replica
    with psycopg.connect(database_url, autocommit=True) as conn:
        assert migrate(conn, "opsbot_twice") == []
        conn.execute("DROP SCHEMA opsbot_twice CASCADE")
