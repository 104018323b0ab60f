"""RQ and BullMQ dead letters, with the real libraries: real workers fail real jobs, opsbot peeks and
requeues a filtered, limited subset through the guarded flow (preview, confirm), is SIGKILLed
mid-requeue and resumed, and the libraries' own workers then run exactly those jobs again, once."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import pytest
from bullmq import Queue as BullMQQueue
from rq import Queue
from rq.job import Job

from commands.dlq.bullmq_jobs import BullQueue
from commands.dlq.entries import Filters
from commands.dlq.rq_jobs import RqQueue
from commands.dlq.settings import QueueSettings
from tests.conftest import write_config
from tests.support import jobfuncs
from tests.support.dlq import opsbot
from tests.support.servers import RedisServer

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "RUN_MIGRATIONS": "true", "PYTHONPATH": str(REPO)}
SEND = "tests.support.jobfuncs.send_email"


def _config(tmp_path, database_url, url, queue_line):
    path = write_config(tmp_path / "app.yaml", database_url, redis_url=url)
    path.write_text(path.read_text().replace(
        '  - {name: jobs, redis: main, ready: jobs, dead: "jobs:dead"}', f"  - {queue_line}"))
    return path


def _run(path, text, *, yes=True, timeout=120):
    done = subprocess.run(opsbot(path, text, yes=yes), env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def rq_burst(url: str, queue: str = "mail") -> None:
    """A real RQ worker in burst mode: it runs what is queued, then exits."""
    done = subprocess.run([sys.executable, "-m", "rq.cli", "worker", "--burst", "-w", "rq.worker.SimpleWorker",
                           "--url", url, queue], env=ENV, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr


def bull_burst(url: str, queue: str = "pdf", prefix: str = "bull") -> None:
    """A real BullMQ worker (the bullmq package) run until its queue is drained."""
    done = subprocess.run([sys.executable, "-m", "tests.support.bullworker", url, queue, prefix], env=ENV,
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr


def running_requeue(path, text, client, at_least: int, pause: float = 0.005) -> subprocess.Popen:
    """``opsbot run --yes TEXT`` started, once its task has moved ``at_least`` jobs (it must still run)."""
    proc = subprocess.Popen(opsbot(path, text), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while int(client.hget("opsbot:dlq:task:mail" if "mail" in text else "opsbot:dlq:task:pdf", "moved") or 0) \
            < at_least:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(pause)
    return proc


def _kill_mid_requeue(path, text, client, at_least: int) -> None:
    proc = running_requeue(path, text, client, at_least)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


# -- RQ ------------------------------------------------------------------------------------------

def _rq_failures(client, url, count=40):
    client.set(jobfuncs.BROKEN, 1)
    queue = Queue("mail", connection=client)
    for index in range(count):
        if index % 4 == 3:
            queue.enqueue(jobfuncs.render_pdf, f"invoice-{index}")
        else:
            queue.enqueue(jobfuncs.send_email, f"user{index}@example.com")
    rq_burst(url)
    client.delete(jobfuncs.BROKEN)
    assert client.zcard("rq:failed:mail") == count and client.llen("rq:queue:mail") == 0


def test_rq_peek_requeue_killed_resumed_and_rqs_worker_runs_exactly_those(tmp_path, database_url, own_redis):
    client = own_redis.client()
    _rq_failures(client, own_redis.url)
    path = _config(tmp_path, database_url, own_redis.url,
                   "{name: mail, backend: rq, redis: main, queue: mail, batch: 3, lease_ttl: 1s}")

    status = _run(path, "dlq status mail")
    assert "40" in status
    peek = _run(path, f"dlq peek mail --type {SEND} --error smtp --limit 50")
    assert "30 of 40 dead letters in `rq:failed:mail`" in peek
    assert "ConnectionError: SMTP timeout after 30s" in peek and "render_pdf" not in peek.split("Sample")[-1]
    older = _run(path, "dlq peek mail --older-than 1h")
    assert "0 of 40 dead letters" in older

    preview = subprocess.run(opsbot(path, f"dlq requeue mail --type {SEND} --limit 12 --rate 8", yes=False),
                             env=ENV, capture_output=True, text=True, timeout=60, input="no\n")
    assert "requeue 12 of 30" in preview.stdout, preview.stdout + preview.stderr
    assert client.llen("rq:queue:mail") == 0 and client.zcard("rq:failed:mail") == 40  # declined: nothing moved

    before = set(client.zrange("rq:failed:mail", 0, -1))
    text = f"dlq requeue mail --type {SEND} --limit 12 --rate 8"
    _kill_mid_requeue(path, text, client, at_least=3)
    queued = client.lrange("rq:queue:mail", 0, -1)
    failed = set(client.zrange("rq:failed:mail", 0, -1))
    assert 3 <= len(queued) < 12 and len(set(queued)) == len(queued)
    assert set(queued) | failed == before and not set(queued) & failed        # each job in one place
    time.sleep(1.1)                                                            # the dead bot's lease runs out

    resumed = _run(path, text)
    assert "Requeued" in resumed
    queued = client.lrange("rq:queue:mail", 0, -1)
    assert len(queued) == 12 and len(set(queued)) == 12
    assert set(queued) | set(client.zrange("rq:failed:mail", 0, -1)) == before
    for job_id in queued:
        assert client.hget(f"rq:job:{job_id.decode()}", "description").decode().startswith(SEND)
        assert client.hget(f"rq:job:{job_id.decode()}", "status") == b"queued"
    assert client.hget("opsbot:dlq:task:mail", "status") == b"done"

    rq_burst(own_redis.url)                                                    # RQ's own worker
    ran = client.lrange(jobfuncs.RAN, 0, -1)
    assert Counter(ran) == Counter(queued) and len(ran) == 12                  # exactly those, each once
    assert client.zcard("rq:failed:mail") == 28 and client.llen("rq:queue:mail") == 0
    assert "Nothing to requeue" in _run(path, f"dlq requeue mail --id {ran[0].decode()}")


def test_rq_requeue_never_unpickles_and_keeps_the_job_bytes(own_redis, tmp_path):
    """A job whose data and meta would run code when unpickled: opsbot reads, filters and requeues it
    through RQ's own requeue, and nothing is ever loaded; the bytes RQ's worker will load are unchanged."""
    client = own_redis.client()
    _rq_failures(client, own_redis.url, count=4)
    marker = tmp_path / "unpickled"
    bomb = pickle.dumps(Bomb(str(marker)))
    target = client.zrange("rq:failed:mail", 0, 0)[0].decode()
    client.hset(Job.key_for(target), mapping={"data": zlib.compress(bomb), "meta": bomb})
    queue = RqQueue(QueueSettings(name="mail", backend="rq", queue="mail"), client)

    entry = next(e for e in queue.entries(Filters(ids=(target,))))
    assert entry.type in (SEND, "tests.support.jobfuncs.render_pdf") and entry.error
    task = queue.start_requeue(Filters(ids=(target,)), limit=None, rate=None, matching=1, requested_by="t")
    assert queue.run_requeue(task.id, owner="t").outcome == "done"

    assert not marker.exists()
    assert client.lrange("rq:queue:mail", 0, -1) == [target.encode()]
    assert zlib.decompress(client.hget(Job.key_for(target), "data")) == bomb
    assert client.hget(Job.key_for(target), "meta") == bomb


class Bomb:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_rq_crash_inside_rqs_own_requeue_is_recovered(own_redis):
    """RQ's requeue removes the id from the failed set, then enqueues: a crash between the two leaves the
    job in neither. That is the state made here (journaled, removed, never enqueued); resuming finds it,
    puts it back and requeues it, once."""
    client = own_redis.client()
    _rq_failures(client, own_redis.url, count=6)
    queue = RqQueue(QueueSettings(name="mail", backend="rq", queue="mail"), client)
    task = queue.start_requeue(Filters(), limit=3, rate=None, matching=6, requested_by="t")
    pending = [json.loads(raw) for raw in client.lrange(queue.pending_key, 0, -1)]
    ids = [job_id for job_id, _ in pending]
    client.hset(queue.journal_key, mapping={"\x00n": 3, **{job_id: "1" for job_id in ids}})
    queue.registry.requeue(ids[0])          # fully requeued before the crash
    client.zrem("rq:failed:mail", ids[1])   # half-way through RQ's requeue when the crash came
    # ids[2]: journaled, never touched

    report = queue.run_requeue(task.id, owner="t")

    assert report.outcome == "done" and report.task.moved == 3
    assert sorted(client.lrange("rq:queue:mail", 0, -1)) == sorted(i.encode() for i in ids)
    assert client.zcard("rq:failed:mail") == 3
    rq_burst(own_redis.url)
    assert sorted(client.lrange(jobfuncs.RAN, 0, -1)) == sorted(i.encode() for i in ids)


def test_rq_job_that_failed_again_after_the_preview_is_not_requeued_twice(own_redis):
    client = own_redis.client()
    _rq_failures(client, own_redis.url, count=3)
    queue = RqQueue(QueueSettings(name="mail", backend="rq", queue="mail"), client)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=3, requested_by="t")
    first = json.loads(client.lindex(queue.pending_key, 0))[0]
    client.set(jobfuncs.BROKEN, 1)
    queue.registry.requeue(first)            # someone else requeued it; it failed again: a new failure
    rq_burst(own_redis.url)
    assert client.zscore("rq:failed:mail", first) is not None

    report = queue.run_requeue(task.id, owner="t")

    assert report.task.moved == 2 and client.llen("rq:queue:mail") == 2
    assert first.encode() not in client.lrange("rq:queue:mail", 0, -1)


def test_rq_and_bullmq_refuse_trim_saying_why(tmp_path, database_url, own_redis):
    path = _config(tmp_path, database_url, own_redis.url, "{name: mail, backend: rq, redis: main, queue: mail}")
    out = subprocess.run(opsbot(path, "dlq trim mail --keep 1"), env=ENV, capture_output=True, text=True,
                         timeout=60)
    assert "failure_ttl" in out.stdout + out.stderr
    path = _config(tmp_path, database_url, own_redis.url, "{name: pdf, backend: bullmq, redis: main, queue: pdf}")
    out = subprocess.run(opsbot(path, "dlq trim pdf --keep 1"), env=ENV, capture_output=True, text=True,
                         timeout=60)
    assert "removeOnFail" in out.stdout + out.stderr


def test_a_wrong_key_type_is_reported_not_misread(own_redis):
    client = own_redis.client()
    client.rpush("rq:failed:mail", "x")
    queue = RqQueue(QueueSettings(name="mail", backend="rq", queue="mail"), client)
    with pytest.raises(Exception, match="not a zset"):
        queue.depth()


# -- BullMQ --------------------------------------------------------------------------------------

def _bull_failures(client, url, count=30, prefix="bull"):
    client.set(jobfuncs.BROKEN, 1)

    async def add():
        queue = BullMQQueue("pdf", {"connection": url, "prefix": prefix})
        for index in range(count):
            await queue.add("render" if index % 3 else "<!channel> *email*", {"to": f"user{index}@example.com"})
        await queue.close()

    asyncio.run(add())
    bull_burst(url, prefix=prefix)
    client.delete(jobfuncs.BROKEN)
    assert client.zcard(f"{prefix}:pdf:failed") == count


def test_bullmq_peek_requeue_killed_resumed_and_bullmqs_worker_runs_exactly_those(tmp_path, database_url,
                                                                                   own_redis):
    client = own_redis.client()
    _bull_failures(client, own_redis.url, prefix="acme")
    path = _config(tmp_path, database_url, own_redis.url,
                   "{name: pdf, backend: bullmq, redis: main, queue: pdf, prefix: acme, batch: 2, lease_ttl: 1s}")

    peek = _run(path, "dlq peek pdf --type render --error 503 --limit 3")
    assert "20 of 30" in peek and "render: upstream 503" in peek
    marked = _run(path, "dlq peek pdf --error email")
    assert "10 of 30" in marked and "<!channel> *email*" in marked      # a job name is shown as it is
    one = _run(path, "dlq peek pdf --id 7")
    assert "1 of 30" in one

    before = set(client.zrange("acme:pdf:failed", 0, -1))
    text = "dlq requeue pdf --type render --limit 9 --rate 6"
    _kill_mid_requeue(path, text, client, at_least=2)
    waiting = client.lrange("acme:pdf:wait", 0, -1)
    assert 2 <= len(waiting) < 9 and len(set(waiting)) == len(waiting)
    assert set(waiting) | set(client.zrange("acme:pdf:failed", 0, -1)) == before
    time.sleep(1.1)

    assert "Requeued" in _run(path, text)
    waiting = client.lrange("acme:pdf:wait", 0, -1)
    assert len(waiting) == 9 and len(set(waiting)) == 9
    assert all(client.hget(f"acme:pdf:{job_id.decode()}", "name") == b"render" for job_id in waiting)
    assert all(client.hget(f"acme:pdf:{job_id.decode()}", "failedReason") is None for job_id in waiting)

    bull_burst(own_redis.url, prefix="acme")                            # BullMQ's own worker
    ran = client.lrange(jobfuncs.RAN, 0, -1)
    assert Counter(ran) == Counter(waiting) and len(ran) == 9
    assert client.zcard("acme:pdf:failed") == 21 and client.zcard("acme:pdf:completed") == 9


def test_bullmq_journaled_batch_is_finished_once_after_a_crash(own_redis):
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=6)                     # four 'render' jobs
    queue = BullQueue(QueueSettings(name="pdf", backend="bullmq", queue="pdf"), client)
    task = queue.start_requeue(Filters(type="render"), limit=3, rate=None, matching=4, requested_by="t")
    ids = [json.loads(raw)[0] for raw in client.lrange(queue.pending_key, 0, -1)]
    client.hset(queue.journal_key, mapping={"\x00n": 3, **{job_id: "1" for job_id in ids}})
    assert queue._requeue(ids[:2]) == set(ids[:2])  # BullMQ moved two, then the bot died before counting

    report = queue.run_requeue(task.id, owner="t")

    assert report.outcome == "done" and report.task.moved == 3
    assert sorted(client.lrange("bull:pdf:wait", 0, -1)) == sorted(i.encode() for i in ids)
    bull_burst(own_redis.url)
    assert sorted(client.lrange(jobfuncs.RAN, 0, -1)) == sorted(i.encode() for i in ids)


# -- attacks: two replicas, cancel after a crash, Redis restarted mid-requeue ---------------------

def test_two_replicas_never_drive_one_rq_requeue_at_once(own_redis):
    from commands.dlq.lease import LeaseBusy

    client = own_redis.client()
    _rq_failures(client, own_redis.url, count=4)
    queue = RqQueue(QueueSettings(name="mail", backend="rq", queue="mail"), client)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=4, requested_by="t")
    token = queue.lease.take("requeue", task.id, owner="replica-a", ttl=30)
    with pytest.raises(LeaseBusy, match="replica-a"):
        queue.run_requeue(task.id, owner="replica-b")
    assert client.llen("rq:queue:mail") == 0
    queue.lease.release(token)
    assert queue.run_requeue(task.id, owner="replica-b").task.moved == 4


def test_cancelling_an_interrupted_bullmq_requeue_finishes_its_journaled_batch_only(own_redis):
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=6)
    queue = BullQueue(QueueSettings(name="pdf", backend="bullmq", queue="pdf"), client)
    queue.start_requeue(Filters(type="render"), limit=None, rate=None, matching=4, requested_by="t")
    ids = [json.loads(raw)[0] for raw in client.lrange(queue.pending_key, 0, 1)]
    client.hset(queue.journal_key, mapping={"\x00n": 2, **{job_id: "1" for job_id in ids}})
    queue._requeue(ids[:1])                      # the bot died with one of its batch moved

    task = queue.cancel()

    assert task.status == "cancelled" and task.moved == 2
    assert sorted(client.lrange("bull:pdf:wait", 0, -1)) == sorted(i.encode() for i in ids)
    assert client.zcard("bull:pdf:failed") == 4 and not client.exists(queue.pending_key, queue.journal_key)


def test_rq_requeue_resumes_after_redis_restarts_under_it(tmp_path):
    server = RedisServer(persist=True).start()
    try:
        client = server.client()
        _rq_failures(client, server.url, count=30)
        queue = RqQueue(QueueSettings(name="mail", backend="rq", queue="mail"), client)
        task = queue.start_requeue(Filters(), limit=None, rate=None, matching=30, requested_by="t")
        restarted = []

        def progress(task, rate):
            if not restarted:
                server.restart()                  # by PID, between two batches
                restarted.append(True)

        first = queue.run_requeue(task.id, owner="a", batch=5, lease_ttl=0.9, progress=progress,
                                  should_stop=lambda: time.sleep(0.2) or False)
        assert restarted
        if first.outcome != "done":          # it saw the restart at a heartbeat and stopped: resume
            assert first.outcome == "lost"
            assert client.llen("rq:queue:mail") + client.zcard("rq:failed:mail") == 30
            time.sleep(1)
            report = queue.run_requeue(task.id, owner="b", batch=5)
            assert report.outcome == "done"
        assert queue.task().moved == 30 and client.zcard("rq:failed:mail") == 0
        queued = client.lrange("rq:queue:mail", 0, -1)
        assert len(queued) == 30 and len(set(queued)) == 30
    finally:
        server.close()


# -- BullMQ, unfiltered: BullMQ's own moveJobsToWait (Queue.retryJobs), a MULTI/EXEC per batch ------

def _bull_state(client, prefix="bull"):
    """What BullMQ and its workers see of queue pdf: the lists and sets in order, each job's hash without
    its timestamps, and the events stream's fields (without stream ids)."""
    base = f"{prefix}:pdf"
    jobs = {}
    for key in client.scan_iter(f"{base}:*"):
        suffix = key.decode()[len(base) + 1:]
        if suffix.isdigit():
            jobs[suffix] = {k: v for k, v in client.hgetall(key).items() if k not in (b"timestamp",)}
    events = [fields for _, fields in client.xrange(f"{base}:events")]
    return {"wait": client.lrange(f"{base}:wait", 0, -1), "failed": client.zrange(f"{base}:failed", 0, -1),
            "prioritized": client.zrange(f"{base}:prioritized", 0, -1), "marker": client.zrange(f"{base}:marker", 0, -1),
            "jobs": jobs, "events": events}


