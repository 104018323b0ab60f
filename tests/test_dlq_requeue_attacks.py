"""Hostile and faulty cases for ``dlq requeue`` on the redis-list backend: the sampled preview, Confirm's
re-validation without reading entries, held entries kept newest-first and merged back (MERGE), the Lua
--type pre-check and the fast path of the Lua time reader, each against what Python says."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import redis

from bot.core.invocation import Actor, CommandError
from commands.dlq import lua
from commands.dlq.backend import SAMPLE_ENTRIES, spread
from commands.dlq.entries import DeadEntry, Filters, parse_time
from commands.dlq.redis_list import RedisListQueue
from commands.dlq.settings import find_queue
from tests.conftest import ALICE
from tests.support.dlq import dead_letter, everything, kill, oldest_first, two_queues_runtime
from tests.test_dlq import OPS, run

server_only = pytest.mark.parametrize("dlq_layout", ["server"], indirect=True)


q = pytest.fixture(name="q")(lambda dlq_layout: dlq_layout)  # the queue's Redis and names (server layout here)


@pytest.fixture
def two_queues(tmp_path, database_url, make_runtime, fake_slack, q):  # noqa: F811 (the fixture above)
    return two_queues_runtime(tmp_path, database_url, make_runtime, fake_slack, q)


def _queue(runtime, q) -> RedisListQueue:
    return RedisListQueue(find_queue(runtime.settings, "jobs"), q.client)


def _rewrite_pending(q, pending_id: str, change) -> None:
    """As if the pending plan had been written by the previous version of opsbot."""
    key = f"opsbot:pending:{pending_id}"
    body = json.loads(q.client.get(key))
    change(body["plan"])
    q.client.set(key, json.dumps(body), keepttl=True)


def _legacy(plan: dict) -> None:
    for name in ("dead", "oldest", "growth_bound", "sampled"):
        plan.pop(name, None)


# -- replan: plans of the previous version, emptied and replaced lists ------------------------------

@server_only
def test_a_filtered_pending_plan_of_the_previous_version_confirms_after_the_queue_emptied(two_queues, q):
    kill(q.client, [dead_letter(i) for i in range(30)], q.dead)
    preview = run(two_queues, "dlq requeue --type send_email")
    _rewrite_pending(q, preview.pending.id, _legacy)
    q.client.delete(q.dead)  # trimmed or requeued elsewhere meanwhile

    outcome = two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    assert outcome.result.status != "error", outcome.result.summary
    assert "Nothing to requeue" in outcome.result.summary and q.client.llen(q.ready) == 0


@server_only
def test_a_filtered_pending_plan_of_the_previous_version_is_scanned_again(two_queues, q):
    kill(q.client, [dead_letter(i) for i in range(30)], q.dead)
    preview = run(two_queues, "dlq requeue --type send_email")
    _rewrite_pending(q, preview.pending.id, _legacy)
    kill(q.client, [dead_letter(100 + i, type_="send_email") for i in range(5)], q.dead)  # +50%

    outcome = two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    assert outcome.kind == "refused" and outcome.result.data["plan"]["matching"] == 15


@server_only
def test_an_unfiltered_pending_plan_of_the_previous_version_confirms_on_the_length(two_queues, q):
    entries = [dead_letter(i) for i in range(30)]
    kill(q.client, entries, q.dead)
    preview = run(two_queues, "dlq requeue")
    _rewrite_pending(q, preview.pending.id, _legacy)
    kill(q.client, [dead_letter(100)], q.dead)

    done = two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    assert done.kind == "result" and done.result.data["moved"] == 31 and q.client.llen(q.dead) == 0


@server_only
def test_an_unfiltered_confirm_after_the_queue_emptied_and_refilled_moves_what_is_there(two_queues, q):
    kill(q.client, [dead_letter(i) for i in range(30)], q.dead)
    preview = run(two_queues, "dlq requeue")
    q.client.delete(q.dead)
    kill(q.client, [b"late"], q.dead)  # emptied, then one arrival: 1 <= 30, confirmed on the length

    done = two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    assert done.kind == "result" and done.result.data["moved"] == 1
    assert q.client.lrange(q.ready, 0, -1) == [b"late"]


@server_only
def test_the_oldest_entry_duplicated_over_a_replaced_list_moves_no_more_than_counted(two_queues, q):
    entries = [dead_letter(i) for i in range(30)]  # 10 send_email, the oldest is one of them
    kill(q.client, entries, q.dead)
    preview = run(two_queues, "dlq requeue --type send_email")
    # Everything but the oldest replaced by as many entries of the type: same oldest bytes, same length.
    q.client.ltrim(q.dead, -1, -1)
    others = [dead_letter(500 + i, type_="send_email") for i in range(29)]
    kill(q.client, others, q.dead)

    done = two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    assert done.kind == "result" and done.result.data["moved"] == 10  # the count caps the move
    assert Counter(q.client.lrange(q.ready, 0, -1) + q.client.lrange(q.dead, 0, -1)) == \
        Counter([entries[0]] + others)


@server_only
@pytest.mark.parametrize("oldest", [b"\x00\xff\xfe binary \x80", b"x" * 3_000_000, b""])
def test_an_opaque_or_huge_oldest_entry_marks_the_plan_and_confirms(two_queues, q, oldest):
    kill(q.client, [oldest] + [dead_letter(i) for i in range(30)], q.dead)
    preview = run(two_queues, "dlq requeue --type send_email")
    assert len(preview.result.data["plan"]["oldest"]) == 16
    kill(q.client, [dead_letter(100, type_="send_email")], q.dead)  # within 10%: no scan

    done = two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    assert done.kind == "result" and done.result.data["moved"] == 11
    assert oldest_first(q.client, q.dead)[0] == oldest


# -- the sample: spread() and RedisListQueue.sample ----------------------------------------------------

@pytest.mark.parametrize("total", [0, 1, 2, 999, 1000, 1001, 1009, 10_009, 1_000_003])
def test_spread_reads_at_most_the_sample_without_overlap_from_oldest_to_newest(total):
    runs = spread(total)
    positions = [offset + i for offset, count in runs for i in range(count)]
    assert len(positions) == len(set(positions)) == min(total, SAMPLE_ENTRIES)
    assert all(0 <= p < total for p in positions)
    if total:
        assert positions[0] == 0 and max(positions) == total - 1
        assert positions == sorted(positions)


@server_only
@pytest.mark.parametrize("total", [0, 1, 999, 1000, 1001, 10_009])
def test_the_sample_counts_every_entry_and_groups_the_spread(two_queues, q, total):
    entries = [dead_letter(i) for i in range(total)]
    kill(q.client, entries, q.dead)
    queue = _queue(two_queues, q)

    summary = queue.sample(3)

    read = min(total, SAMPLE_ENTRIES)
    assert (summary.total, summary.matched, summary.scanned, summary.sampled) == (total, total, read, total > read)
    expected = Counter()
    for offset, count in spread(total):
        expected.update(DeadEntry.parse(e).type for e in entries[offset:offset + count])
    assert summary.types == expected
    assert summary.opaque == 0 and len(summary.samples) == min(3, total)


# -- MERGE: held entries back in order whatever happens between its calls ------------------------------

def _interrupted_filtered_task(runtime, q, entries, batches: int = 2) -> RedisListQueue:
    """A --type send_email task stopped after ``batches`` batches (of 7), held entries set aside."""
    queue = _queue(runtime, q)
    task = queue.start_requeue(Filters(type="send_email"), limit=None, rate=None, matching=0, requested_by="U")
    calls = iter(range(batches + 1))
    report = queue.run_requeue(task.id, owner="t", batch=7, should_stop=lambda: next(calls) >= batches)
    assert report.outcome == "interrupted" and q.client.llen(queue.held_key(task.id)) > 0
    return queue


@server_only
@pytest.mark.parametrize("chunk", [1, 2, 5, 100])
def test_merge_killed_between_calls_with_arrivals_keeps_every_entry_once_in_order(two_queues, q, chunk):
    entries = [dead_letter(i) for i in range(60)]
    kill(q.client, entries, q.dead)
    queue = _interrupted_filtered_task(two_queues, q, entries)
    task = queue.task()
    keys = [queue.held_key(task.id), q.dead]
    arrivals, calls = [], 0
    while queue._merge(keys=keys, args=[chunk]):  # one MERGE call at a time, a "kill" after each
        calls += 1
        arrival = dead_letter(1000 + calls)
        arrivals.append(arrival)
        kill(q.client, [arrival], q.dead)
        if calls % 3 == 0:  # another process (a cancel, a resumed driver) merges too
            queue._merge(keys=keys, args=[chunk + 1])
    queue._finish(task.id)  # what a resumed run does: nothing left to merge

    ready = list(reversed(q.client.lrange(q.ready, 0, -1)))
    assert ready == [e for e in entries if b'"send_email"' in e][:len(ready)]
    assert oldest_first(q.client, q.dead) == [e for e in entries if e not in set(ready)] + arrivals
    assert q.held_keys() == [] and queue.task().status == "done"


@server_only
def test_a_cancel_of_an_interrupted_task_puts_everything_back_in_order(two_queues, q):
    entries = [dead_letter(i) for i in range(60)]
    kill(q.client, entries, q.dead)
    queue = _interrupted_filtered_task(two_queues, q, entries, batches=3)
    kill(q.client, [b"arrived"], q.dead)

    task = queue.cancel()

    ready = set(q.client.lrange(q.ready, 0, -1))
    assert task.status == "cancelled" and len(ready) == task.moved
    assert oldest_first(q.client, q.dead) == [e for e in entries if e not in ready] + [b"arrived"]
    assert q.held_keys() == []


@server_only
@pytest.mark.parametrize("kind", ["string", "hash"])
def test_merge_into_a_dead_key_of_the_wrong_type_fails_and_loses_nothing(two_queues, q, kind):
    entries = [dead_letter(i) for i in range(40)]
    kill(q.client, entries, q.dead)
    queue = _interrupted_filtered_task(two_queues, q, entries, batches=1)
    task = queue.task()
    before = everything(q.client, q.ready, q.dead)
    q.client.rename(q.dead, "jobs:dead:aside")
    if kind == "string":
        q.client.set(q.dead, "oops")
    else:
        q.client.hset(q.dead, "a", "b")

    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        queue._finish(task.id)

    assert q.client.type(q.dead).decode() == kind
    assert everything(q.client, q.ready, "jobs:dead:aside") == before
    assert queue.task().status == "running"


@server_only
def test_a_task_of_the_previous_version_still_restores_held_entries_in_order(two_queues, q):
    entries = [dead_letter(i) for i in range(60)]
    kill(q.client, entries, q.dead)
    queue = _queue(two_queues, q)
    task = queue.start_requeue(Filters(type="send_email"), limit=None, rate=None, matching=0, requested_by="U")
    q.client.hdel(q.task, "held_order")  # as an earlier version recorded it: held entries oldest at the left
    calls = iter(range(10))
    queue.run_requeue(task.id, owner="t", batch=7, should_stop=lambda: next(calls) >= 2)
    held = q.client.lrange(queue.held_key(task.id), 0, -1)
    assert held == [e for e in entries[:14] if b'"send_email"' not in e]  # RPUSHed: oldest at the left
    kill(q.client, [b"arrived"], q.dead)

    report = queue.run_requeue(task.id, owner="t", batch=7)

    emails = [e for e in entries if b'"send_email"' in e]
    assert report.outcome == "done" and list(reversed(q.client.lrange(q.ready, 0, -1))) == emails
    assert oldest_first(q.client, q.dead) == [e for e in entries if e not in set(emails)] + [b"arrived"]


@server_only
def test_a_second_driver_is_refused_the_lease_while_the_first_merges(two_queues, q):
    entries = [dead_letter(i) for i in range(60)]
    kill(q.client, entries, q.dead)
    queue = _interrupted_filtered_task(two_queues, q, entries)
    token = queue.lease.take("requeue", queue.task().id, owner="first", ttl=30)
    try:
        from commands.dlq.lease import LeaseBusy

        with pytest.raises(LeaseBusy):
            queue.run_requeue(queue.task().id, owner="second", batch=7)
        assert queue.cancel().status == "cancelling"  # the holder puts things back, not the cancel
    finally:
        queue.lease.release(token)
    assert queue.task().status == "cancelling"
    report = queue.run_requeue(queue.task().id, owner="first", batch=7)
    ready = set(q.client.lrange(q.ready, 0, -1))
    assert report.outcome == "cancelled" and oldest_first(q.client, q.dead) == [e for e in entries if e not in ready]


# -- the Lua --type pre-check and time reader against Python ------------------------------------------

TYPES = ['a"b', "a/b", "a\\b", "é", "日本", "", "5", "type", "send_email", 'x"', "\u2028", "a\tb", "\U0001F600"]


def _encodings(index: int, value) -> list[bytes]:
    doc = {"id": f"j{index}", "type": value, "error": "e", "failedAt": "2026-01-31T09:15:02Z"}
    plain = json.dumps(doc)
    return [plain.encode(), json.dumps(doc, ensure_ascii=False).encode(),
            plain.replace("/", "\\/").encode(), json.dumps(doc, separators=(",", ":")).encode()]


@server_only
def test_the_type_filter_in_lua_agrees_with_python_on_hostile_types(two_queues, q):
    entries = []
    for index, value in enumerate(TYPES + [5, 5.0, None, True, ["a"], {"a": 1}]):
        entries += _encodings(index, value)
    entries += [b'{"type":"a\\"b"}', b'{"type":"\\u0061\\u0022b"}', b'{"t":"\\"a\\"b\\""}', b'"a\\"b"',
                b'{"type":"5","type":"6"}', b'{"type": "\\u00e9"}', b'\xff{"type":"\xc3\xa9"}']
    kill(q.client, entries, q.dead)
    queue = _queue(two_queues, q)

    for value in TYPES:
        if value == "":
            continue  # --type "" is no filter at all (Filters.empty)
        filters = Filters(type=value)
        python = sum(1 for _ in queue.entries(filters))
        assert queue.scan(filters).matched == python, repr(value)


TIMES = ["2026-01-31T09:15:02.5Z", "2026-01-31 09:15:02Z", "2026-01-31T09:15:02.Z", "2026-01-31T09:15:02.123+00:00",
         "2026-01-31T09:15:02", "2026-01-31T09:15:02.000001Z", "2026-01-31T09:15:02.5", "2026-01-31T09:15:02+0530",
         "2026-01-31T09:15:02-05:00", "2026-01-31T09:15:60Z", "2026-01-31T24:00:00Z", "2026-02-30T09:15:02Z",
         "2016-12-31T23:59:60.999Z", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.9999999999Z", "2026-01-31T09:15:02z",
         "2026-01-31T09:15:02.5ZZ", "2026-01-31T09:15:02Z ", " 2026-01-31T09:15:02Z", "2026-01-31T09:15:02.-5Z",
         "2026-01-31T09:15:02.5+01", "2026-01-31T09:15:02+01:00Z", "2026-1-31T09:15:02Z", "", "Z",
         "2026-01-31T09:15:02." + "9" * 44 + "Z", "2026-01-31T09:15:02." + "9" * 46 + "Z"]


@server_only
@pytest.mark.parametrize("value", TIMES)
def test_the_lua_time_reader_agrees_with_python(q, value):
    script = q.client.register_script(lua._MATCH + r"""
