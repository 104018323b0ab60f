"""Attacks on the BullMQ unfiltered requeue (each batch LEND, moveJobsToWait on the lent failed set, SETTLE, in
one MULTI/EXEC), with real BullMQ jobs, a real BullMQ worker and a real redis-server. The guarantee under attack:
each selected job (the oldest failures up to the task's head) is requeued exactly once (waiting, then run once
by BullMQ's worker) or left failed; nothing else moves; no job is left under opsbot's batch key; the task's
counters are true; the task finishes or resumes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from bullmq import Job as BullJob
from bullmq import Queue as BullMQQueue

from commands.dlq.bullmq_jobs import BullQueue
from commands.dlq.entries import Filters
from commands.dlq.lease import LeaseBusy
from commands.dlq.settings import QueueSettings
from tests.support import jobfuncs
from tests.support.servers import RedisServer
from tests.support.dlq import opsbot
from tests.test_dlq_jobsystems import (ENV, REPO, _bull_clean, _config, _bull_failures, _recording_batches, bull_burst,
                                      running_requeue)

FAILED = "bull:pdf:failed"


def _queue(client):
    return BullQueue(QueueSettings(name="pdf", backend="bullmq", queue="pdf"), client)


def _waiting_events(client):
    """How many times each job was moved to wait from the failed set (BullMQ's 'waiting' events)."""
    return Counter(fields[b"jobId"] for _, fields in client.xrange("bull:pdf:events")
                   if fields.get(b"event") == b"waiting" and fields.get(b"prev") == b"failed")


def _run(queue, task, batch, seconds=30, **kw):
    """run_requeue, stopped (outcome 'interrupted') if it has not finished within ``seconds``: a loop that
    never ends fails the test instead of hanging it."""
    deadline = time.monotonic() + seconds
    return queue.run_requeue(task.id, owner="t", batch=batch, should_stop=lambda: time.monotonic() > deadline, **kw)


def _custom_failures(client, url, ids):
    client.set(jobfuncs.BROKEN, 1)

    async def add():
        library = BullMQQueue("pdf", {"connection": url})
        for index, job_id in enumerate(ids):
            await library.add("render", {"to": f"user{index}@example.com"}, {"jobId": job_id})
        await library.close()

    asyncio.run(add())
    bull_burst(url)
    client.delete(jobfuncs.BROKEN)
    assert client.zcard(FAILED) == len(ids)


def _ran_once(client, url, expected):
    bull_burst(url)
    ran = client.lrange(jobfuncs.RAN, 0, -1)
    assert Counter(ran) == Counter(expected) and len(ran) == len(set(ran))


AWKWARD = ['a","b', 'x"]["y', "back\\slash", "ünïcødé-ジョブ", "007", "1e3", "-5", "0x1F", "tab\there",
           "L" * 3000, "semi;colon:and]bracket[", "sp ace", "emoji-😀", "nul-less\x7fdel"]


def test_awkward_job_ids_are_each_requeued_once(own_redis):
    client = own_redis.client()
    _custom_failures(client, own_redis.url, AWKWARD)
    before = client.zrange(FAILED, 0, -1)
    queue = _queue(client)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=len(before), requested_by="t")
    report = _run(queue, task, batch=3)
    assert report.outcome == "done" and report.task.moved == report.task.scanned == len(before)
    assert client.lrange("bull:pdf:wait", 0, -1) == list(reversed(before)) and _bull_clean(client, queue)
    assert set(_waiting_events(client).values()) == {1} and len(_waiting_events(client)) == len(before)
    _ran_once(client, own_redis.url, before)


def test_equal_scores_move_in_the_failed_sets_order(own_redis):
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=10)
    client.zadd(FAILED, {job_id: 1700000000000 for job_id in client.zrange(FAILED, 0, -1)})  # ten-way tie
    before = client.zrange(FAILED, 0, -1)
    queue = _queue(client)
    answers = _recording_batches(queue)
    task = queue.start_requeue(Filters(), limit=7, rate=None, matching=7, requested_by="t")
    report = _run(queue, task, batch=3)
    assert answers == [0, 0, 1] and report.task.moved == 7
    assert client.lrange("bull:pdf:wait", 0, -1) == list(reversed(before[:7]))
    assert client.zrange(FAILED, 0, -1) == before[7:] and _bull_clean(client, queue)


