"""More attacks on the BullMQ unfiltered requeue (the task's head; each batch LEND, moveJobsToWait on the lent
failed set, SETTLE, in one MULTI/EXEC), with real BullMQ jobs, a real BullMQ worker and a real redis-server:
keys of the wrong type, ties at the head, a tampered task. The guarantee under attack is the one of
tests/test_dlq_bullmq_attacks.py: each selected job is requeued exactly once or left failed, nothing else
moves, nothing is left under opsbot's keys, the counters are true, the task finishes or resumes."""

from __future__ import annotations

import pytest

from commands.dlq.entries import Filters
from tests.test_dlq_bullmq_attacks import FAILED, _queue, _ran_once, _run
from tests.test_dlq_jobsystems import _bull_clean, _bull_failures


@pytest.mark.parametrize("key", ["bull:pdf:marker", FAILED])
def test_a_marker_or_failed_set_of_the_wrong_type_mid_run_moves_nothing_and_says_which(own_redis, key):
    """BullMQ's marker turned into a string after the start: moveJobsToWait adds to it only after it has pushed
    the batch to wait, so its script fails with the jobs moved and no worker woken, and each later batch would do
    the same. The failed set turned into a string: nothing to lend. Either way nothing may move, and the error names
    the key; once the key is right again, each job moves once."""
    client = own_redis.client()
    _bull_failures(client, own_redis.url, count=6)
    before = client.zrange(FAILED, 0, -1, withscores=True)
    hashes = {job_id: client.hgetall(f"bull:pdf:{job_id.decode()}") for job_id, _ in before}
    queue = _queue(client)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=6, requested_by="t")
    kept = client.dump(key)                                             # None: the worker left no marker
    client.set(key, "not a sorted set")

    with pytest.raises(Exception, match=f"'{key}' is a Redis string, not a zset"):
        _run(queue, task, batch=4)
    assert client.llen("bull:pdf:wait") == 0 and _bull_clean(client, queue)
    assert {job_id: client.hgetall(f"bull:pdf:{job_id.decode()}") for job_id, _ in before} == hashes
    assert int(client.hget(queue.task_key, "moved")) == 0 and int(client.hget(queue.task_key, "left")) == 6

    client.delete(key)
    if kept is not None:
        client.restore(key, 0, kept)
    report = _run(queue, task, batch=4)
    assert report.outcome == "done" and report.task.moved == 6 and _bull_clean(client, queue)
    assert client.lrange("bull:pdf:wait", 0, -1) == [job_id for job_id, _ in reversed(before)]
    _ran_once(client, own_redis.url, [job_id for job_id, _ in before])
