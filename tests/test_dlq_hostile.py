"""Hostile dead letters and unreachable queues: every command still answers, nothing is lost."""

from __future__ import annotations

import time

import pytest

from bot.core.invocation import Actor
from commands.dlq.entries import Filters
from commands.dlq.redis_list import RedisListQueue
from tests.conftest import ALICE, write_config
from tests.support.dlq import dead_letter, kill, two_queues_runtime
from tests.test_dlq import OPS, requeue, run
from commands.dlq.settings import find_queue


@pytest.fixture
def two_queues(tmp_path, database_url, make_runtime, fake_slack, redis_client):
    return two_queues_runtime(tmp_path, database_url, make_runtime, fake_slack)


def test_one_unreachable_http_queue_does_not_hide_the_others(tmp_path, database_url, make_runtime, redis_client):
    path = write_config(tmp_path / "app.yaml", database_url)
    path.write_text(path.read_text().replace(
        '  - {name: jobs, redis: main, ready: jobs, dead: "jobs:dead"}\n',
        '  - {name: jobs, redis: main, ready: jobs, dead: "jobs:dead"}\n'
        '  - {name: exports, backend: http, url: "http://127.0.0.1:1", retries: 0, timeout: 1s}\n'))
    runtime = make_runtime(path)
    kill(redis_client, [dead_letter(i) for i in range(4)])

    result = run(runtime, "dlq status").result
    assert result.status == "warn", result.summary
    jobs, exports = result.data["queues"]
    assert jobs["dead"] == 4 and "did not answer" in exports["error"]
    assert result.summary == "4 dead letters in 2 queues; 1 unreachable: exports"
    assert "unreachable: http://127.0.0.1:1" in str(result.sections)

    overview = run(runtime, "status").result
    lines = {line["what"]: line for line in overview.data["lines"]}
    assert lines["dead letters jobs"]["dead"] == 4
    assert lines["queue exports"]["color"] == "red" and "did not answer" in lines["queue exports"]["detail"]


# -- hostile dead letters: never fatal, moved byte for byte -----------------------------------

def _doc(**fields) -> bytes:
    import json

    body = {"id": "h", "type": "send_email", "attempts": 1, "error": "boom", "failedAt": "2020-01-01T00:00:00Z",
            "payload": {}}
    body.update(fields)
    return json.dumps(body).encode()


HOSTILE = [
    b"[" * 10000 + b"]" * 10000,                                          # nested 10,000 deep
    b'{"a":' * 10000 + b"1" + b"}" * 10000,
    b'{"id": "utf", "type": "send_email", "error": "bad \xff\xfe byte", "failedAt": "2020-01-01T00:00:00Z"}',
    b'{"id": "latin", "type": "caf\xe9", "error": "x"}',
    b'{"id": "surrogate", "type": "send_email", "error": "\\ud800 lone"}',
    b"\x00" * 16,
    b'{"id": "nul\x00inside", "type": "send_email", "error": "a\x00b"}',
    b"\xef\xbb\xbf" + _doc(id="bom"),
    b"[1, 2, 3]", b"42", b'"just a string"', b"null", b"true", b"{}", b"", b"   ", b"{",
    _doc(id="big", payload={"blob": "x" * (10 * 2 ** 20)}),                 # 10 MB JSON
    bytes(range(256)) * 40960,                                             # 10 MB binary
    _doc(id=12345), _doc(id=123.0), _doc(id=1.5), _doc(id=1e300), _doc(id={"a": 1}), _doc(id=[1]), _doc(id=True),
    _doc(id=None), _doc(id="nil"),
    _doc(error={"code": 503, "message": "upstream"}), _doc(error=["a", "b"]), _doc(error=42), _doc(error=None),
    _doc(type="a.b%d*[^$"), _doc(type=5), _doc(type={"t": 1}), _doc(type="send\\u005femail"),
    _doc(id="esc", type="send_email").replace(b'"send_email"', b'"send\\u005femail"'),
    # What the quoted pre-check for --type must neither miss nor mistake: quotes and slashes in a type,
    # the type as another field's value, a longer type around it, JSON's optional escapes.
    _doc(type='say "hi"'), _doc(type="a/b"), _doc(type="a/b").replace(b"a/b", b"a\\/b"), _doc(type="send_emails"),
    _doc(type="x", error="send_email"), _doc(type="x", payload={"type": "send_email"}),
    b'{"type":"send_email","id":"tight"}',
    _doc(failedAt="2026-01-31"), _doc(failedAt="20260131T091502Z"), _doc(failedAt="yesterday"), _doc(failedAt=""),
    _doc(failedAt="2026-13-45T99:99:99Z"), _doc(failedAt="9999-12-31T23:59:59-14:00"),
    _doc(failedAt="0001-01-01T00:00:00+14:00"), _doc(failedAt="2026-01-31T09:15:02.123456789Z"),
    _doc(failedAt=-1), _doc(failedAt=1e20), _doc(failedAt=10 ** 30), _doc(failedAt=True), _doc(failedAt=[1]),
    _doc(failedAt={"s": 1}), _doc(failedAt="x" * 100000),
    _doc(failedAt=1).replace(b'"failedAt": 1', b'"failedAt": NaN'),
    _doc(failedAt=1).replace(b'"failedAt": 1', b'"failedAt": Infinity'),
    _doc(failedAt=1).replace(b'"failedAt": 1', b'"failedAt": 1e400'),
    _doc(failedAt=1).replace(b'"failedAt": 1', b'"failedAt": -1e400'),
    _doc(attempts="many"), _doc(attempts=10 ** 40), _doc(payload="\x1b[31mred\x1b[0m"),
]