def _bull_mixed_failures(client, url):
    """Failed jobs as BullMQ makes them, some with a priority and one LIFO (what retryJobs ignores)."""
    client.set(jobfuncs.BROKEN, 1)

    async def add():
        queue = BullMQQueue("pdf", {"connection": url})
        for index in range(12):
            opts = {"priority": 3} if index in (2, 7) else {"lifo": True} if index == 5 else {}
            await queue.add("render", {"to": f"user{index}@example.com"}, opts)
        await queue.close()

    asyncio.run(add())
    bull_burst(url)
    client.delete(jobfuncs.BROKEN)
    assert client.zcard("bull:pdf:failed") == 12


def test_bullmq_unfiltered_requeue_leaves_exactly_what_queue_retryjobs_leaves(own_redis):
    """The same failures requeued twice from one snapshot: once by opsbot (unfiltered, in batches of 5),
    once by BullMQ's own Queue.retryJobs. Everything BullMQ's workers read ends up identical: wait list
    order, failed set, job hashes (attempts kept, failedReason/finishedOn/processedOn gone, priorities
    ignored as retryJobs ignores them), the marker and the 'waiting' events."""
    client = own_redis.client()
    _bull_mixed_failures(client, own_redis.url)
    snapshot = {key: client.dump(key) for key in client.scan_iter("bull:*")}

    queue = BullQueue(QueueSettings(name="pdf", backend="bullmq", queue="pdf"), client)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=12, requested_by="t")
    report = queue.run_requeue(task.id, owner="t", batch=5)
    assert report.outcome == "done" and report.task.moved == 12
    assert _bull_clean(client, queue) and not client.exists(queue.pending_key, queue.journal_key)
    ours = _bull_state(client)

    for key in client.scan_iter("bull:*"):
        client.delete(key)
    for key, dumped in snapshot.items():
        client.restore(key, 0, dumped)

    async def retry():
        library = BullMQQueue("pdf", {"connection": own_redis.url})
        await library.retryJobs({"count": 5})
        await library.close()

    asyncio.run(retry())
    assert ours == _bull_state(client)
    assert len(ours["wait"]) == 12 and not ours["failed"] and not ours["prioritized"]
    assert all(job[b"atm"] == b"1" and b"failedReason" not in job for job in ours["jobs"].values())

    bull_burst(own_redis.url)                                           # BullMQ's worker runs each once
    assert Counter(client.lrange(jobfuncs.RAN, 0, -1)) == Counter(ours["wait"])


