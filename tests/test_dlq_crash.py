"""SIGKILL at any instant loses no dead letter and duplicates none; running it again resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from bot.core.invocation import Actor, Where
from tests.conftest import write_config
from tests.support.dlqlayout import QueueLayout
from tests.support.servers import PostgresCluster, RedisServer
from commands.dlq.settings import find_queue
from tests.support.dlq import (archive_rows, assert_exactly_once, dead_letter, everything, kill, opsbot,
                               oldest_first, reset_schema)


def test_requeue_killed_three_times_then_resumed(tmp_path, database_url, dlq_layout):
    q, redis_client = dlq_layout, dlq_layout.client
    path = q.configure(write_config(tmp_path / "app.yaml", database_url), "batch: 50, lease_ttl: 1s")
    entries = [dead_letter(i) for i in range(3000)] + [b"\x00binary\xff"]
    kill(redis_client, entries, q.dead)
    original = Counter(entries)
    env = {**os.environ, "RUN_MIGRATIONS": "true"}
    command = [sys.executable, "-m", "bot", "--config", str(path), "run", "--yes", "dlq requeue --type send_email --rate 200"]

    for delay in (0.9, 1.3, 0.7):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not redis_client.exists(q.lease) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # At the instant of death: every entry is somewhere, exactly once.
        assert everything(redis_client, q.ready, q.dead) == original
        task = redis_client.hgetall(q.task)
        assert task[b"status"] == b"running" and 0 < int(task[b"moved"]) < 1000
        time.sleep(1.1)  # the dead process's lease runs out

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "Requeued" in finished.stdout

    emails = [e for e in entries if b'"send_email"' in e]
    assert list(reversed(redis_client.lrange(q.ready, 0, -1))) == emails          # each exactly once, in order
    assert oldest_first(redis_client, q.dead) == [e for e in entries if e not in set(emails)]
    assert q.held_keys() == []
    assert redis_client.hget(q.task, "status") == b"done"


# -- trim: a real `opsbot run` killed between archive commit and removal ------------------------

def _own_config(tmp_path, database_url, q, queue_extra="batch: 50, lease_ttl: 1s"):
    return q.configure(write_config(tmp_path / "app.yaml", database_url), queue_extra)


@pytest.fixture(params=["server", "cluster"])
def own_layout(request, redis_client):
    """The queue on a redis-server of the test's own (persistent), or on the session's Redis Cluster:
    these scenarios pause, kill and restart the server (the cluster node) holding the queue."""
    if request.param == "cluster":
        with QueueLayout.cluster_test(request.getfixturevalue("redis_cluster")) as layout:
            yield layout
        return
    own = RedisServer(persist=True).start()
    try:
        yield QueueLayout.server(own.client(), own.url, server=own)
    finally:
        own.close()


def _kill_between_commit_and_removal(proc, q, database_url, min_rows=100):
    """Pause Redis writes (our own server) once the trim is under way: the trimmer blocks on its
    compare-and-remove right after an archive commit. SIGKILL it there, then let writes go."""
    deadline = time.monotonic() + 30
    while len(archive_rows(database_url)) < min_rows:
        assert proc.poll() is None and time.monotonic() < deadline, "the trim did not get going"
        time.sleep(0.005)
    node = q.node_of_queue().client()   # the server (cluster node) holding the queue
    client = q.client
    for _ in range(20):
        node.execute_command("CLIENT", "PAUSE", 10000, "WRITE")
        until = time.monotonic() + 2
        while time.monotonic() < until:
            dropped = int(client.hget(q.trim, "dropped") or 0)
            if len(archive_rows(database_url)) > dropped:   # committed, not removed
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                node.execute_command("CLIENT", "UNPAUSE")
                return dropped
            time.sleep(0.01)
        node.execute_command("CLIENT", "UNPAUSE")           # paused elsewhere (a lease renewal): again
        time.sleep(0.05)
    raise AssertionError("never caught the trimmer between commit and removal")


def test_trim_killed_between_commit_and_removal_then_requeue_then_resume_loses_nothing(tmp_path, database_url,
                                                                                     own_layout):
    reset_schema(database_url)
    q = own_layout
    client = q.client
    path = _own_config(tmp_path, database_url, q)
    # Enough entries that the trim is still under way when the test pauses Redis's writes (3,000 were
    # sometimes all archived and removed between two looks).
    entries = [dead_letter(i) for i in range(20000)]
    kill(client, entries, q.dead)
    original = Counter(entries)
    env = {**os.environ, "RUN_MIGRATIONS": "true"}

    trim = subprocess.Popen(opsbot(path, "dlq trim --keep 1"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    dropped = _kill_between_commit_and_removal(trim, q, database_url)
    assert int(client.hget(q.trim, "dropped")) == dropped   # the removal never happened
    time.sleep(1.1)  # the killed trimmer's lease runs out

    requeue = subprocess.run(opsbot(path, "dlq requeue --type send_email --limit 300"), env=env,
                             capture_output=True, text=True, timeout=60)
    assert requeue.returncode == 0, requeue.stdout + requeue.stderr
    assert client.llen(q.ready) == 300
    # What the killed trimmer archived but never removed is not described as archived any more.
    assert_exactly_once(client, database_url, original, q.ready, q.dead)

    again = subprocess.run(opsbot(path, "dlq trim --keep 1"), env=env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Nothing was lost" not in again.stdout
    assert client.llen(q.dead) == 1 and client.llen(q.ready) == 300
    assert_exactly_once(client, database_url, original, q.ready, q.dead)


# -- Redis restarted under a requeue: its lease is not "already running" afterwards -----------

def test_a_requeue_resumes_at_once_after_redis_restarts_under_it(tmp_path, database_url, own_layout):
    reset_schema(database_url)
    q = own_layout
    client = q.client
    path = _own_config(tmp_path, database_url, q, queue_extra="batch: 50, lease_ttl: 15s")
    entries = [dead_letter(i) for i in range(2000)]
    kill(client, entries, q.dead)
    env = {**os.environ, "RUN_MIGRATIONS": "true"}
    command = opsbot(path, "dlq requeue --type render_pdf --rate 400")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while int(client.hget(q.task, "moved") or 0) < 50:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)   # the bot and Redis die together (a host restart)
    proc.wait()
    q.node_of_queue().restart()          # by its PID; back from its append-only file
    q.reconnect()
    client = q.client
    assert client.exists(q.lease)        # restored with 15 s to live
    assert everything(client, q.ready, q.dead) == Counter(entries)

    started = time.monotonic()
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    assert again.returncode == 0, again.stdout + again.stderr
    assert "already running" not in again.stdout and "Requeued" in again.stdout
    assert time.monotonic() - started < 12        # it did not wait the old lease out
    pdfs = [e for e in entries if b'"render_pdf"' in e]
    assert list(reversed(client.lrange(q.ready, 0, -1))) == pdfs
    assert oldest_first(client, q.dead) == [e for e in entries if e not in set(pdfs)]


def test_a_requeue_holder_stops_when_redis_restarted_under_it(tmp_path, own_layout):
    from commands.dlq.settings import QueueSettings
    from commands.dlq.entries import Filters
    from commands.dlq.redis_list import RedisListQueue

    q = own_layout
    client = q.client
    entries = [dead_letter(i) for i in range(300)]
    kill(client, entries, q.dead)
    queue = RedisListQueue(QueueSettings(name="jobs", ready=q.ready, dead=q.dead), client)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=300, requested_by="t")
    restarted = []

    def progress(task, rate):
        if not restarted:
            q.node_of_queue().restart()   # by PID, while this holder is between two batches
            restarted.append(True)

    report = queue.run_requeue(task.id, owner="a", batch=10, lease_ttl=0.3, progress=progress,
                               should_stop=lambda: time.sleep(0.02) or False)

    assert restarted and report.outcome == "lost"           # it saw the new run_id and stopped
    assert everything(client, q.ready, q.dead) == Counter(entries)
    resumed = queue.run_requeue(task.id, owner="b", batch=50)
    assert resumed.outcome == "done" and list(reversed(client.lrange(q.ready, 0, -1))) == entries


# -- PostgreSQL stopped mid-trim (our own cluster) ---------------------------------------------

def test_trim_survives_its_postgresql_stopping_mid_trim(tmp_path, make_runtime, redis_client):
    import psycopg

    from commands.dlq.archive import TrimArchive
    from commands.dlq.redis_list import RedisListQueue

    pg = PostgresCluster().open()
    try:
        path = write_config(tmp_path / "app.yaml", pg.url)
        runtime = make_runtime(path)
        entries = [dead_letter(i) for i in range(120)]
        kill(redis_client, entries)
        queue = RedisListQueue(find_queue(runtime.settings, "jobs"), redis_client)
        archive = TrimArchive(runtime.state.pool, "opsbot", find_queue(runtime.settings, "jobs"))
        calls = {"n": 0}

        class StopsPostgres:
            def __getattr__(self, name):
                return getattr(archive, name)

            def __call__(self, *args):
                calls["n"] += 1
                if calls["n"] == 3:
                    pg.stop(signal.SIGQUIT)  # immediate shutdown by PID: every backend dies at once
                archive(*args)

        with pytest.raises(psycopg.OperationalError):
            queue.run_trim(keep=10, archive=StopsPostgres(), batch=20)
        assert redis_client.llen("jobs:dead") == 80 and not redis_client.exists("opsbot:dlq:lease:jobs")

        pg.start()
        again = make_runtime(path)      # a bot restarted once PostgreSQL is back
        preview = again.engine.handle("dlq trim --keep 10", Actor.local(), Where())
        assert "resume the interrupted trim" in preview.result.summary
        done = again.engine.confirm(preview.pending.id, Actor.local(), Where()).result
        assert done.status == "ok" and done.data["dropped"] == 110
        assert oldest_first(redis_client, "jobs:dead") == entries[110:]
        assert_exactly_once(redis_client, pg.url, Counter(entries), "jobs", "jobs:dead")
    finally:
        pg.close()


# -- killed while putting held entries back ------------------------------------------------------

def killed_on_second_call(script, why: str):
    """``script`` (a registered Lua script) that runs once, then dies as the process would."""
    calls = {"n": 0}

    def call(**kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise SystemExit(why)
        return script(**kw)

    return call


def test_requeue_killed_while_merging_held_entries_back_resumes_in_order(tmp_path, database_url, make_runtime,
                                                                        redis_client, monkeypatch):
    from commands.dlq import redis_list
    from commands.dlq.entries import Filters

    monkeypatch.setattr(redis_list, "MERGE_CHUNK", 300)
    entries = [dead_letter(i) for i in range(3000)]
    kill(redis_client, entries)
    runtime = make_runtime(write_config(tmp_path / "app.yaml", database_url))
    queue = redis_list.RedisListQueue(find_queue(runtime.settings, "jobs"), redis_client)
    task = queue.start_requeue(Filters(type="sync_crm"), limit=None, rate=None, matching=1000, requested_by="t")
    arrivals = [dead_letter(5000 + i) for i in range(700)]  # newer than the task: not taken, not reordered
    kill(redis_client, arrivals)
    queue._merge = killed_on_second_call(queue._merge, "killed between two merge chunks")
    with pytest.raises(SystemExit):
        queue.run_requeue(task.id, owner="a", batch=500)
    assert redis_client.llen(queue.held_key(task.id)) == 2300 and redis_client.llen("jobs:dead") == 400
    assert everything(redis_client, "jobs", "jobs:dead") == Counter(entries + arrivals)

    preview = runtime.engine.handle("dlq requeue", Actor.local(), Where())
    assert "resume the interrupted requeue" in preview.result.summary
    done = runtime.engine.confirm(preview.pending.id, Actor.local(), Where()).result
    crm = [e for e in entries if b'"sync_crm"' in e]
    assert done.status == "ok" and list(reversed(redis_client.lrange("jobs", 0, -1))) == crm
    assert oldest_first(redis_client, "jobs:dead") == [e for e in entries if e not in set(crm)] + arrivals
    assert not redis_client.exists(queue.held_key(task.id))


def test_requeue_killed_while_restoring_held_entries_resumes_in_order(tmp_path, database_url, make_runtime,
                                                                      redis_client):
    from commands.dlq.entries import Filters
    from commands.dlq.redis_list import RedisListQueue

    entries = [dead_letter(i) for i in range(3000)]
    kill(redis_client, entries)
    runtime = make_runtime(write_config(tmp_path / "app.yaml", database_url))
    queue = RedisListQueue(find_queue(runtime.settings, "jobs"), redis_client)
    task = queue.start_requeue(Filters(type="sync_crm"), limit=None, rate=None, matching=1000, requested_by="t")
    redis_client.hdel(queue.task_key, "held_order")  # a task an earlier version started: held oldest-first
    queue._restore = killed_on_second_call(queue._restore, "killed between two restore chunks")
    with pytest.raises(SystemExit):
        queue.run_requeue(task.id, owner="a", batch=500)
    assert 0 < redis_client.llen(queue.held_key(task.id)) < 2000
    assert everything(redis_client, "jobs", "jobs:dead") == Counter(entries)
    assert redis_client.hget("opsbot:dlq:task:jobs", "status") == b"running"

    preview = runtime.engine.handle("dlq requeue", Actor.local(), Where())
    assert "resume the interrupted requeue" in preview.result.summary
    done = runtime.engine.confirm(preview.pending.id, Actor.local(), Where()).result
    crm = [e for e in entries if b'"sync_crm"' in e]
    assert done.status == "ok" and list(reversed(redis_client.lrange("jobs", 0, -1))) == crm
    assert oldest_first(redis_client, "jobs:dead") == [e for e in entries if e not in set(crm)]
