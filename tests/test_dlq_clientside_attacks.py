"""Attacks on the filtered requeue decided in the bot (clientfilter, listscan, listmove): hostile entries
compared with the Lua scripts (the reference) and with `dlq peek`'s filter, and faults during a move:
SIGKILL of a real `opsbot run`, Redis paused under it, a producer and a consumer at work, a second
replica, the dead key deleted or retyped, a connection dropped between the reads and the writes.
After each: every entry in exactly one of ready / dead, dead's order kept, counters true, no held list."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter

import pytest
import redis

from commands.dlq import listscan
from commands.dlq.clientfilter import LuaFilter, Undecided
from commands.dlq.entries import DeadEntry, Filters
from commands.dlq.lease import LeaseBusy
from commands.dlq.redis_list import RedisListQueue
from commands.dlq.settings import QueueSettings
from tests.conftest import REDIS_URL, write_config
from tests.support.dlq import dead_letter, kill, oldest_first, opsbot
from tests.support.dlqlayout import QueueLayout
from tests.support.servers import RedisServer
from tests.test_dlq_clientside import BYTES, NOW, _in_lua, _state, _summary, _twins
from tests.test_dlq_hostile import HOSTILE, _doc


def _raw(body: str) -> bytes:
    return ('{"id": "c", "type": "send_email", "error": "boom", ' + body + "}").encode()


# JSON only Lua's cjson reads (it decodes "invalid numbers" and integers of any length, 1000 levels deep):
# Python's reader refuses each, so only the Lua filter can decide them.
CJSON_ONLY = [
    _raw('"n": 0x10'), _raw('"n": -0x10'), _raw('"n": 007'), _raw('"n": +1'), _raw('"n": inf'), _raw('"n": nan'),
    _raw('"n": 1.'), _raw('"n": ' + "1" * 5000), _raw('"id2": ' + "9" * 4400),
    _raw('"deep": ' + "[" * 998 + "]" * 998),
]

# Everything else hostile we tried: Python and cjson agree on each.
MORE = [
    b' \t\r\n{"id": "ws", "type": "send_email", "error": "boom"}', b'\x0b{"type": "send_email"}',
    b'\x0c{"type": "send_email"}', b'{"type": "send_email"} x', b'{"type": "send_email",}',
    b"{'type': 'send_email'}", b'{"type": "render_pdf", "type": "send_email", "id": "dup2", "error": "boom"}',
    b'{"type": "\\u0073end_email", "id": "u-esc", "error": "bo\\u006fm"}', b'{"type": "send\\/email"}',
    b'{"type": "send_email", "id": "h\\u0000", "error": "boom"}', b'{"type": "send_email", "error": "bo\x01om"}',
    b'{"type": "send_email", "error": "\\x41"}', b'{"type": "send_email", "ok": True}',
    b'{"type": "send_email", "error": "\\ud83d\\ude00boom"}', b'{"type": "send_email", "error": "\\udc00boom"}',
    b'{"type": "send_email", "error": "\xed\xa0\x80boom"}', '{"type": "send_email"}'.encode("utf-16"),
    b'{"type": "send_email", "n": NaN}', b'{"type": "send_email", "n": -Infinity}',
    b'{"type": "send_email", "n": 1e999999999999, "m": 1e-999999}',
    b'{"type": "send_email", "deep": ' + b"[" * 1001 + b"]" * 1001 + b"}",
    _doc(id=1e16), _doc(id=10 ** 16), _doc(id=12.0), _doc(id=1.2e1), _doc(id=9007199254740991),
    _doc(id=9007199254740992), _doc(id=-12), _doc(id="12"), _doc(id="1e16"),
    _doc(type="send_email_v2"), _doc(type="re_send_email"), _doc(type="send"), _doc(type="email"),
    _doc(type="x", error="send_email"), _doc(id="send_email", type="y"),
    _doc(error="\u00c9chec \u00e9chec"), _doc(error="\u0130stanbul"), _doc(error="\u00dfe STRASSE"),
    _doc(id="big3", payload="y" * (3 * 2 ** 20)),
]

FILTERS = [
    Filters(type="send_email"), Filters(type="send"), Filters(type="email"), Filters(type="send_email_v2"),
    Filters(error="boom"), Filters(error="\u00e9chec"), Filters(error="\u00c9chec"), Filters(error="strasse"),
    Filters(error="\u0131stanbul"), Filters(error="i\u0307stanbul"),
    Filters(ids=("h", "c", "12")), Filters(ids=("10000000000000000", "h")), Filters(ids=("12", "-12", "big3")),
    Filters(ids=("c", "send_email"), error="o"), Filters(type="send_email", older_than=60.0),
]


def _hostile() -> list[bytes]:
    normal = [dead_letter(i, now=NOW) for i in range(30)]
    return normal[:15] + HOSTILE + BYTES + CJSON_ONLY + MORE + normal[15:]


@pytest.fixture
def queue(redis_client):
    return RedisListQueue(QueueSettings(name="jobs"), redis_client)


# -- differentials ------------------------------------------------------------------------------------

def test_an_entry_only_cjson_reads_is_left_to_the_lua_filter():
    here = LuaFilter.of(Filters(type="send_email").to_lua(NOW))
    for raw in CJSON_ONLY:
        with pytest.raises(Undecided):
            here.decide(raw)
    assert here.decide(b"not json send_email") is None and here.decide(b'["send_email"]') is None


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_a_hostile_preview_counted_here_is_the_scan_scripts(queue, redis_client, monkeypatch, chunk):
    entries = _hostile()
    kill(redis_client, entries)
    for filters in FILTERS:
        with monkeypatch.context() as patch:
            _in_lua(patch)
            there = _summary(queue.scan(filters, samples=4, now=NOW, chunk=chunk))
        for share, most in ((0, 0), (1, listscan.WINDOW - 1)):  # every chunk here; Redis some
            monkeypatch.setattr(listscan, "LUA_CHUNKS", share)
            monkeypatch.setattr(listscan, "LUA_MOST", most)
            assert _summary(queue.scan(filters, samples=4, now=NOW, chunk=chunk)) == there, (filters, share)
    assert oldest_first(redis_client, "jobs:dead") == entries


@pytest.mark.parametrize("filters,limit,batch", [
    (Filters(type="send_email"), None, 7), (Filters(error="boom"), None, 1000), (Filters(error="boom"), 1, 1000),
    (Filters(ids=("h", "c", "12")), None, 3), (Filters(type="send_email"), 25, 1),
], ids=["type", "error-one-batch", "limit-1-of-a-batch", "ids", "limit-batch-1"])
def test_a_hostile_requeue_decided_here_ends_as_the_lua_run_ends(redis_client, filters, limit, batch):
    entries = _hostile()
    (here, task_id), (there, _) = _twins(redis_client, entries, filters, limit)
    there.moves_here = False
    preview = here.scan(filters, samples=0, now=NOW, chunk=1000)
    for queue in (here, there):
        assert queue.run_requeue(task_id, owner="t", batch=batch).outcome == "done"
    assert here.moves_here and _state(redis_client, here, task_id) == _state(redis_client, there, task_id)
    moved = oldest_first(redis_client, here.settings.ready)
    assert moved and (limit is None or len(moved) == limit)
    # Nothing moved the preview's rules would not count.
    assert len(moved) <= preview.matched
    assert all(_lua_matches(redis_client, e, filters) for e in set(moved))


def _lua_matches(client, raw: bytes, filters: Filters) -> bool:
    from commands.dlq import lua

    client.delete("probe")
    client.rpush("probe", raw)
    reply = client.eval(lua.SCAN, 1, "probe", filters.to_lua(NOW), 0, 1, 0, 120)[0]
    return json.loads(reply.decode("utf-8", "replace"))["matched"] == 1


def test_peek_filters_hostile_entries_as_the_preview_does_but_for_the_known_differences(redis_client):
    """`dlq peek` (Filters.matches on DeadEntry.parse, shared with the Python backends) and the redis-list
    preview/requeue (the Lua rules) agree on every hostile entry but these, documented in the README:
    entries only cjson reads (peek shows them opaque); --error case-folds beyond A-Z in peek (\u00c9, \u0130);
    a failedAt of at most 64 characters but more than 64 bytes is read by peek only."""
    hostile = [e for e in _hostile() if len(e) < 2 ** 20]
    differ = {raw for raw in hostile for filters in FILTERS
              if filters.matches(DeadEntry.parse(raw), NOW) != _lua_matches(redis_client, raw, filters)}
    known = {raw for raw in hostile if DeadEntry.parse(raw).id in ("upper-e", "long-time")
             or b"\\u0130stanbul" in raw}
    assert len(known) == 3 and differ == set(CJSON_ONLY) | known
    assert {raw for raw in CJSON_ONLY if DeadEntry.parse(raw).opaque} == set(CJSON_ONLY)


# -- the connection dropped between the reads and the writes --------------------------------------

def test_a_connection_dropped_before_exec_never_writes_without_its_watch(redis_client):
    """With health checks and retries configured, redis-py would PING before sending MULTI/EXEC, find the
    connection dead and reconnect: the transaction then ran with no WATCH, on reads a consumer had made
    stale (34 of 100 entries were lost). The writes go out with no health check: the batch fails instead."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    with RedisServer() as server:  # its own: the test kills connections
        side = server.client()
        client = redis.Redis.from_url(server.url, health_check_interval=1, retry=Retry(NoBackoff(), 3))
        queue = RedisListQueue(QueueSettings(name="jobs"), client, clock=time.time)
        entries = [dead_letter(i) for i in range(100)]
        kill(side, entries)
        queue.start_requeue(Filters(type="send_email"), limit=None, rate=None, matching=0, requested_by="t",
                            task_id="t1")
        real, taken = queue._lua_filter, []

        def decider(text):  # after WATCH and the reads, before MULTI/EXEC
            if not taken:
                for info in side.client_list():
                    if int(info["id"]) != side.client_id():
                        side.client_kill_filter(_id=info["id"])
                time.sleep(1.1)  # the health check is due
                taken.append(side.rpop("jobs:dead"))  # a consumer takes the oldest
            return real(text)

        queue._lua_filter = decider
        with pytest.raises(redis.ConnectionError):
            queue.run_requeue("t1", owner="t", batch=10)
        ready, dead = queue.settings.ready, queue.settings.dead
        held = side.lrange(queue.held_key("t1"), 0, -1)
        assert Counter(side.lrange(dead, 0, -1) + side.lrange(ready, 0, -1) + held + taken) == Counter(entries)
        side.delete(queue.lease_key)
        assert queue.run_requeue("t1", owner="b", batch=10).outcome == "done"
        emails = [e for e in entries[1:] if b'"send_email"' in e]
        assert oldest_first(side, ready) == emails
        assert oldest_first(side, dead) == [e for e in entries[1:] if e not in emails]
        assert not side.exists(queue.held_key("t1"))