def test_bullmq_unfiltered_limited_requeue_killed_resumed_runs_exactly_those(tmp_path, database_url, own_redis):
    client = own_redis.client()
    _bull_failures(client, own_redis.url)
    path = _config(tmp_path, database_url, own_redis.url,
                   "{name: pdf, backend: bullmq, redis: main, queue: pdf, batch: 2, lease_ttl: 1s}")
    before = client.zrange("bull:pdf:failed", 0, -1)
    oldest = set(before[:11])

    text = "dlq requeue pdf --limit 11 --rate 6"
    _kill_mid_requeue(path, text, client, at_least=2)
    waiting = client.lrange("bull:pdf:wait", 0, -1)
    assert 2 <= len(waiting) < 11 and len(set(waiting)) == len(waiting) and set(waiting) <= oldest
    assert set(waiting) | set(client.zrange("bull:pdf:failed", 0, -1)) == set(before)   # each in one place
    assert not client.exists("opsbot:dlq:batch:pdf", "opsbot:dlq:lent:pdf")          # never half-moved
    assert int(client.hget("opsbot:dlq:task:pdf", "moved")) == len(waiting)
    time.sleep(1.1)

    assert "Requeued" in _run(path, text)
    waiting = client.lrange("bull:pdf:wait", 0, -1)
    assert len(waiting) == 11 and set(waiting) == oldest
    assert client.hget("opsbot:dlq:task:pdf", "status") == b"done"

    bull_burst(own_redis.url)                                                         # BullMQ's own worker
    ran = client.lrange(jobfuncs.RAN, 0, -1)
    assert Counter(ran) == Counter(waiting) and len(ran) == 11
    assert client.zcard("bull:pdf:failed") == 19 and client.zcard("bull:pdf:completed") == 11


