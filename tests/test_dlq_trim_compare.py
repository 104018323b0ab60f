"""dlq trim's compare-and-remove compares every entry byte for byte (no hash), on real Redis and PostgreSQL.

The script gets the entries' lengths and their bytes end to end; these tests change the oldest end
in the ways a hash-free comparison could be fooled (same bytes split differently, a same-length
entry replaced, an entry put back at the oldest end) and check nothing is removed, then run whole
trims with a producer and a consumer working on the list, with batches cut by bytes.
"""

from __future__ import annotations

from collections import Counter

import pytest

from commands.dlq import trimpieces
from commands.dlq.redis_list import RedisListQueue
from commands.dlq.settings import find_queue
from commands.dlq.trimmer import QueueTrim
from tests.support.dlq import (HookedArchive, archive_rows, assert_exactly_once, dead_letter, kill, oldest_first,
                               two_queues_runtime)
from tests.support.dlqlayout import QueueLayout
from tests.test_dlq import BINARY
from tests.test_dlq_trim import trim_archive


@pytest.fixture
def runtime(tmp_path, database_url, make_runtime, fake_slack, redis_client):
    return two_queues_runtime(tmp_path, database_url, make_runtime, fake_slack)


def _trim(runtime, client) -> QueueTrim:
    return QueueTrim(RedisListQueue(find_queue(runtime.settings, "jobs"), client))


def _task(trim: QueueTrim) -> tuple[str, str]:
    """A running trim task and its lease, as run() has them while it removes."""
    token = trim.lease.take("trim", "t1", owner="test", ttl=15)
    return token, trim._create(token, "t1", 0, None, "test").id


@pytest.mark.parametrize("archived, now", [
    ([b"ab", b"c"], [b"b", b"ca"]),                  # the same bytes end to end (newest first), cut elsewhere
    ([b"aa", b"a"], [b"a", b"aa"]),                  # ... in either order
    ([b"ab", b"c"], [b"", b"cab"]),
    ([b"ab", b"c"], [b"a", b"bc"]),
    ([b"a,b", b"c"], [b"a", b"b,c"]),                 # commas in entries do not confuse the lengths
    ([b"xyz", b"q"], [b"xyw", b"q"]),                 # one byte of one entry changed, lengths the same
    ([b"one", b"two"], [b"two", b"one"]),             # the same entries, other order
])
def test_the_oldest_end_changed_in_a_way_a_hash_free_check_could_miss_removes_nothing(runtime, redis_client,
                                                                                     archived, now):
    q = QueueLayout.server(redis_client, "")
    trim = _trim(runtime, q.client)
    kill(q.client, now + [b"newer"], q.dead)
    token, task = _task(trim)
    assert trim._remove(token, task, archived, 0) == 0
    assert oldest_first(q.client, q.dead) == now + [b"newer"]
    assert int(q.client.hget(trim.key, "dropped")) == 0


def test_an_entry_put_back_at_the_oldest_end_or_popped_from_it_stops_the_removal(runtime, redis_client):
    q = QueueLayout.server(redis_client, "")
    trim = _trim(runtime, q.client)
    entries = [dead_letter(i) for i in range(10)]
    kill(q.client, entries, q.dead)
    token, task = _task(trim)
    q.client.rpush(q.dead, b"put back")
    assert trim._remove(token, task, entries[:4], 0) == 0
    q.client.rpop(q.dead)
    q.client.rpop(q.dead)                                   # a consumer took the oldest
    assert trim._remove(token, task, entries[:4], 0) == 0
    assert oldest_first(q.client, q.dead) == entries[1:]


def test_exact_entries_are_removed_only_for_their_ordinal_and_lease(runtime, redis_client):
    q = QueueLayout.server(redis_client, "")
    trim = _trim(runtime, q.client)
    entries = [b"", BINARY, b"a,b:c\r\n", b"", dead_letter(1), b"x" * 70_000, b"last"]
    kill(q.client, entries, q.dead)
    token, task = _task(trim)
    assert trim._remove(token, task, entries[:3], 1) == 0        # `dropped` is 0, not 1
    assert trim._remove("someone else", task, entries[:3], 0) == -1
    assert trim._remove(token, task, entries[:3], 0) == 1
    assert trim._remove(token, task, entries[3:6], 3) == 1
    assert oldest_first(q.client, q.dead) == [b"last"]
    assert int(q.client.hget(trim.key, "dropped")) == 6


