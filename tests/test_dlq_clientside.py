"""A filtered requeue decided in the bot (commands.dlq.clientfilter, listscan, listmove) against the Lua
scripts it stands for: the same previews, the same lists and counters after every batch, hostile entries
included; a producer pushing mid-batch, a kill between WATCH and EXEC or after EXEC lose nothing."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from commands.dlq import listmove, listscan
from commands.dlq.clientfilter import LuaFilter
from commands.dlq.entries import Filters
from commands.dlq.redis_list import RedisListQueue
from commands.dlq.settings import QueueSettings
from tests.support.dlq import dead_letter, kill, oldest_first
from tests.test_dlq_hostile import HOSTILE, _doc

NOW = 1_800_000_000.0

# What the byte rules of the Lua filter decide differently from Python's str rules, and group keys
# that only bytes can say: each must come out of the bot as the Lua scripts give it.
BYTES = [
    _doc(id="upper-e", error="\u00c9CHEC timeout"),                             # string.lower leaves É
    _doc(id="long-time", failedAt="2020-01-01T00:00:00Z" + "\u00e9" * 30),      # <= 64 chars, > 64 bytes
    _doc(id="short-time", failedAt="2020-01-01T00:00:00Z" + "\u00e9" * 20),
    b'{"id": "bad-type", "type": "a\xffb", "error": "x", "failedAt": "2020-01-01T00:00:00Z"}',
    b'{"id": "bad-error", "type": "send_email", "error": "' + "\u00e9".encode() * 59 + b'\xff\xfe tail"}',
    _doc(id="cut", error="\u00e9" * 70),                                        # 120 bytes end inside a character
    _doc(id="ctl", type="t\u0001\u007f", error="tab\there"),
    _doc(id=1.23e2), _doc(id=-0.0), _doc(id="12a"), _doc(id="x\\y"),
    _doc(id="precise", failedAt=1_700_000_000.123456789), _doc(id="ms", failedAt=1_700_000_000_123),
    _doc(id="offset", failedAt="2020-01-01T05:00:00+05:00"), _doc(id="frac", failedAt="2020-01-01T00:00:00.5"),
    _doc(id="dup").replace(b'{"id": "dup"', b'{"type": "render_pdf", "id": "dup"'),   # the last "type" counts
    _doc(id="nested", type="send_email", payload={"type": "render_pdf", "error": "boom"}),
]

FILTERS = [
    Filters(type="send_email"), Filters(type="caf\u00e9"), Filters(type="a\ufffdb"), Filters(type='say "hi"'),
    Filters(type="a/b"), Filters(type="x"), Filters(type="t\u0001\u007f"), Filters(type="render_pdf"),
    Filters(error="boom"), Filters(error="\u00e9chec"), Filters(error="\u00c9CHEC"), Filters(error="%"),
    Filters(error="UPSTREAM"), Filters(error="tab\there"),
    Filters(ids=("h", "nil", "esc", "12a", "x\\y")), Filters(ids=("123", "0", "12345", "nil")),
    Filters(type="send_email", error="b", older_than=60.0), Filters(type="send_email", older_than=10.0 ** 9),
    Filters(error="boom", ids=("h",)),
]


def _entries() -> list[bytes]:
    normal = [dead_letter(i, now=NOW) for i in range(40)]
    return normal[:20] + HOSTILE + BYTES + normal[20:]


def _summary(summary) -> dict:
    return {"total": summary.total, "scanned": summary.scanned, "matched": summary.matched,
            "opaque": summary.opaque, "types": dict(summary.types), "errors": dict(summary.errors),
            "oldest": summary.oldest, "newest": summary.newest, "samples": [s.raw for s in summary.samples]}


def _in_lua(monkeypatch):
    """What follows runs on the Lua scripts alone (the reference)."""
    monkeypatch.setattr(listmove, "reads_fast", lambda: False)


def _here_only(monkeypatch):
    """The split scan counts every chunk here (Redis none)."""
    monkeypatch.setattr(listscan, "LUA_CHUNKS", 0)
    monkeypatch.setattr(listscan, "LUA_MOST", 0)


@pytest.fixture
def queue(redis_client):
    return RedisListQueue(QueueSettings(name="jobs"), redis_client)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_a_filtered_preview_counted_here_is_the_one_the_scan_script_gives(queue, redis_client, monkeypatch, chunk):
    entries = _entries()
    kill(redis_client, entries)
    _here_only(monkeypatch)
    for filters in FILTERS:
        here = _summary(queue.scan(filters, samples=3, now=NOW, chunk=chunk))
        with monkeypatch.context() as patch:
            _in_lua(patch)
            there = _summary(queue.scan(filters, samples=3, now=NOW, chunk=chunk))
        assert here == there, filters
    assert oldest_first(redis_client, "jobs:dead") == entries  # a scan reads, never moves


def test_the_split_scan_gives_the_same_summary_whatever_share_redis_counts(queue, redis_client, monkeypatch):
    entries = [dead_letter(i, now=NOW - i) for i in range(2500)]
    kill(redis_client, entries)
    filters = Filters(type="send_email")
    with monkeypatch.context() as patch:
        _in_lua(patch)
        there = _summary(queue.scan(filters, samples=5, now=NOW, chunk=50))
    for share, most in ((0, 0), (3, 3), (listscan.WINDOW - 1, listscan.WINDOW - 1), (0, listscan.WINDOW - 1)):
        monkeypatch.setattr(listscan, "LUA_CHUNKS", share)
        monkeypatch.setattr(listscan, "LUA_MOST", most)
        assert _summary(queue.scan(filters, samples=5, now=NOW, chunk=50)) == there
    assert there["matched"] == 834 and there["samples"] == [e for e in entries if b"send_email" in e][:5]


def test_a_preview_with_the_queues_field_paths_is_the_scripts(redis_client, monkeypatch):
    settings = QueueSettings(name="celery", fields={"type": "headers.task", "id": "headers.id",
                                                    "failedAt": "headers.failed"})
    queue = RedisListQueue(settings, redis_client)
    _here_only(monkeypatch)
    entries = [json.dumps({"headers": {"task": f"t{i % 4}", "id": f"c-{i}", "failed": NOW - 100 * i},
                           "type": "t0", "error": "E"}).encode() for i in range(60)]
    kill(redis_client, entries + [b'{"headers": "flat", "type": "t1"}', b'{"headers": {"task": ["t1"]}}'],
         settings.dead)
    for filters in (Filters(type="t1"), Filters(type="t0", older_than=2000.0), Filters(ids=("c-3", "c-7"))):
        here = _summary(queue.scan(filters, samples=2, now=NOW, chunk=9))
        with monkeypatch.context() as patch:
            _in_lua(patch)
            assert here == _summary(queue.scan(filters, samples=2, now=NOW, chunk=9)), filters


# -- the move: batch for batch what REQUEUE_BATCH leaves ------------------------------------------------

def _state(client, queue: RedisListQueue, task_id: str) -> dict:
    task = {k.decode(): v.decode() for k, v in client.hgetall(queue.task_key).items()}
    return {"ready": client.lrange(queue.settings.ready, 0, -1), "dead": client.lrange(queue.settings.dead, 0, -1),
            "held": client.lrange(queue.held_key(task_id), 0, -1),
            **{name: task[name] for name in ("status", "total", "scanned", "moved")}}


def _twins(client, entries: list[bytes], filters: Filters, limit: int | None, held_order: str | None = None):
    """Two queues holding the same dead letters, each with the same task started."""
    queues = []
    for name in ("a", "b"):
        queue = RedisListQueue(QueueSettings(name=name, ready=f"{name}:ready", dead=f"{name}:dead"), client,
                               clock=lambda: NOW)
        kill(client, entries, queue.settings.dead)
        task = queue.start_requeue(filters, limit=limit, rate=None, matching=0, requested_by="t", task_id="t1")
        if held_order:
            client.hset(queue.task_key, "held_order", held_order)
        queues.append((queue, task.id))
    return queues


@pytest.mark.parametrize("filters,limit,held_order", [
    (Filters(type="send_email"), None, None), (Filters(type="send_email"), 5, None),
    (Filters(error="boom"), None, None), (Filters(ids=("h", "esc", "job-3")), 2, None),
    (Filters(type="render_pdf"), None, "oldest-first"),  # a task an earlier version started: RPUSH to held
], ids=["type", "type-limit", "error", "ids-limit", "earlier-held-order"])
def test_every_batch_decided_here_leaves_what_the_lua_batch_leaves(redis_client, monkeypatch, filters, limit,
                                                                  held_order):
    entries = _entries()
    (here, task_id), (there, _) = _twins(redis_client, entries, filters, limit, held_order)
    keys = {q.name: [q.settings.dead, q.settings.ready, q.held_key(task_id), q.task_key, q.lease_key]
            for q in (here, there)}
    token = here.lease.take("requeue", task_id, owner="t", ttl=60)
    other = there.lease.take("requeue", task_id, owner="t", ttl=60)
    steps = decided_here = 0
    while True:
        state = listmove.move_batch(redis_client, keys["a"], token, 7, decider=LuaFilter.of, clock=lambda: NOW)
        decided_here += state is not None
        reference = there._batch(keys=keys["b"], args=[7, other, NOW])[2]
        if state is None:  # the end (limit reached, nothing left): the Lua batch decides it
            state = here._batch(keys=keys["a"], args=[7, token, NOW])[2]
        assert state == reference
        assert _state(redis_client, here, task_id) == _state(redis_client, there, task_id), steps
        steps += 1
        if state == 1:
            break
    assert decided_here >= min(steps, 5) - 1 and decided_here > 0


def test_the_move_is_refused_to_whoever_does_not_hold_the_lease_and_to_a_cancelled_task(redis_client):
    (queue, task_id), _ = _twins(redis_client, _entries(), Filters(type="send_email"), None)
    keys = [queue.settings.dead, queue.settings.ready, queue.held_key(task_id), queue.task_key, queue.lease_key]
    before = _state(redis_client, queue, task_id)
    assert listmove.move_batch(redis_client, keys, "not-the-lease", 10, decider=LuaFilter.of, clock=lambda: NOW) is None
    token = queue.lease.take("requeue", task_id, owner="t", ttl=60)
    redis_client.hset(queue.task_key, "status", "cancelling")
    assert listmove.move_batch(redis_client, keys, token, 10, decider=LuaFilter.of, clock=lambda: NOW) is None
    assert _state(redis_client, queue, task_id) == {**before, "status": "cancelling"}
    # the connection went back to the pool unwatched: a transaction on it is not aborted by an old WATCH
    redis_client.lpush(queue.settings.dead, b"later")
    with redis_client.pipeline() as pipe:
        assert pipe.set("x", 1).execute() == [True]


def test_only_a_filter_with_a_byte_pre_check_is_decided_here():
    cheap = {f: LuaFilter.of(f.to_lua(NOW)).cheap for f in (
        Filters(type="a"), Filters(error="e"), Filters(ids=("job-1", "x")), Filters(type="a", older_than=5.0),
        Filters(older_than=5.0), Filters(ids=("123",)), Filters(ids=("-7", "x")), Filters())}
    assert list(cheap.values()) == [True, True, True, True, False, False, False, False]
    assert LuaFilter.of(Filters(ids=("123",), error="e").to_lua(NOW)).cheap  # the error's pre-check then


def test_a_producer_pushing_between_watch_and_exec_sends_that_batch_to_lua_and_nothing_is_lost(redis_client):
    entries = [dead_letter(i, now=NOW) for i in range(300)]
    (queue, task_id), _ = _twins(redis_client, entries, Filters(type="send_email"), None)
    arrivals = [dead_letter(1000 + i, now=NOW) for i in range(3)]
    calls = {"decided": 0, "lua": 0}
    real_decider, real_batch = queue._lua_filter, queue._batch

    def decider(text):  # runs after WATCH and the reads, before EXEC
        calls["decided"] += 1
        if calls["decided"] <= len(arrivals):
            redis_client.lpush(queue.settings.dead, arrivals[calls["decided"] - 1])  # a worker's dead letter
        return real_decider(text)

    def lua_batch(**kw):
        calls["lua"] += 1
        return real_batch(**kw)

    queue._lua_filter, queue._batch = decider, lua_batch
    report = queue.run_requeue(task_id, owner="t", batch=50)
    assert report.outcome == "done" and calls["lua"] >= len(arrivals)
    matches = [e for e in entries if b'"send_email"' in e]
    assert oldest_first(redis_client, queue.settings.ready) == matches  # every match, oldest first
    assert oldest_first(redis_client, queue.settings.dead) == [e for e in entries if e not in matches] + arrivals
    assert report.task.moved == len(matches) and report.task.scanned == len(entries)


class Killed(BaseException):
    """The process dying there (SystemExit would do as well; this one no handler catches by mistake)."""


@pytest.mark.parametrize("where", ["between WATCH and EXEC", "right after EXEC"])
def test_killed_in_a_batch_decided_here_then_resumed_loses_and_duplicates_nothing(redis_client, monkeypatch, where):
    entries = [dead_letter(i, now=NOW) for i in range(3000)]
    (queue, task_id), _ = _twins(redis_client, entries, Filters(type="sync_crm"), None)
    real_step = listmove.ListMover.step
    calls = {"n": 0}

    def dying_decider(text):
        raise Killed(where)

    def step(mover, token, size):
        calls["n"] += 1
        if where == "between WATCH and EXEC" and calls["n"] == 3:
            mover.decider = dying_decider
        state = real_step(mover, token, size)
        if where == "right after EXEC" and calls["n"] == 3:
            raise Killed(where)
        return state

    monkeypatch.setattr(listmove.ListMover, "step", step)
    with pytest.raises(Killed):
        queue.run_requeue(task_id, owner="a", batch=500)
    task = queue.task()
    done = 2 if where == "between WATCH and EXEC" else 3
    assert task.status == "running" and task.scanned == done * 500
    assert Counter(redis_client.lrange(queue.settings.dead, 0, -1) + redis_client.lrange(queue.settings.ready, 0, -1)
                   + redis_client.lrange(queue.held_key(task_id), 0, -1)) == Counter(entries)
    redis_client.delete(queue.lease_key)  # the dead process's lease, expired
    monkeypatch.setattr(listmove.ListMover, "step", real_step)
    report = queue.run_requeue(task_id, owner="b", batch=500)
    assert report.outcome == "done"
    matches = [e for e in entries if b'"sync_crm"' in e]
    assert oldest_first(redis_client, queue.settings.ready) == matches
    assert oldest_first(redis_client, queue.settings.dead) == [e for e in entries if e not in matches]
    assert not redis_client.exists(queue.held_key(task_id))


@pytest.mark.parametrize("filters,limit", [(Filters(type="send_email"), None), (Filters(error="boom"), 4),
                                           (Filters(ids=("h", "esc", "job-3", "job-30")), None)])
def test_a_whole_run_on_one_chained_connection_ends_as_the_lua_run_ends(redis_client, filters, limit):
    (here, task_id), (there, _) = _twins(redis_client, _entries(), filters, limit)
    there.moves_here = False
    for queue in (here, there):
        report = queue.run_requeue(task_id, owner="t", batch=7)
        assert report.outcome == "done"
    assert here.moves_here and _state(redis_client, here, task_id) == _state(redis_client, there, task_id)
    assert redis_client.llen(here.settings.ready) == (limit or redis_client.llen(there.settings.ready)) > 0