def test_bullmq_unfiltered_requeue_skips_a_job_that_failed_again_since_the_selection(own_redis):
    """Someone retried one of the selected jobs with BullMQ's own Job.retry and it failed again (a new
    finish time, its score): it is not the failure that was selected, and stays failed."""
    from bullmq import Job as BullJob

    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=5)
    queue = BullQueue(QueueSettings(name="pdf", backend="bullmq", queue="pdf"), client)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=5, requested_by="t")
    ids = [raw.decode() for raw in client.zrange("bull:pdf:failed", 0, -1)]

    async def retry_one():
        library = BullMQQueue("pdf", {"connection": own_redis.url})
        job = await BullJob.fromId(library, ids[0])
        await job.retry("failed")
        await library.close()

    asyncio.run(retry_one())
    client.set(jobfuncs.BROKEN, 1)
    bull_burst(own_redis.url)                          # it fails again
    client.delete(jobfuncs.BROKEN)
    assert client.zscore("bull:pdf:failed", ids[0]) is not None and client.hget(f"bull:pdf:{ids[0]}", "atm") == b"2"

    report = queue.run_requeue(task.id, owner="t")

    assert report.task.moved == 4 and report.task.scanned == 5
    assert sorted(client.lrange("bull:pdf:wait", 0, -1)) == sorted(i.encode() for i in ids[1:])
    assert client.zrange("bull:pdf:failed", 0, -1) == [ids[0].encode()]


