"""Attacks on ``dlq trim``'s watched path and its byte-compare fallback (real Redis and PostgreSQL).

What must hold whatever happens: every entry ends exactly once in the dead list, the archive or
the hands of another client; archive ordinals are contiguous; the trim never removes an entry
that is, when it goes, among the newest ``keep``; the task closes or can be resumed.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import redis
from redis.backoff import ConstantBackoff
from redis.retry import Retry

from commands.dlq.redis_list import RedisListQueue
from commands.dlq.settings import find_queue
from commands.dlq.trimmer import QueueTrim
from tests.conftest import REDIS_URL
from tests.support.dlq import archive_rows, assert_exactly_once, dead_letter, kill, oldest_first, two_queues_runtime
from tests.support.dlqlayout import QueueLayout
from tests.test_dlq import BINARY
from tests.test_dlq_trim import trim_archive


@pytest.fixture
def runtime(tmp_path, database_url, make_runtime, fake_slack, redis_client):
    return two_queues_runtime(tmp_path, database_url, make_runtime, fake_slack)


def _queue(runtime, client) -> RedisListQueue:
    return RedisListQueue(find_queue(runtime.settings, "jobs"), client)


def _contiguous(database_url: str) -> None:
    rows = archive_rows(database_url)
    for task in {r[0] for r in rows}:
        assert [r[1] for r in rows if r[0] == task] == list(range(sum(r[0] == task for r in rows)))


def _accounted(client, database_url, entries, dead, taken=(), added=()) -> None:
    """Every entry exactly once in Redis, the archive or another client's hands; none in two places."""
    in_redis = Counter(client.lrange(dead, 0, -1))
    archived = Counter(r[2] for r in archive_rows(database_url))
    assert in_redis + archived + Counter(taken) == Counter(entries) + Counter(added)
    assert not set(in_redis) & set(archived) and not set(taken) & set(archived)
    _contiguous(database_url)


# -- "keep the newest N": a consumer popping between the trim's LLEN and its read ---------------

class ConsumerAfterMeasuring(QueueTrim):
    """The real trim; right after its ``at``-th LLEN, a consumer pops ``pops`` of the oldest entries
    (what a worker draining the dead list does, at the one instant the trim cannot see it)."""

    def __init__(self, queue, at: int, pops: int, optimistic: bool):
        super().__init__(queue)
        self.at, self.pops, self.optimistic, self.calls, self.taken = at, pops, optimistic, 0, []

    def _size(self) -> int:
        size = super()._size()
        self.calls += 1
        if self.calls == self.at:
            self.taken += [self.client.rpop(self.dead) for _ in range(self.pops)]
        return size


@pytest.mark.parametrize("optimistic", [True, False], ids=["watched", "compared"])
def test_a_consumer_popping_between_the_size_and_the_read_never_makes_the_trim_cut_into_keep(
        runtime, redis_client, database_url, optimistic):
    q = QueueLayout.server(redis_client, "")
    entries = [dead_letter(i) for i in range(100)]
    kill(q.client, entries, q.dead)
    trim = ConsumerAfterMeasuring(_queue(runtime, q.client), at=2, pops=5, optimistic=optimistic)
    report = trim.run(archive=trim_archive(runtime), keep=90, owner="t", batch=50)
    assert report.outcome == "done", report
    assert q.client.llen(q.dead) == 90, "the trim removed entries that were among the newest 90"
    assert oldest_first(q.client, q.dead) == entries[10:]
    assert [r[2] for r in archive_rows(database_url)] == entries[5:10] and trim.taken == entries[:5]
    _accounted(q.client, database_url, entries, q.dead, taken=trim.taken)