@pytest.mark.parametrize("scores", [[0.1, 1 / 3, 1e21, 1e21 + 2 ** 20, 2.5e-300, 3.25], [-5, -1.5, 0, 7], [float("inf"), 1, 2, 3],
                                    [float("-inf"), 1, 2, float("inf")]], ids=["huge-fractional", "negative",
                                                                                   "inf", "both-infs"])
def test_odd_scores_are_each_requeued_once_or_left_failed_as_retryjobs_leaves_them(own_redis, scores):
    """Scores BullMQ would never write but a failed set can hold: moveJobsToWait only takes scores 0..max
    double, so, as with Queue.retryJobs, a job outside that range stays failed; every other one moves once,
    oldest first; the task ends (no loop), and nothing is stranded outside the failed set and wait."""
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=len(scores))
    client.zadd(FAILED, dict(zip(client.zrange(FAILED, 0, -1), scores)))
    before = client.zrange(FAILED, 0, -1, withscores=True)
    takeable = [job_id for job_id, score in before if 0 <= score < float("inf")]
    queue = _queue(client)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=len(before), requested_by="t")
    assert task.total == len(takeable)
    report = _run(queue, task, batch=2, seconds=15)
    assert report.outcome == "done" and _bull_clean(client, queue)
    assert client.lrange("bull:pdf:wait", 0, -1) == list(reversed(takeable))
    assert client.zrange(FAILED, 0, -1, withscores=True) == [(job_id, score) for job_id, score in before
                                                                if job_id not in takeable]
    assert report.task.moved == report.task.scanned == len(takeable)
    _ran_once(client, own_redis.url, takeable)


def test_jobs_removed_or_retried_by_bullmq_after_the_selection_are_not_moved(own_redis):
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=9)
    ids = [raw.decode() for raw in client.zrange(FAILED, 0, -1)]
    queue = _queue(client)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=9, requested_by="t")

    async def meddle():
        library = BullMQQueue("pdf", {"connection": own_redis.url})
        await library.remove(ids[0])                                    # gone
        job = await BullJob.fromId(library, ids[4])
        await job.retry("failed")                                       # retried by BullMQ itself
        await library.close()

    asyncio.run(meddle())
    bull_burst(own_redis.url)                                           # ... and it ran (completed)
    assert client.lrange(jobfuncs.RAN, 0, -1) == [ids[4].encode()]
    report = _run(queue, task, batch=4)
    assert report.outcome == "done" and report.task.moved == 7 and report.task.scanned == 9
    expected = [job_id.encode() for job_id in ids if job_id not in (ids[0], ids[4])]
    assert sorted(client.lrange("bull:pdf:wait", 0, -1)) == sorted(expected)
    assert client.zcard(FAILED) == 0 and _bull_clean(client, queue)
    client.delete(jobfuncs.RAN)
    _ran_once(client, own_redis.url, expected)


def test_a_paused_queue_gets_its_jobs_waiting_and_runs_them_once_resumed(own_redis):
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=6)
    before = client.zrange(FAILED, 0, -1)

    async def pause(resume):
        library = BullMQQueue("pdf", {"connection": own_redis.url})
        await (library.resume() if resume else library.pause())
        await library.close()

    asyncio.run(pause(False))
    queue = _queue(client)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=6, requested_by="t")
    report = _run(queue, task, batch=4)
    assert report.outcome == "done" and report.task.moved == 6 and _bull_clean(client, queue)
    assert sorted(client.lrange("bull:pdf:wait", 0, -1)) == sorted(before)
    assert not client.zrange("bull:pdf:marker", 0, -1)                   # paused: no marker, as retryJobs does
    asyncio.run(pause(True))
    _ran_once(client, own_redis.url, before)


@pytest.mark.parametrize("failed_too", [True, False])
def test_a_batch_key_left_behind_is_given_back_without_changing_a_score(own_redis, failed_too):
    """The batch key holds a copy of jobs that are also in the failed set (or the failed set is gone): the
    failed set's own scores (the fingerprints) are kept, never summed, and every job still moves once."""
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=5)
    before = client.zrange(FAILED, 0, -1, withscores=True)
    queue = _queue(client)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=5, requested_by="t")
    client.zadd(queue.batch_key, dict(before[:3]))
    if not failed_too:
        client.zrem(FAILED, *[job_id for job_id, _ in before[:3]])
    report = _run(queue, task, batch=2)
    assert report.outcome == "done" and report.task.moved == 5 and _bull_clean(client, queue)
    assert client.lrange("bull:pdf:wait", 0, -1) == [job_id for job_id, _ in reversed(before)]
    assert client.zcard(FAILED) == 0