def test_hostile_dead_letters_never_break_a_command_and_move_byte_for_byte(two_queues, redis_client,
                                                                           database_url):
    from bot.render.blocks import to_message
    from bot.render.text import to_text
    from bot.core.result import to_json

    normal = [dead_letter(i) for i in range(6)]
    entries = normal[:3] + HOSTILE + normal[3:]
    kill(redis_client, entries)
    commands = ["dlq status", "dlq status jobs", "status", "dlq peek", "dlq peek --limit 100", "dlq peek --type send_email",
                "dlq peek --error boom", "dlq peek --error %", "dlq peek --error .", "dlq peek --error *",
                'dlq peek --type "a.b%d*[^$"', "dlq peek --type .", "dlq peek --type %", "dlq peek --id 12345",
                "dlq peek --id nil", "dlq peek --older-than 1h", "dlq peek --id job-1", "dlq requeue --id job-1",
                "dlq requeue --type send_email", "dlq requeue --error upstream", "dlq trim", "dlq requeue"]
    for text in commands:
        outcome = run(two_queues, text)
        result = outcome.result
        assert result.status != "error" and "unexpectedly" not in result.summary, (text, result.summary)
        to_text(result).encode(), to_json(result).encode(), to_message(result)  # every rendering survives
        if outcome.kind == "preview":
            two_queues.engine.cancel(outcome.pending.id, Actor(ALICE), OPS)
    peek = run(two_queues, "dlq peek --limit 100").result
    assert peek.data["dead"] == len(entries)
    shown = {e.get("id"): e for e in peek.data["entries"] if not e.get("opaque")}
    assert shown["utf"]["partial"] is True and "bad" in shown["utf"]["error"]
    assert sum(1 for e in peek.data["entries"] if e.get("opaque")) == peek.data["opaque"]
    assert run(two_queues, "dlq peek --id 12345").result.data["matching"] == 1
    assert run(two_queues, "dlq peek --id 123").result.data["matching"] == 1      # 123.0 is the integer 123
    assert run(two_queues, "dlq peek --id nil").result.data["matching"] == 1      # only the string "nil"
    assert run(two_queues, 'dlq peek --type "a.b%d*[^$"').result.data["matching"] == 1
    # Redis (Lua) and Python read every entry the same way: the same filter selects the same entries.
    from commands.dlq.entries import DeadEntry

    now = time.time()
    for filters in (Filters(type="send_email"), Filters(error="boom"), Filters(error="%"), Filters(error="UPSTREAM"),
                    Filters(ids=("12345", "123", "nil", "1.5", "True")), Filters(type="a.b%d*[^$"),
                    Filters(older_than=3600.0), Filters(type="send_email", error="b", older_than=60.0),
                    Filters(type='say "hi"'), Filters(type="a/b"), Filters(type="x"), Filters(type="send_emails")):
        expected = sum(1 for e in entries if filters.matches(DeadEntry.parse(e), now))
        queue = RedisListQueue(find_queue(two_queues.settings, "jobs"), redis_client)
        assert queue.scan(filters, samples=0, now=now).matched == expected, filters

    done = requeue(two_queues, "dlq requeue").result
    assert done.status == "ok" and done.data["moved"] == len(entries)
    assert list(reversed(redis_client.lrange("jobs", 0, -1))) == entries     # every byte, in order


@pytest.mark.parametrize("poison", [HOSTILE[0], HOSTILE[1], HOSTILE[2]], ids=["list-10000-deep", "object-10000-deep",
                                                                            "error-not-utf8"])
def test_one_poisoned_oldest_dead_letter_blocks_nothing(two_queues, redis_client, poison):
    entries = [poison] + [dead_letter(i) for i in range(4)]    # the poisoned one is the oldest
    kill(redis_client, entries)
    for text in ("dlq status", "status", "dlq peek", "dlq trim", "dlq requeue --id utf", "dlq requeue --id job-2"):
        outcome = run(two_queues, text)
        assert outcome.result.status != "error" and "unexpectedly" not in outcome.result.summary, (text, outcome)
        if outcome.kind == "preview":
            two_queues.engine.cancel(outcome.pending.id, Actor(ALICE), OPS)
    assert run(two_queues, "dlq status jobs").result.data["queues"][0]["dead"] == 5
    done = requeue(two_queues, "dlq requeue").result
    assert done.status == "ok" and list(reversed(redis_client.lrange("jobs", 0, -1))) == entries