# -- an unfiltered batch: LEND, moveJobsToWait on the failed set, SETTLE, in one MULTI/EXEC -------------

def _recording_batches(queue):
    """The answers of the queue's batches (0 more, 1 nothing left, 2 not ours), batch by batch."""
    answers = []
    real = queue._batch

    def batch(token, step):
        answers.append(real(token, step))
        return answers[-1]

    queue._batch = batch
    return answers


def _bull_clean(client, queue):
    """Neither of the keys that exist only inside a batch's MULTI/EXEC is left."""
    return not client.exists(queue.batch_key, queue.lent_key)


def test_bullmq_unfiltered_batches_move_straight_from_the_failed_set(own_redis):
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=12)
    before = client.zrange("bull:pdf:failed", 0, -1)
    queue = BullQueue(QueueSettings(name="pdf", backend="bullmq", queue="pdf"), client)
    answers = _recording_batches(queue)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=12, requested_by="t")
    assert not client.exists(queue.pending_key)                        # nothing copied: the head is enough

    report = queue.run_requeue(task.id, owner="t", batch=5)

    assert answers == [0, 0, 1]                                        # three batches
    assert report.outcome == "done" and report.task.moved == report.task.scanned == report.task.total == 12
    assert client.lrange("bull:pdf:wait", 0, -1) == list(reversed(before)) and _bull_clean(client, queue)
    bull_burst(own_redis.url)
    assert Counter(client.lrange(jobfuncs.RAN, 0, -1)) == Counter(before)