class Producing(HookedArchive):
    """The real archive; after each commit a producer pushes a new dead letter (at the newest end) and,
    on call ``put_back``, someone pushes one back at the oldest end."""

    def __init__(self, archive, client, dead, put_back: int | None = None):
        super().__init__(archive)
        self.client, self.dead, self.put_back = client, dead, put_back
        self.pushed, self.put = [], []

    def after(self, call, first, entries):
        self.pushed.append(dead_letter(100_000 + call))
        self.client.lpush(self.dead, self.pushed[-1])
        if call == self.put_back:
            self.put.append(b"put back %d" % call)
            self.client.rpush(self.dead, self.put[-1])


def test_a_producer_pushing_while_trimming_costs_no_retry_and_every_entry_is_kept_or_archived_once(
        runtime, redis_client, database_url):
    q = QueueLayout.server(redis_client, "")
    entries = [dead_letter(i) for i in range(6000)]
    kill(q.client, entries, q.dead)
    archive = Producing(trim_archive(runtime), q.client, q.dead)
    report = _trim(runtime, q.client).run(keep=5, archive=archive, batch=50, chunk=400, max_drop=len(entries) - 5)
    assert report.outcome == "done" and report.retries == 0, report    # arrivals do not touch the oldest end
    assert [r[2] for r in archive_rows(database_url)] == entries[:-5]
    assert oldest_first(q.client, q.dead) == entries[-5:] + archive.pushed


@pytest.mark.parametrize("put_back", [1, 2, 101, 102])
def test_an_entry_put_back_at_the_oldest_end_mid_trim_is_never_dropped_unarchived(runtime, redis_client,
                                                                                    database_url, put_back):
    """Call 1 commits before its chunk is removed; the others while the chunk before is removed (from
    call 101 on, past the warm-up, in chunks of several batches, the one behind read meanwhile)."""
    q = QueueLayout.server(redis_client, "")
    entries = [dead_letter(i) for i in range(6000)]
    kill(q.client, entries, q.dead)
    archive = Producing(trim_archive(runtime), q.client, q.dead, put_back=put_back)
    report = _trim(runtime, q.client).run(keep=5, archive=archive, batch=50, chunk=400, max_drop=len(entries) - 5)
    assert report.outcome == "done" and report.retries >= 1, report
    assert_exactly_once(q.client, database_url, Counter(entries + archive.pushed + archive.put), q.dead)
    archived = archive_rows(database_url)
    assert [r[1] for r in archived] == list(range(len(archived)))
    assert b"put back %d" % put_back in [r[2] for r in archived]      # it came first: it was archived, then dropped


@pytest.mark.parametrize("call", [1, 2, 101, 102])
def test_batches_cut_by_bytes_are_removed_in_order_and_a_consumer_mid_chunk_loses_nothing(
        runtime, redis_client, database_url, monkeypatch, call):
    from tests.test_dlq_trim_chunks import TakesTheOldest

    monkeypatch.setattr(trimpieces, "PART_BYTES", 1000)   # a few entries per compare-and-remove
    q = QueueLayout.server(redis_client, "")
    entries = [dead_letter(i) for i in range(5000)] + [b"y" * 3000, b"", BINARY] + [dead_letter(i) for i in
                                                                                     range(5000, 6000)]
    kill(q.client, entries, q.dead)
    archive = TakesTheOldest(trim_archive(runtime), q.client, q.dead, call)
    report = _trim(runtime, q.client).run(keep=5, archive=archive, batch=50, chunk=400)
    assert report.outcome == "done" and report.retries >= 1, report
    in_redis = Counter(oldest_first(q.client, q.dead))
    archived = archive_rows(database_url)
    assert in_redis + Counter(r[2] for r in archived) + Counter(archive.taken) == Counter(entries)
    assert [r[1] for r in archived] == list(range(len(archived))) and len(in_redis) == 5
    assert [r[2] for r in archived] == [e for e in entries[:-5] if e not in archive.taken]


def test_parts_hold_at_most_a_batch_and_part_bytes_and_at_least_one_entry(monkeypatch):
    monkeypatch.setattr(trimpieces, "PART_BYTES", 10)
    entries = [b"a" * 4, b"b" * 4, b"c" * 30, b"d", b"e", b"f", b"g" * 10, b""]
    parts = trimpieces.parts(entries, 3)
    assert [e for part in parts for e in part] == entries
    assert parts == [[b"a" * 4, b"b" * 4], [b"c" * 30], [b"d", b"e", b"f"], [b"g" * 10, b""]]
