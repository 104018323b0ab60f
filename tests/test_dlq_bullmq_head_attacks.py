"""More attacks on the BullMQ unfiltered requeue (the task's head; each batch LEND, moveJobsToWait on the lent
failed set, SETTLE, in one MULTI/EXEC), with real BullMQ jobs, a real BullMQ worker and a real redis-server:
keys of the wrong type, ties at the head, a tampered task. The guarantee under attack is the one of
tests/test_dlq_bullmq_attacks.py: each selected job is requeued exactly once or left failed, nothing else
moves, nothing is left under opsbot's keys, the counters are true, the task finishes or resumes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time

import pytest
from bullmq import Queue as BullMQQueue

from commands.dlq.entries import Filters
from tests.test_dlq_bullmq_attacks import AWKWARD, FAILED, _custom_failures, _queue, _ran_once, _run
from tests.support.dlq import opsbot
from tests.test_dlq_jobsystems import ENV, _bull_clean, _bull_failures, _config, running_requeue


META = "bull:pdf:meta"
SPOILED = {"events": ("bull:pdf:events", "'bull:pdf:events' is a Redis string, not a stream"),
           "marker": ("bull:pdf:marker", "'bull:pdf:marker' is a Redis string, not a zset"),
           "failed": (FAILED, "'bull:pdf:failed' is a Redis string, not a zset"),
           "events-cap": (META, "opts.maxLenEvents 'lots', not a whole number")}


@pytest.mark.parametrize("spoiled", list(SPOILED))
def test_bullmq_keys_spoiled_mid_run_move_nothing_and_the_error_says_which(own_redis, spoiled):
    """BullMQ's events key no longer a stream, or its events cap (meta opts.maxLenEvents) not a number:
    moveJobsToWait would strip the batch's jobs of their failure (failedReason, finishedOn) and then fail at its
    first XADD, leaving them failed without a reason. Its marker turned into a string: moveJobsToWait adds to it
    only after it has pushed the batch to wait, so its script fails with the jobs moved and no worker woken, and
    each later batch would do the same. The failed set turned into a string: nothing to lend. Each time nothing
    may be touched, and the error says what is wrong; once it is right again, each job moves once."""
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=6)
    before = client.zrange(FAILED, 0, -1, withscores=True)
    hashes = {job_id: client.hgetall(f"bull:pdf:{job_id.decode()}") for job_id, _ in before}
    queue = _queue(client)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=6, requested_by="t")
    key, message = SPOILED[spoiled]
    kept = client.dump(key)                                             # None: the worker left no marker
    client.hset(META, "opts.maxLenEvents", "lots") if key == META else client.set(key, "spoiled")

    with pytest.raises(Exception, match=message):
        _run(queue, task, batch=4)
    assert client.llen("bull:pdf:wait") == 0 and _bull_clean(client, queue)
    assert {job_id: client.hgetall(f"bull:pdf:{job_id.decode()}") for job_id, _ in before} == hashes
    assert key == FAILED or client.zrange(FAILED, 0, -1, withscores=True) == before
    assert int(client.hget(queue.task_key, "moved")) == 0 and int(client.hget(queue.task_key, "left")) == 6

    client.delete(key)
    if kept is not None:
        client.restore(key, 0, kept)
    report = _run(queue, task, batch=4)
    assert report.outcome == "done" and report.task.moved == 6 and _bull_clean(client, queue)
    assert client.lrange("bull:pdf:wait", 0, -1) == [job_id for job_id, _ in reversed(before)]
    _ran_once(client, own_redis.url, [job_id for job_id, _ in before])


@pytest.mark.parametrize("removed", [[0, 1], [4], [0, 4], [2, 3, 4]], ids=["oldest-two", "last-selected",
                                                                          "first-and-last", "last-three"])
def test_selected_jobs_removed_at_a_tied_head_are_not_replaced_by_unselected_ones(own_redis, removed):
    """Ten jobs failed in the same millisecond (a burst), five selected (--limit 5): Redis orders them by id.
    Some of the five are removed with BullMQ's own Queue.remove before the batches run: the rest of the five
    move, and none of the five after them, though they share the head's score."""
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=10)
    client.zadd(FAILED, {job_id: 1700000000000 for job_id in client.zrange(FAILED, 0, -1)})
    ids = client.zrange(FAILED, 0, -1)
    queue = _queue(client)
    task = queue.start_requeue(Filters(), limit=5, rate=None, matching=5, requested_by="t")

    async def remove():
        library = BullMQQueue("pdf", {"connection": own_redis.url})
        for index in removed:
            await library.remove(ids[index].decode())
        await library.close()

    asyncio.run(remove())
    kept = [job_id for index, job_id in enumerate(ids[:5]) if index not in removed]
    report = _run(queue, task, batch=2)
    assert report.outcome == "done" and _bull_clean(client, queue)
    assert report.task.moved == len(kept) and report.task.scanned == report.task.total == 5
    assert client.lrange("bull:pdf:wait", 0, -1) == list(reversed(kept))
    assert client.zrange(FAILED, 0, -1) == ids[5:]
    _ran_once(client, own_redis.url, kept)