# -- other clients at work during the move ---------------------------------------------------------

def _check_end(client, queue: RedisListQueue, task_id: str, original: list[bytes], gone: list[bytes],
               filters: Filters) -> None:
    """Every entry exactly once in ready / dead / taken by someone else, each list in the original order,
    only matches in ready, the counters true, no held list, the task closed."""
    ready, dead = oldest_first(client, queue.settings.ready), oldest_first(client, queue.settings.dead)
    assert Counter(ready + dead + gone) == Counter(original)
    order = {e: i for i, e in enumerate(original)}
    assert [order[e] for e in ready] == sorted(order[e] for e in ready)
    assert [order[e] for e in dead] == sorted(order[e] for e in dead)
    assert all(filters.matches(DeadEntry.parse(e), NOW) for e in ready)
    task = queue.task()
    assert task.status == "done" and task.moved == len(ready) and not client.exists(queue.held_key(task_id))


def test_a_producer_and_a_consumer_at_work_during_the_move_lose_nothing(redis_client):
    entries = [dead_letter(i, now=NOW) for i in range(4000)]
    filters = Filters(type="send_email")
    (queue, task_id), _ = _twins(redis_client, entries, filters, None)
    other = redis.Redis.from_url(REDIS_URL)
    arrivals, taken, stop = [], [], threading.Event()

    def producer():
        i = 0
        while not stop.is_set():
            entry = dead_letter(10_000 + i, now=NOW)
            other.lpush(queue.settings.dead, entry)
            arrivals.append(entry)
            i += 1
            time.sleep(0.0005)

    def consumer():
        while not stop.is_set() and len(taken) < 300:
            got = other.rpop(queue.settings.dead)
            if got is not None:
                taken.append(got)
            time.sleep(0.002)

    workers = [threading.Thread(target=producer), threading.Thread(target=consumer)]
    for w in workers:
        w.start()
    try:
        report = queue.run_requeue(task_id, owner="t", batch=50)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert report.outcome == "done" and arrivals and taken
    _check_end(redis_client, queue, task_id, entries + arrivals, taken, filters)