def test_bullmq_jobs_failing_after_the_requeue_started_are_not_moved(own_redis):
    """The requeue moves the failures there were when it started (its head: the last one's finish time):
    jobs that fail while it runs, with ids JSON escapes among them, finish later and stay failed."""
    client = own_redis.client()
    client.set(jobfuncs.BROKEN, 1)

    async def add(names):
        library = BullMQQueue("pdf", {"connection": own_redis.url})
        for job_id in names:
            await library.add("render", {"to": f"{job_id}@example.com"}, {"jobId": job_id})
        await library.close()

    asyncio.run(add(["plain-0", "pdf/1", 'pdf"2', "plain-3", "plain-4", "plain-5", "plain-6", "plain-7"]))
    bull_burst(own_redis.url)
    selected = client.zrange("bull:pdf:failed", 0, 6)                   # the oldest 7 of 8
    newest = client.zrange("bull:pdf:failed", 7, 7)[0]
    queue = BullQueue(QueueSettings(name="pdf", backend="bullmq", queue="pdf"), client)
    task = queue.start_requeue(Filters(), limit=7, rate=None, matching=7, requested_by="t")
    queue.run_requeue(task.id, owner="t", batch=2, should_stop=lambda: client.llen("bull:pdf:wait") >= 2)
    asyncio.run(add(["late/8", 'late"9']))
    bull_burst(own_redis.url)                                           # runs the two waiting (they fail again) and the new
    client.delete(jobfuncs.BROKEN)
    report = queue.run_requeue(task.id, owner="t", batch=2)

    assert report.outcome == "done" and report.task.moved == 7 and report.task.scanned == 7
    waiting = client.lrange("bull:pdf:wait", 0, -1)
    assert sorted(waiting) == sorted(selected[2:]) and _bull_clean(client, queue)
    assert set(client.zrange("bull:pdf:failed", 0, -1)) == {*selected[:2], newest, b"late/8", b'late"9'}