def test_a_tied_head_of_awkward_ids_is_cut_in_redis_own_order(own_redis):
    """Ids Redis orders byte by byte (multi-byte UTF-8, DEL, a 3,000-byte id, prefixes of one another) all in
    one millisecond: the last selected one and another are removed, so the task finds where the removed head
    was among the ties by itself; exactly the remaining selected ones move."""
    client = own_redis.client()
    ids = AWKWARD + ["00", "007a", "ü", "L" * 2999]
    _custom_failures(client, own_redis.url, ids)
    client.zadd(FAILED, {job_id: 1700000000000 for job_id in ids})
    ordered = client.zrange(FAILED, 0, -1)
    queue = _queue(client)
    task = queue.start_requeue(Filters(), limit=11, rate=None, matching=11, requested_by="t")
    client.zrem(FAILED, ordered[10], ordered[3])                        # the head's own id, and one before it
    kept = [job_id for job_id in ordered[:10] if job_id != ordered[3]]
    report = _run(queue, task, batch=4)
    assert report.outcome == "done" and report.task.moved == 9 and report.task.scanned == 11
    assert client.lrange("bull:pdf:wait", 0, -1) == list(reversed(kept)) and _bull_clean(client, queue)
    assert client.zrange(FAILED, 0, -1) == ordered[11:]


@pytest.mark.parametrize("tamper", [{"left": "many"}, {"left": None}, {"head": None}, {"left": ""}],
                         ids=["left-not-a-number", "left-gone", "head-gone", "left-empty"])
def test_a_tampered_task_hash_is_refused_saying_so_and_can_be_cancelled(own_redis, tamper):
    """The task hash of an unfiltered requeue edited by hand (or by something else): it is not read as a filtered
    task with nothing pending (a 'done' that moved nothing) nor crashes on a number; the requeue stops saying what
    is wrong, nothing moved, and a cancel closes it with every job failed."""
    from bot.core.invocation import CommandError

    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=5)
    before = client.zrange(FAILED, 0, -1, withscores=True)
    queue = _queue(client)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=5, requested_by="t")
    for field, value in tamper.items():
        client.hdel(queue.task_key, field) if value is None else client.hset(queue.task_key, field, value)

    with pytest.raises(CommandError, match="task of 'pdf' is not what opsbot writes"):
        _run(queue, task, batch=2)
    assert client.zrange(FAILED, 0, -1, withscores=True) == before and client.llen("bull:pdf:wait") == 0
    assert queue.task().status == "running" and not client.exists(queue.lease_key) and _bull_clean(client, queue)
    assert queue.cancel().status == "cancelled" and queue.task().moved == 0
    assert client.zrange(FAILED, 0, -1, withscores=True) == before