def test_the_failed_set_deleted_mid_run_moves_nothing_more_and_strands_nothing(own_redis):
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=8)
    before = client.zrange(FAILED, 0, -1)
    queue = _queue(client)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=8, requested_by="t")
    batches = []

    def progress(task, rate):
        batches.append(task.moved)

    steps = {"n": 0}
    real = queue._batch

    def batch(token, n):
        steps["n"] += 1
        if steps["n"] == 2:
            client.delete(FAILED)
        return real(token, n)

    queue._batch = batch
    report = _run(queue, task, batch=3, progress=progress)
    assert report.outcome == "done" and report.task.moved == 3 and report.task.scanned == 8
    assert client.lrange("bull:pdf:wait", 0, -1) == list(reversed(before[:3])) and _bull_clean(client, queue)
    assert not client.exists(FAILED)


@pytest.mark.parametrize("limit,batch", [(7, 3), (2, 5), (5, 5), (1, 1)])
def test_limits_smaller_than_or_not_a_multiple_of_the_batch(own_redis, limit, batch):
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=8)
    before = client.zrange(FAILED, 0, -1)
    queue = _queue(client)
    answers = _recording_batches(queue)
    task = queue.start_requeue(Filters(), limit=limit, rate=None, matching=limit, requested_by="t")
    report = _run(queue, task, batch=batch)
    assert report.outcome == "done" and report.task.moved == report.task.scanned == limit
    assert all(isinstance(answer, int) for answer in answers)
    assert client.lrange("bull:pdf:wait", 0, -1) == list(reversed(before[:limit]))
    assert client.zrange(FAILED, 0, -1) == before[limit:] and _bull_clean(client, queue)


def test_cancel_from_another_client_mid_run_stops_after_a_whole_batch(own_redis):
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=12)
    before = client.zrange(FAILED, 0, -1)
    queue = _queue(client)
    task = queue.start_requeue(Filters(), limit=None, rate=5.0, matching=12, requested_by="t")
    other = _queue(own_redis.client())
    timer = threading.Timer(0.5, other.cancel)
    timer.start()
    report = _run(queue, task, batch=2)
    timer.join()
    assert report.outcome == "cancelled" and report.task.status == "cancelled"
    waiting = client.lrange("bull:pdf:wait", 0, -1)
    assert 0 < len(waiting) < 12 and waiting == list(reversed(before[:len(waiting)]))
    assert report.task.moved == len(waiting) and client.zrange(FAILED, 0, -1) == before[len(waiting):]
    assert _bull_clean(client, queue) and not client.exists(queue.pending_key)