@pytest.mark.parametrize("then", ["resume", "cancel"])
def test_bullmq_batch_whose_move_is_refused_leaves_every_job_failed(own_redis, then):
    """moveJobsToWait refused inside the batch's MULTI/EXEC (here: BullMQ's meta key is not a hash, as it
    refuses before any write): the failed set is whole under its own name with its scores, nothing counted.
    Resumed once BullMQ's keys are right, each job moves once; cancelled, every job stays failed."""
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=6)
    before = client.zrange("bull:pdf:failed", 0, -1, withscores=True)
    queue = BullQueue(QueueSettings(name="pdf", backend="bullmq", queue="pdf"), client)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=6, requested_by="t")
    client.rename("bull:pdf:meta", "test:meta")
    client.set("bull:pdf:meta", "not a hash")

    with pytest.raises(Exception, match="WRONGTYPE"):
        queue.run_requeue(task.id, owner="t", batch=4)
    assert client.zrange("bull:pdf:failed", 0, -1, withscores=True) == before and _bull_clean(client, queue)
    assert int(client.hget(queue.task_key, "moved")) == 0 and client.llen("bull:pdf:wait") == 0

    client.delete("bull:pdf:meta")
    client.rename("test:meta", "bull:pdf:meta")
    if then == "resume":
        report = queue.run_requeue(task.id, owner="t", batch=4)
        assert report.outcome == "done" and report.task.moved == 6
        assert client.lrange("bull:pdf:wait", 0, -1) == [job_id for job_id, _ in reversed(before)]
    else:
        assert queue.cancel().status == "cancelled" and queue.task().moved == 0
        assert client.zrange("bull:pdf:failed", 0, -1, withscores=True) == before
    assert _bull_clean(client, queue)
    bull_burst(own_redis.url)
    ran = client.lrange(jobfuncs.RAN, 0, -1)
    assert len(ran) == len(set(ran)) == client.zcard("bull:pdf:completed") == (6 if then == "resume" else 0)