def _previous_versions_task(client, queue, staged):
    """An unfinished unfiltered task as the previous opsbot left it: ``bulk`` 1, a pending list of [id, score]
    rows as its SELECT wrote them (the score as Redis writes it), no head; ``staged`` jobs in its staging key
    ``moving`` (scored by place, taken out of the failed set, counted, their rows dropped), where a batch whose
    move BullMQ refused stayed until the next batch moved it."""
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=client.zcard(FAILED), requested_by="t")
    rows = client.eval("return redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')", 1, FAILED)
    client.hdel(queue.task_key, "head", "head_id", "left")
    client.hset(queue.task_key, mapping={"bulk": 1, "moved": staged, "scanned": staged})
    client.rpush(queue.pending_key, *[json.dumps([rows[i].decode(), rows[i + 1].decode()])
                                      for i in range(2 * staged, len(rows), 2)])
    if staged:
        client.zadd(f"opsbot:dlq:moving:{queue.name}", {rows[i]: i // 2 + 1 for i in range(0, 2 * staged, 2)})
        client.zrem(FAILED, *[rows[i] for i in range(0, 2 * staged, 2)])
    return task


@pytest.mark.parametrize("staged", [0, 3])
def test_an_unfinished_task_of_the_previous_version_finishes_moving_each_job_once(own_redis, staged):
    """Resumed after an upgrade, interrupted once more, resumed again: every job moves exactly once (the pending
    rows through the journaled per-job path, a staged batch first), the counters end true, nothing is left
    under opsbot's keys."""
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=9)
    before = client.zrange(FAILED, 0, -1)
    queue = _queue(client)
    task = _previous_versions_task(client, queue, staged)
    assert queue.run_requeue(task.id, owner="t", batch=2,
                             should_stop=lambda: client.llen("bull:pdf:wait") >= 3).outcome == "interrupted"
    report = _run(queue, task, batch=2)
    assert report.outcome == "done" and report.task.moved == report.task.scanned == 9
    assert sorted(client.lrange("bull:pdf:wait", 0, -1)) == sorted(before) and client.zcard(FAILED) == 0
    assert client.keys("opsbot:dlq:*") == [queue.task_key.encode()]
    _ran_once(client, own_redis.url, before)


def test_cancelling_an_interrupted_task_of_the_previous_version_moves_its_staged_batch_only(own_redis):
    """The staged batch was confirmed, taken out of the failed set and counted: a cancel moves it (as a cancel
    finishes a journaled batch); every pending job stays failed."""
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=7)
    before = client.zrange(FAILED, 0, -1)
    queue = _queue(client)
    _previous_versions_task(client, queue, staged=2)
    assert queue.cancel().status == "cancelled" and queue.task().moved == 2
    assert client.lrange("bull:pdf:wait", 0, -1) == list(reversed(before[:2]))
    assert client.zrange(FAILED, 0, -1) == before[2:]
    assert client.keys("opsbot:dlq:*") == [queue.task_key.encode()]
    _ran_once(client, own_redis.url, before[:2])


def test_a_head_job_id_that_is_not_utf8_is_kept_as_bytes_and_the_task_still_reads(own_redis):
    """A job id Redis holds as raw bytes (written by hand, not by BullMQ) is the task's head: the task hash keeps
    it, and the task is still read (status, progress, cancel) and moves each job once."""
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=4)
    before = client.zrange(FAILED, 0, -1, withscores=True)
    odd = b"job-\xff\xfe"
    last, score = before[-1]
    client.rename(f"bull:pdf:{last.decode()}".encode(), b"bull:pdf:" + odd)
    client.zrem(FAILED, last)
    client.zadd(FAILED, {odd: score})
    queue = _queue(client)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=4, requested_by="t")
    assert task.total == 4 and client.hget(queue.task_key, "head_id") == odd
    report = _run(queue, task, batch=3)
    assert report.outcome == "done" and report.task.moved == 4 and _bull_clean(client, queue)
    assert client.lrange("bull:pdf:wait", 0, -1) == [odd, *[job_id for job_id, _ in reversed(before[:-1])]]