def test_two_replicas_at_once_move_each_job_once(own_redis):
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=20)
    before = client.zrange(FAILED, 0, -1)
    first = _queue(client)
    task = first.start_requeue(Filters(), limit=None, rate=40.0, matching=20, requested_by="t")
    outcomes = []

    def drive(queue):
        try:
            outcomes.append(_run(queue, task, batch=2).outcome)
        except LeaseBusy:
            outcomes.append("busy")

    threads = [threading.Thread(target=drive, args=(_queue(own_redis.client()),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["busy", "done"]
    assert client.lrange("bull:pdf:wait", 0, -1) == list(reversed(before))
    assert int(client.hget(first.task_key, "moved")) == 20 and _bull_clean(client, first)
    assert set(_waiting_events(client).values()) == {1}


def test_a_bullmq_worker_failing_jobs_during_the_requeue_never_gets_one_moved_twice(own_redis):
    """A real BullMQ worker runs (and fails again) the jobs opsbot requeues while the requeue goes on: jobs
    that failed again go back to the failed set with a new score and are not the selected failures; each
    selected job is moved exactly once."""
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=30)
    before = client.zrange(FAILED, 0, -1)
    queue = _queue(client)
    task = queue.start_requeue(Filters(), limit=20, rate=40.0, matching=20, requested_by="t")
    client.set(jobfuncs.BROKEN, 1)
    worker = subprocess.Popen([sys.executable, "-m", "tests.support.bullworker", own_redis.url, "pdf", "bull"],
                              env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        report = _run(queue, task, batch=3)
    finally:
        worker.wait(timeout=60)
    assert report.outcome == "done" and report.task.moved == 20 and _bull_clean(client, queue)
    events = _waiting_events(client)
    assert set(events) == set(before[:20]) and set(events.values()) == {1}
    assert set(client.zrange(FAILED, 0, -1)) == set(before)             # all failed again, none lost
    assert all(client.hget(f"bull:pdf:{job_id.decode()}", "atm") == b"2" for job_id in before[:20])


# -- the process and the server under attack -------------------------------------------------------


def _path(tmp_path, database_url, url, batch, lease="1s"):
    return _config(tmp_path, database_url, url,
                   f"{{name: pdf, backend: bullmq, redis: main, queue: pdf, batch: {batch}, lease_ttl: {lease}}}")


def _settled(client, before, selected):
    """Each selected job in wait once, oldest first; every other job still failed; the counters true."""
    waiting = client.lrange("bull:pdf:wait", 0, -1)
    assert waiting == list(reversed(before[:len(waiting)])) and len(waiting) <= selected
    assert client.zrange(FAILED, 0, -1) == before[len(waiting):]
    assert int(client.hget("opsbot:dlq:task:pdf", "moved") or 0) == len(waiting)
    assert not client.exists("opsbot:dlq:batch:pdf", "opsbot:dlq:lent:pdf")
    return waiting


@pytest.mark.parametrize("batch", [1, 3])
def test_opsbot_sigkilled_again_and_again_then_resumed_moves_each_job_once(tmp_path, database_url, own_redis, batch):
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=30)
    before = client.zrange(FAILED, 0, -1)
    path = _path(tmp_path, database_url, own_redis.url, batch)
    text = "dlq requeue pdf --limit 25 --rate 20"
    kills = 0
    for at_least in (1, 4, 9, 13, 17):
        proc = subprocess.Popen(opsbot(path, text), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while int(client.hget("opsbot:dlq:task:pdf", "moved") or 0) < at_least and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.003)
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.communicate()
        _settled(client, before, 25)
        time.sleep(1.1)                                                  # the dead process's lease runs out
    assert kills >= 3
    done = subprocess.run(opsbot(path, text), env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Requeued" in done.stdout, done.stdout + done.stderr
    waiting = _settled(client, before, 25)
    assert len(waiting) == 25 and client.hget("opsbot:dlq:task:pdf", "status") == b"done"
    _ran_once(client, own_redis.url, before[:25])


def test_redis_killed_and_restarted_mid_run_then_resumed_moves_each_job_once(tmp_path, database_url):
    server = RedisServer(persist=True).start()
    try:
        client = server.client()
        _bull_failures(client, server.url, count=20)
        before = client.zrange(FAILED, 0, -1)
        path = _path(tmp_path, database_url, server.url, 2)
        text = "dlq requeue pdf --rate 15"
        proc = running_requeue(path, text, client, 4, pause=0.003)
        server.kill()                                                   # SIGKILL, AOF fsynced always
        proc.communicate(timeout=120)                                   # opsbot stops (or fails) by itself
        server.start()
        _settled(client, before, 20)
        time.sleep(1.1)
        done = subprocess.run(opsbot(path, text), env=ENV, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "Requeued" in done.stdout, done.stdout + done.stderr
        assert len(_settled(client, before, 20)) == 20
        _ran_once(client, server.url, before)
    finally:
        server.close()


def test_redis_stopped_longer_than_the_lease_mid_run_then_continued_moves_each_job_once(tmp_path, database_url,
                                                                                        own_redis):
    """SIGSTOP of redis-server mid-run for longer than the lease (a frozen server, a failover pause), then
    SIGCONT: whatever the running opsbot then does (carries on, or sees its lease gone), each job moves once."""
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=20)
    before = client.zrange(FAILED, 0, -1)
    path = _path(tmp_path, database_url, own_redis.url, 2)
    text = "dlq requeue pdf --rate 15"
    proc = running_requeue(path, text, client, 4, pause=0.003)
    os.kill(own_redis.pid, signal.SIGSTOP)
    try:
        time.sleep(2.5)
    finally:
        os.kill(own_redis.pid, signal.SIGCONT)
    proc.communicate(timeout=120)
    _settled(client, before, 20)
    if client.hget("opsbot:dlq:task:pdf", "status") != b"done":
        time.sleep(1.1)
        done = subprocess.run(opsbot(path, text), env=ENV, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "Requeued" in done.stdout, done.stdout + done.stderr
    assert len(_settled(client, before, 20)) == 20
    _ran_once(client, own_redis.url, before)


def test_a_wait_key_of_the_wrong_type_mid_run_loses_no_job(own_redis):
    """BullMQ's wait key turned into something else than a list after the selection: moveJobsToWait would
    remove the batch from the failed (or staging) set and then fail to push it to wait, and Redis does not undo
    a script's writes; the jobs would be in no BullMQ state, counted as moved. Nothing may move instead."""
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=6)
    before = client.zrange(FAILED, 0, -1, withscores=True)
    queue = _queue(client)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=6, requested_by="t")
    client.set("bull:pdf:wait", "not a list")

    with pytest.raises(Exception, match="wait"):
        _run(queue, task, batch=4)
    assert client.zrange(FAILED, 0, -1, withscores=True) == before and _bull_clean(client, queue)
    assert int(client.hget(queue.task_key, "moved")) == 0 and int(client.hget(queue.task_key, "left")) == 6

    client.delete("bull:pdf:wait")
    report = _run(queue, task, batch=4)
    assert report.outcome == "done" and report.task.moved == 6 and _bull_clean(client, queue)
    assert client.lrange("bull:pdf:wait", 0, -1) == [job_id for job_id, _ in reversed(before)]
    _ran_once(client, own_redis.url, [job_id for job_id, _ in before])


def test_cancel_while_bullmq_refuses_the_move_closes_the_task_with_every_job_failed(own_redis):
    """meta not a hash: BullMQ refuses every move (before any write). Nothing is taken out of the failed set, so a
    cancel closes the task at once, losing nothing; a new requeue, once BullMQ's meta is a hash again, moves each
    job once."""
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=6)
    before = client.zrange(FAILED, 0, -1, withscores=True)
    queue = _queue(client)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=6, requested_by="t")
    client.rename("bull:pdf:meta", "test:meta")
    client.set("bull:pdf:meta", "not a hash")
    with pytest.raises(Exception, match="WRONGTYPE"):
        _run(queue, task, batch=4)
    assert queue.cancel().status == "cancelled" and queue.task().moved == 0
    assert client.zrange(FAILED, 0, -1, withscores=True) == before and _bull_clean(client, queue)
    assert client.llen("bull:pdf:wait") == 0

    client.delete("bull:pdf:meta")
    client.rename("test:meta", "bull:pdf:meta")
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=6, requested_by="t")
    assert _run(queue, task, batch=4).task.moved == 6
    assert client.lrange("bull:pdf:wait", 0, -1) == [job_id for job_id, _ in reversed(before)]
    _ran_once(client, own_redis.url, [job_id for job_id, _ in before])