def test_two_replicas_started_at_once_move_each_entry_once(redis_client):
    entries = [dead_letter(i, now=NOW) for i in range(3000)]
    filters = Filters(error="timeout")
    (queue, task_id), _ = _twins(redis_client, entries, filters, None)
    results: list[object] = []
    gate = threading.Barrier(2)

    def replica(name):
        mine = RedisListQueue(QueueSettings(name="a", ready="a:ready", dead="a:dead"), redis.Redis.from_url(REDIS_URL),
                              clock=lambda: NOW)
        gate.wait()
        try:
            results.append(mine.run_requeue(task_id, owner=name, batch=20).outcome)
        except LeaseBusy:
            results.append("busy")

    threads = [threading.Thread(target=replica, args=(n,)) for n in ("r1", "r2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["busy", "done"]
    _check_end(redis_client, queue, task_id, entries, [], filters)


@pytest.mark.parametrize("change", ["deleted", "retyped"])
def test_the_dead_key_deleted_or_retyped_mid_run(redis_client, change):
    entries = [dead_letter(i, now=NOW) for i in range(1000)]
    filters = Filters(type="render_pdf")
    (queue, task_id), _ = _twins(redis_client, entries, filters, None)
    real, calls, removed = queue._lua_filter, [], []

    def decider(text):
        calls.append(1)
        if len(calls) == 3:
            removed.extend(oldest_first(redis_client, queue.settings.dead))
            redis_client.delete(queue.settings.dead)
            if change == "retyped":
                redis_client.set(queue.settings.dead, "oops")
        return real(text)

    queue._lua_filter = decider
    if change == "deleted":  # the run sees the list end: it puts back what it held and closes the task
        assert queue.run_requeue(task_id, owner="t", batch=100).outcome == "done"
    else:  # Redis refuses the batch: the run stops, holding nothing it cannot give back
        with pytest.raises(redis.ResponseError):
            queue.run_requeue(task_id, owner="t", batch=100)
        assert queue.task().status == "running" and queue.task().scanned == 200
        assert redis_client.get(queue.settings.dead) == b"oops"
        redis_client.delete(queue.settings.dead, queue.lease_key)  # the operator removes the string
        assert queue.run_requeue(task_id, owner="t2", batch=100).outcome == "done"
    _check_end(redis_client, queue, task_id, entries, removed, filters)
    assert len(removed) == 800


# -- Redis paused under a move; a real process killed ---------------------------------------------

def test_redis_paused_between_the_reads_and_exec_then_resumed(monkeypatch):
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url, socket_timeout=0.5)
        entries = [dead_letter(i, now=NOW) for i in range(2000)]
        filters = Filters(type="sync_crm")
        kill(client, entries, "jobs:dead")
        queue = RedisListQueue(QueueSettings(name="jobs"), client, clock=lambda: NOW)
        task = queue.start_requeue(filters, limit=None, rate=None, matching=0, requested_by="t")
        real, calls = queue._lua_filter, []

        def decider(text):
            calls.append(1)
            if len(calls) == 4:
                os.kill(server.pid, signal.SIGSTOP)  # the writes go to a stopped server; their reply times out
                threading.Timer(1.5, os.kill, (server.pid, signal.SIGCONT)).start()
            return real(text)

        queue._lua_filter = decider
        with pytest.raises((redis.TimeoutError, redis.ConnectionError)):
            queue.run_requeue(task.id, owner="t", batch=100)
        time.sleep(2.0)
        # The EXEC reached Redis before the bot gave up on it: it ran (WATCH intact) or not, all or nothing.
        assert queue.task().scanned in (300, 400)
        client.delete(queue.lease_key)
        assert queue.run_requeue(task.id, owner="t2", batch=100).outcome == "done"
        _check_end(client, queue, task.id, entries, [], filters)


def test_a_real_opsbot_run_killed_mid_move_resumes_exactly(tmp_path, database_url):
    with RedisServer() as server:
        q = QueueLayout.server(server.client(), server.url, server=server)
        client = q.client
        path = q.configure(write_config(tmp_path / "app.yaml", database_url), "batch: 50, lease_ttl: 1s")
        entries = [dead_letter(i) for i in range(4000)]
        kill(client, entries, q.dead)
        env = {**os.environ, "RUN_MIGRATIONS": "true"}
        command = opsbot(path, "dlq requeue --error timeout --rate 200")
        for delay in (0.05, 0.9, 1.3, 0.7):
            proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 30
            while not client.exists(q.lease) and time.monotonic() < deadline:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.005)
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            held = [k for k in q.held_keys()]
            inside = Counter(client.lrange(q.ready, 0, -1) + client.lrange(q.dead, 0, -1)
                             + [e for k in held for e in client.lrange(k, 0, -1)])
            assert inside == Counter(entries)
            assert client.hget(q.task, "status") == b"running" and int(client.hget(q.task, "moved")) < 1334
            time.sleep(1.1)  # the lease runs out
        execs = int(client.info("commandstats").get("cmdstat_exec", {}).get("calls", 0))
        assert execs > 0  # batches were decided in the bot and written with MULTI/EXEC
        finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert finished.returncode == 0, finished.stdout + finished.stderr
        timeouts = [e for e in entries if b"timeout" in e.lower()]
        assert oldest_first(client, q.ready) == timeouts
        assert oldest_first(client, q.dead) == [e for e in entries if e not in set(timeouts)]
        assert q.held_keys() == [] and client.hget(q.task, "status") == b"done"