def test_bullmq_failed_set_left_under_the_batch_key_is_put_back_first(own_redis):
    """A failed set split between its own key and the batch key (what a MULTI/EXEC that did not run its
    last script would leave; Redis never does) is whole again before anything moves, and nothing is lost."""
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=6)
    before = client.zrange("bull:pdf:failed", 0, -1, withscores=True)
    queue = BullQueue(QueueSettings(name="pdf", backend="bullmq", queue="pdf"), client)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=6, requested_by="t")
    client.zadd(queue.batch_key, dict(before[:3]))
    client.zrem("bull:pdf:failed", *[job_id for job_id, _ in before[:3]])

    report = queue.run_requeue(task.id, owner="t", batch=4)

    assert report.outcome == "done" and report.task.moved == 6
    assert client.lrange("bull:pdf:wait", 0, -1) == [job_id for job_id, _ in reversed(before)]
    assert _bull_clean(client, queue) and client.zcard("bull:pdf:failed") == 0


def test_bullmq_unfiltered_requeue_killed_between_batches_resumes_exactly(tmp_path, database_url, own_redis):
    client = own_redis.client()
    _bull_failures(client, own_redis.url)
    path = _config(tmp_path, database_url, own_redis.url,
                   "{name: pdf, backend: bullmq, redis: main, queue: pdf, batch: 1, lease_ttl: 1s}")
    before = client.zrange("bull:pdf:failed", 0, -1)

    _kill_mid_requeue(path, "dlq requeue pdf --rate 10", client, at_least=3)
    waiting = client.lrange("bull:pdf:wait", 0, -1)
    assert 3 <= len(waiting) < 30 and waiting == list(reversed(before[:len(waiting)]))   # oldest first, once each
    assert set(waiting) | set(client.zrange("bull:pdf:failed", 0, -1)) == set(before)
    assert int(client.hget("opsbot:dlq:task:pdf", "moved")) == len(waiting)
    assert not client.exists("opsbot:dlq:batch:pdf", "opsbot:dlq:lent:pdf")
    time.sleep(1.1)

    assert "Requeued" in _run(path, "dlq requeue pdf --rate 10")
    assert client.lrange("bull:pdf:wait", 0, -1) == list(reversed(before))
    bull_burst(own_redis.url)
    ran = client.lrange(jobfuncs.RAN, 0, -1)
    assert Counter(ran) == Counter(before) and client.zcard("bull:pdf:completed") == 30