def test_a_job_put_before_the_head_with_a_negative_score_after_the_selection_is_never_moved(own_redis):
    """moveJobsToWait takes scores from 0 only (the task's head is the upper bound): exactly the selected jobs
    move; the newcomer stays failed."""
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=7)
    before = client.zrange(FAILED, 0, -1)
    queue = _queue(client)
    answers = _recording_batches(queue)
    task = queue.start_requeue(Filters(), limit=6, rate=None, matching=6, requested_by="t")
    client.zadd(FAILED, {before[-1]: -1})                                 # the unselected one, now first
    report = _run(queue, task, batch=4)
    assert answers == [0, 1] and report.task.moved == 6 and _bull_clean(client, queue)
    assert client.lrange("bull:pdf:wait", 0, -1) == list(reversed(before[:6]))
    assert client.zrange(FAILED, 0, -1) == [before[-1]]


def test_a_prefix_with_a_hash_tag_and_colons(own_redis):
    client = own_redis.client()
    prefix = "{tenant-7}:bull"
    _bull_failures(client, own_redis.url, count=5, prefix=prefix)
    before = client.zrange(f"{prefix}:pdf:failed", 0, -1)
    queue = BullQueue(QueueSettings(name="pdf", backend="bullmq", queue="pdf", prefix=prefix), client)
    answers = _recording_batches(queue)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=5, requested_by="t")
    report = _run(queue, task, batch=2)
    assert answers == [0, 0, 1] and report.task.moved == 5 and _bull_clean(client, queue)
    assert client.lrange(f"{prefix}:pdf:wait", 0, -1) == list(reversed(before)) and not client.exists("bull:pdf:wait")
    bull_burst(own_redis.url, prefix=prefix)
    assert Counter(client.lrange(jobfuncs.RAN, 0, -1)) == Counter(before)