def test_opsbot_killed_again_and_again_with_a_tied_head_and_jobs_removed_between_runs(tmp_path, database_url,
                                                                                      own_redis):
    """`opsbot run` of a --limit cutting through thirty jobs failed in one millisecond, SIGKILLed mid-run three
    times; between runs an on-call removes selected jobs (the last selected one among them) with BullMQ's own
    Queue.remove. In the end exactly the selected jobs not removed moved, each once; the others stay failed."""
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=30)
    client.zadd(FAILED, {job_id: 1700000000000 for job_id in client.zrange(FAILED, 0, -1)})
    ordered = client.zrange(FAILED, 0, -1)
    path = _config(tmp_path, database_url, own_redis.url,
                   "{name: pdf, backend: bullmq, redis: main, queue: pdf, batch: 2, lease_ttl: 1s}")
    text = "dlq requeue pdf --limit 20 --rate 15"
    removed = []
    for at_least, remove in ((2, 19), (6, 17), (10, 3)):
        proc = running_requeue(path, text, client, at_least, pause=0.003)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if client.zscore(FAILED, ordered[remove]) is not None:
            asyncio.run(_remove(own_redis.url, ordered[remove]))
            removed.append(ordered[remove])
        time.sleep(1.1)                                                  # the dead process's lease runs out
    done = subprocess.run(opsbot(path, text), env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Requeued" in done.stdout, done.stdout + done.stderr
    kept = [job_id for job_id in ordered[:20] if job_id not in removed]
    assert removed and client.lrange("bull:pdf:wait", 0, -1) == list(reversed(kept))
    assert client.zrange(FAILED, 0, -1) == ordered[20:]
    task = client.hgetall("opsbot:dlq:task:pdf")
    assert task[b"status"] == b"done" and int(task[b"moved"]) == len(kept) and int(task[b"scanned"]) == 20
    _ran_once(client, own_redis.url, kept)


async def _remove(url, job_id):
    library = BullMQQueue("pdf", {"connection": url})
    await library.remove(job_id.decode())
    await library.close()


@pytest.mark.parametrize("tamper", ["deleted", "left-not-a-number"])
def test_the_task_hash_deleted_or_spoiled_mid_run_stops_the_run_as_not_ours(own_redis, tamper):
    """Between two batches the task hash is deleted (or its ``left`` overwritten): the next batch lends nothing,
    and the run stops as a task that is no longer its own ('lost'), every job either waiting once or failed."""
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=8)
    before = client.zrange(FAILED, 0, -1)
    queue = _queue(client)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=8, requested_by="t")
    real, steps = queue._batch, []

    def batch(token, n):
        steps.append(n)
        if len(steps) == 2:
            client.delete(queue.task_key) if tamper == "deleted" else client.hset(queue.task_key, "left", "x")
        return real(token, n)

    queue._batch = batch
    assert queue.run_requeue(task.id, owner="t", batch=3).outcome == "lost"
    assert client.lrange("bull:pdf:wait", 0, -1) == list(reversed(before[:3])) and _bull_clean(client, queue)
    assert client.zrange(FAILED, 0, -1) == before[3:] and not client.exists(queue.lease_key)


def test_opsbot_stopped_longer_than_its_lease_while_another_takes_over_moves_each_job_once(tmp_path, database_url,
                                                                                          own_redis):
    """SIGSTOP of a running `opsbot run` for longer than its lease; a second one resumes the task meanwhile; the
    first is continued: it finds its lease gone and stops, the second finishes. Each job in wait once."""
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=30)
    before = client.zrange(FAILED, 0, -1)
    path = _config(tmp_path, database_url, own_redis.url,
                   "{name: pdf, backend: bullmq, redis: main, queue: pdf, batch: 2, lease_ttl: 1s}")
    text = "dlq requeue pdf --rate 15"
    first = running_requeue(path, text, client, 4, pause=0.003)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        time.sleep(1.5)
        second = subprocess.Popen(opsbot(path, text), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        time.sleep(1.0)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, _ = first.communicate(timeout=120)
    assert "lost its lease" in out.decode()
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0 and "Requeued 30" in out, out + err
    assert client.lrange("bull:pdf:wait", 0, -1) == list(reversed(before)) and client.zcard(FAILED) == 0
    assert not client.exists("opsbot:dlq:batch:pdf", "opsbot:dlq:lent:pdf")
    _ran_once(client, own_redis.url, before)