def test_cancelled_mid_run_stops_after_the_batch_and_puts_the_held_entries_back(redis_client):
    entries = [dead_letter(i, now=NOW) for i in range(1000)]
    filters = Filters(type="send_email")
    (queue, task_id), _ = _twins(redis_client, entries, filters, None)
    real, calls = queue._lua_filter, []

    def decider(text):  # between WATCH and EXEC: the cancel touches the watched task, so EXEC is refused
        calls.append(1)
        if len(calls) == 3:
            redis_client.hset(queue.task_key, "status", "cancelling")  # what `dlq requeue cancel` writes
        return real(text)

    queue._lua_filter = decider
    assert queue.run_requeue(task_id, owner="t", batch=100).outcome == "cancelled"
    task = queue.task()
    assert task.status == "cancelled" and task.scanned == 200
    emails = [e for e in entries[:200] if b'"send_email"' in e]
    assert oldest_first(redis_client, queue.settings.ready) == emails and task.moved == len(emails)
    assert oldest_first(redis_client, queue.settings.dead) == [e for e in entries if e not in emails]
    assert not redis_client.exists(queue.held_key(task_id))


def test_a_lease_taken_over_mid_batch_refuses_that_batch_and_the_run_stops(redis_client):
    entries = [dead_letter(i, now=NOW) for i in range(1000)]
    filters = Filters(error="rate limit")
    (queue, task_id), _ = _twins(redis_client, entries, filters, None)
    real, calls = queue._lua_filter, []

    def decider(text):  # the holder stalls past its lease; a second replica takes the task over
        calls.append(1)
        if len(calls) == 2:
            redis_client.delete(queue.lease_key)
            queue.lease.take("requeue", task_id, owner="other", ttl=60)
        return real(text)

    queue._lua_filter = decider
    assert queue.run_requeue(task_id, owner="t", batch=100).outcome == "lost"
    assert queue.task().scanned == 100 and queue.task().status == "running"
    redis_client.delete(queue.lease_key)
    queue._lua_filter = real
    assert queue.run_requeue(task_id, owner="other", batch=100).outcome == "done"
    _check_end(redis_client, queue, task_id, entries, [], filters)