local t = to_epoch(ARGV[1])
if not t then return false end
return string.format('%.6f', t)
""")
    lua_value = script(keys=[], args=[value])
    python = parse_time(value)
    if python is None:
        assert lua_value is None
    else:
        assert lua_value is not None and float(lua_value) == pytest.approx(python, abs=1e-5)


# -- a trim beside an interrupted requeue ---------------------------------------------------------------

@server_only
def test_a_trim_waits_for_an_interrupted_requeue_whose_held_entries_are_older(two_queues, q):
    entries = [dead_letter(i) for i in range(60)]
    kill(q.client, entries, q.dead)
    queue = _interrupted_filtered_task(two_queues, q, entries, batches=3)

    refused = run(two_queues, "dlq trim --keep 5")
    with pytest.raises(CommandError, match="interrupted requeue"):  # under the lease too (a replica's confirm)
        queue.run_trim(keep=5, archive=lambda task, first, batch: None)

    assert refused.kind == "result" and "interrupted requeue" in refused.result.summary
    assert queue.cancel().status == "cancelled"
    ready = set(q.client.lrange(q.ready, 0, -1))
    assert oldest_first(q.client, q.dead) == [e for e in entries if e not in ready]
    trimmed = run(two_queues, "dlq trim --keep 5")
    assert trimmed.kind == "preview"
    two_queues.engine.confirm(trimmed.pending.id, Actor(ALICE), OPS)
    assert oldest_first(q.client, q.dead) == [e for e in entries if e not in ready][-5:]


@server_only
@pytest.mark.parametrize("text", ["dlq requeue", "dlq requeue --type send_email"])
def test_a_dead_key_of_the_wrong_type_at_confirm_is_refused_clearly(two_queues, q, text):
    kill(q.client, [dead_letter(i) for i in range(30)], q.dead)
    preview = run(two_queues, text)
    q.client.delete(q.dead)
    q.client.set(q.dead, "not a list")

    outcome = two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    assert outcome.result.status == "error" and "is a Redis string, not a list" in outcome.result.summary
    assert "unexpectedly" not in outcome.result.summary


@server_only
def test_an_unfiltered_confirm_of_an_emptied_queue_says_there_is_nothing_to_requeue(two_queues, q):
    kill(q.client, [dead_letter(i) for i in range(30)], q.dead)
    preview = run(two_queues, "dlq requeue")
    q.client.delete(q.dead)

    outcome = two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS)

    assert "Nothing to requeue" in outcome.result.summary and q.client.hgetall(q.task) == {}


@pytest.mark.parametrize("total", [0, 1, 999, 1000, 1001, 10_009])
def test_a_sample_read_through_of_sample_counts_all_and_reads_the_spread(total):
    from commands.dlq.backend import ScanSummary

    entries = [DeadEntry.parse(dead_letter(i)) for i in range(total)]
    asked = []

    def read(offset, count):
        asked.append((offset, count))
        return entries[offset:offset + count]

    summary = ScanSummary.of_sample(total, read, 2)

    assert asked == spread(total)
    assert (summary.matched, summary.scanned, summary.sampled) == (total, min(total, 1000), total > 1000)
    assert sum(summary.types.values()) == summary.scanned


@server_only
def test_two_drivers_started_together_move_every_match_once_in_order(two_queues, q):
    import threading

    from commands.dlq.lease import LeaseBusy

    entries = [dead_letter(i) for i in range(300)] + [b"\x00opaque\xff"]
    kill(q.client, entries, q.dead)
    queue = _queue(two_queues, q)
    task = queue.start_requeue(Filters(type="send_email"), limit=None, rate=None, matching=0, requested_by="U")
    barrier, outcomes = threading.Barrier(2), []

    def drive(name):
        other = _queue(two_queues, q)
        barrier.wait()
        try:
            outcomes.append(other.run_requeue(task.id, owner=name, batch=7).outcome)
        except LeaseBusy:
            outcomes.append("busy")

    threads = [threading.Thread(target=drive, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    while queue.task().unfinished:  # the one refused the lease, if the other had not finished, resumes it
        queue.run_requeue(task.id, owner="c", batch=7)

    emails = [e for e in entries if b'"send_email"' in e]
    assert "done" in outcomes and list(reversed(q.client.lrange(q.ready, 0, -1))) == emails
    assert oldest_first(q.client, q.dead) == [e for e in entries if e not in set(emails)]
    assert everything(q.client, q.ready, q.dead) == Counter(entries) and q.held_keys() == []