def test_one_mover_asked_batches_of_changing_sizes_leaves_what_the_lua_batches_leave(redis_client):
    """A rate change (or the last, short batch) asks a size other than the reads sent ahead: those are
    read and dropped, their WATCH ended, and the batch read again."""
    from commands.dlq.listmove import ListMover

    entries = _hostile()
    filters = Filters(type="send_email")
    (here, task_id), (there, _) = _twins(redis_client, entries, filters, None)
    keys = {q.name: [q.settings.dead, q.settings.ready, q.held_key(task_id), q.task_key, q.lease_key]
            for q in (here, there)}
    token = here.lease.take("requeue", task_id, owner="t", ttl=60)
    other = there.lease.take("requeue", task_id, owner="t", ttl=60)
    sizes, decided = [7, 3, 3, 11, 1, 1, 20, 5], 0
    with ListMover(redis_client, keys["a"], decider=LuaFilter.of, clock=lambda: NOW) as mover:
        for step in range(200):
            size = sizes[step % len(sizes)]
            state = mover.step(token, size)
            decided += state is not None
            if state is None:
                state = here._batch(keys=keys["a"], args=[size, token, NOW])[2]
            assert state == there._batch(keys=keys["b"], args=[size, other, NOW])[2]
            assert _state(redis_client, here, task_id) == _state(redis_client, there, task_id), step
            if state == 1:
                break
    assert decided > 5
    with redis_client.pipeline() as pipe:  # the connection went back unwatched
        redis_client.lpush(here.settings.dead, b"later")
        assert pipe.set("x", 1).execute() == [True]


def test_interrupted_between_chained_batches_then_resumed(redis_client):
    """Stopped with the next batch's WATCH and reads already sent: they are read and unwatched, the
    connection goes back clean, and a second run finishes the task."""
    entries = [dead_letter(i, now=NOW) for i in range(2000)]
    filters = Filters(type="render_pdf")
    (queue, task_id), _ = _twins(redis_client, entries, filters, None)
    asked = []
    report = queue.run_requeue(task_id, owner="t", batch=100, should_stop=lambda: asked.append(1) or len(asked) > 3)
    assert report.outcome == "interrupted" and queue.task().scanned == 300 and queue.task().status == "running"
    redis_client.lpush(queue.settings.dead, b"arrived")  # would abort a transaction on a still-watching connection
    with redis_client.pipeline() as pipe:
        assert pipe.set("x", 1).execute() == [True]
    assert queue.run_requeue(task_id, owner="t", batch=100).outcome == "done"
    _check_end(redis_client, queue, task_id, entries + [b"arrived"], [], filters)
