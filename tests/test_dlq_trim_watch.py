"""dlq trim's optimistic path: each chunk read under WATCH, streamed into its archive COPY, removed unread.

Real Redis and PostgreSQL. A write to the dead list under a watched chunk (a producer's push, a
consumer's pop, an entry put back) makes its EXEC fail: the chunk is archived but not removed, and
the rest of the run compares bytes (tests/test_dlq_trim_compare.py). Kills and a lost lease inside
the watched window leave every entry exactly once in Redis or the archive after a resume.
"""

from __future__ import annotations

from collections import Counter

import pytest

from commands.dlq import lua
from commands.dlq.redis_list import RedisListQueue
from commands.dlq.settings import find_queue
from commands.dlq.trimmer import QueueTrim
from tests.support.dlq import (HookedArchive, archive_rows, assert_exactly_once, dead_letter, kill, oldest_first,
                               two_queues_runtime)
from tests.support.dlqlayout import QueueLayout
from tests.test_dlq import BINARY
from tests.test_dlq_trim import KilledAfterCommit, Killed, trim_archive
from tests.test_dlq_trim_compare import Producing


@pytest.fixture
def runtime(tmp_path, database_url, make_runtime, fake_slack, redis_client):
    return two_queues_runtime(tmp_path, database_url, make_runtime, fake_slack)


def _queue(runtime, client) -> RedisListQueue:
    return RedisListQueue(find_queue(runtime.settings, "jobs"), client)


class AfterCommit(HookedArchive):
    """The real archive; after its ``call``-th commit, ``then(client, dead)`` runs (someone else's write)."""

    def __init__(self, archive, client, dead, call: int, then):
        super().__init__(archive)
        self.client, self.dead, self.call, self.then = client, dead, call, then

    def after(self, call, first, entries):
        if call == self.call:
            self.then(self.client, self.dead)


def test_an_untouched_list_is_trimmed_chunk_by_chunk_under_watch_in_order(runtime, redis_client, database_url):
    q = QueueLayout.server(redis_client, "")
    entries = [dead_letter(i) for i in range(5300)] + [BINARY, b""] + [dead_letter(i) for i in range(5300, 6000)]
    kill(q.client, entries, q.dead)
    archive = AfterCommit(trim_archive(runtime), q.client, q.dead, 0, None)   # counts its calls
    report = _queue(runtime, q.client).run_trim(keep=5, archive=archive, batch=50, chunk=400)
    assert report.outcome == "done" and not report.fallback and report.retries == 0, report
    assert report.watched == archive.calls > 100       # every chunk removed unread: 100 of 50, then growing
    assert [r[2] for r in archive_rows(database_url)] == entries[:-5]
    assert [r[1] for r in archive_rows(database_url)] == list(range(len(entries) - 5))
    assert oldest_first(q.client, q.dead) == entries[-5:]


def test_a_producer_pushing_falls_back_to_comparing_and_every_entry_is_kept_or_archived_once(
        runtime, redis_client, database_url):
    q = QueueLayout.server(redis_client, "")
    entries = [dead_letter(i) for i in range(6000)]
    kill(q.client, entries, q.dead)
    archive = Producing(trim_archive(runtime), q.client, q.dead)
    report = _queue(runtime, q.client).run_trim(keep=5, archive=archive, batch=50, chunk=400,
                                                max_drop=len(entries) - 5)
    assert report.outcome == "done" and report.fallback and report.watched == 0, report
    assert [r[2] for r in archive_rows(database_url)] == entries[:-5]
    assert oldest_first(q.client, q.dead) == entries[-5:] + archive.pushed


@pytest.mark.parametrize("call", [1, 3, 101, 102])
@pytest.mark.parametrize("write", ["pop the oldest", "put one back", "push a new one", "replace the oldest"])
def test_a_write_under_a_watched_chunk_leaves_every_entry_exactly_once(runtime, redis_client, database_url,
                                                                       call, write):
    q = QueueLayout.server(redis_client, "")
    entries = [dead_letter(i) for i in range(6000)]
    kill(q.client, entries, q.dead)
    taken, added = [], []

    def then(client, dead):
        if write == "pop the oldest":
            taken.append(client.rpop(dead))
        elif write == "put one back":
            added.append(b"put back")
            client.rpush(dead, added[-1])
        elif write == "push a new one":
            added.append(b"new")
            client.lpush(dead, added[-1])
        else:
            taken.append(client.lindex(dead, -1))
            added.append(b"replaced")
            client.lset(dead, -1, added[-1])

    archive = AfterCommit(trim_archive(runtime), q.client, q.dead, call, then)
    report = _queue(runtime, q.client).run_trim(keep=5, archive=archive, batch=50, chunk=400,
                                                max_drop=len(entries) - 5)
    assert report.outcome == "done" and report.fallback and report.watched == call - 1, report
    if write != "push a new one":
        assert report.retries >= 1      # the chunk's oldest end changed: read and archived again
    in_redis = Counter(oldest_first(q.client, q.dead))
    archived = Counter(r[2] for r in archive_rows(database_url))
    assert in_redis + archived + Counter(taken) == Counter(entries) + Counter(added)
    assert not set(in_redis) & set(archived) and not set(taken) & set(archived)
    assert [r[1] for r in archive_rows(database_url)] == list(range(sum(archived.values())))


@pytest.mark.parametrize("commits", [1, 4, 103])
def test_killed_between_a_watched_commit_and_its_removal_then_resumed_loses_nothing(runtime, redis_client,
                                                                                     database_url, commits):
    q = QueueLayout.server(redis_client, "")
    entries = [dead_letter(i) for i in range(6000)] + [BINARY]
    kill(q.client, entries, q.dead)
    queue = _queue(runtime, q.client)
    with pytest.raises(Killed):
        queue.run_trim(keep=5, archive=KilledAfterCommit(trim_archive(runtime), commits), batch=50, chunk=400)
    task = queue.trim_task()
    assert task.unfinished and task.dropped < len(entries) - 5
    assert len(archive_rows(database_url)) > task.dropped     # the killed chunk's rows are there, not removed
    report = queue.run_trim(keep=5, archive=trim_archive(runtime), batch=50, chunk=400, resume=task.id)
    assert report.outcome == "done" and report.dropped == len(entries) - 5, report
    assert [r[2] for r in archive_rows(database_url)] == entries[:-5]
    assert_exactly_once(q.client, database_url, Counter(entries), q.dead)


def test_a_lease_lost_in_the_watched_window_removes_nothing_and_the_next_trimmer_finishes(
        runtime, redis_client, database_url):
    q = QueueLayout.server(redis_client, "")
    entries = [dead_letter(i) for i in range(3000)]
    kill(q.client, entries, q.dead)
    queue = _queue(runtime, q.client)
    archive = AfterCommit(trim_archive(runtime), q.client, q.dead, 3, lambda client, dead: client.delete(q.lease))
    report = queue.run_trim(keep=5, archive=archive, batch=50, chunk=400)
    assert report.outcome == "lost" and report.dropped == 100, report    # two chunks of 50 removed
    assert q.client.llen(q.dead) == 2900 and len(archive_rows(database_url)) == 150
    again = queue.run_trim(keep=5, archive=trim_archive(runtime), batch=50, chunk=400, resume=report.task_id)
    assert again.outcome == "done" and again.dropped == len(entries) - 5, again
    assert [r[2] for r in archive_rows(database_url)] == entries[:-5]
    assert_exactly_once(q.client, database_url, Counter(entries), q.dead)


def test_a_list_emptied_under_a_watched_read_archives_nothing_of_that_chunk(runtime, redis_client, database_url):
    q = QueueLayout.server(redis_client, "")
    entries = [dead_letter(i) for i in range(6000)]
    kill(q.client, entries, q.dead)
    taken: list[bytes] = []

    class EmptiedBeforeReading(HookedArchive):
        """On its 2nd call, someone takes all but 10 entries before the archive reads the chunk."""

        def before(self, call, entries):
            if call == 2:
                taken.extend(q.client.rpop(q.dead, q.client.llen(q.dead) - 10))
            return entries

    report = _queue(runtime, q.client).run_trim(keep=5, archive=EmptiedBeforeReading(trim_archive(runtime)),
                                                batch=50, chunk=400)
    assert report.outcome == "done", report
    archived = [r[2] for r in archive_rows(database_url)]
    assert archived == entries[:50] + entries[-10:-5]
    assert oldest_first(q.client, q.dead) == entries[-5:] and taken == entries[50:-10]


def test_trim_cut_removes_only_for_the_lease_holder_task_and_ordinal(runtime, redis_client):
    q = QueueLayout.server(redis_client, "")
    kill(q.client, [b"a", b"b", b"c"], q.dead)
    trim = QueueTrim(_queue(runtime, q.client))
    token = trim.lease.take("trim", "t1", owner="test", ttl=15)
    trim._create(token, "t1", 0, None, "test")
    cut = q.client.register_script(lua.TRIM_CUT)
    keys = [q.dead, trim.key, trim.lease.key]
    assert cut(keys=keys, args=[2, "not the token", "t1", 0]) == -1
    assert cut(keys=keys, args=[2, token, "another task", 0]) == -1
    assert cut(keys=keys, args=[2, token, "t1", 1]) == 0
    assert cut(keys=keys, args=[4, token, "t1", 0]) == 0           # fewer than that left
    assert oldest_first(q.client, q.dead) == [b"a", b"b", b"c"]
    assert cut(keys=keys, args=[2, token, "t1", 0]) == 1
    assert oldest_first(q.client, q.dead) == [b"c"] and int(q.client.hget(trim.key, "dropped")) == 2


@pytest.mark.parametrize("write", ["pop the oldest", "push a new one", "put one back"])
@pytest.mark.parametrize("call", [1, 2, 101])
def test_a_write_between_two_pieces_of_a_streamed_chunk_leaves_every_entry_exactly_once(
        runtime, redis_client, database_url, monkeypatch, write, call):
    """The chunk's later pieces are read after the write (shifted, or not): the EXEC fails, and what was
    archived is compared (and read and archived again where it differs)."""
    from commands.dlq import trimpieces

    monkeypatch.setattr(trimpieces, "STREAM_PIECE", 10)
    q = QueueLayout.server(redis_client, "")
    entries = [dead_letter(i) for i in range(6000)]
    kill(q.client, entries, q.dead)
    taken, added = [], []

    class WritesMidStream(HookedArchive):
        def before(self, n, chunk):
            if n == call:
                assert hasattr(chunk, "pieces")            # the watched path streams
                read = chunk.pieces

                def pieces():
                    for number, piece in enumerate(read()):
                        yield piece
                        if number == 1:
                            if write == "pop the oldest":
                                taken.append(q.client.rpop(q.dead))
                            elif write == "push a new one":
                                added.append(b"new")
                                q.client.lpush(q.dead, added[-1])
                            else:
                                added.append(b"put back")
                                q.client.rpush(q.dead, added[-1])

                chunk.pieces = pieces
            return chunk

    report = _queue(runtime, q.client).run_trim(keep=5, archive=WritesMidStream(trim_archive(runtime)), batch=50,
                                                chunk=400, max_drop=len(entries) - 5)
    assert report.outcome == "done" and report.fallback and report.watched == call - 1, report
    in_redis = Counter(oldest_first(q.client, q.dead))
    archived = Counter(r[2] for r in archive_rows(database_url))
    assert in_redis + archived + Counter(taken) == Counter(entries) + Counter(added)
    assert not set(in_redis) & set(archived) and not set(taken) & set(archived)
    assert max(archived.values()) == 1
    assert [r[1] for r in archive_rows(database_url)] == list(range(sum(archived.values())))


def test_a_connection_dropped_under_a_watched_chunk_never_removes_it_unwatched(runtime, database_url):
    """With health checks and retries configured (``health_check_interval`` in the queue's Redis URL),
    redis-py PINGs before sending MULTI/EXEC, finds the connection dead and silently reconnects: the
    removal then ran with no WATCH, after a consumer had taken the oldest entry, and dropped an entry
    that was never archived. The watched window runs with no health check: the EXEC fails as a watched
    one does, and the chunk is compared instead."""
    import time

    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from tests.support.servers import RedisServer

    with RedisServer() as server:  # its own: the test kills connections
        side = server.client()
        client = redis.Redis.from_url(server.url, health_check_interval=1, retry=Retry(NoBackoff(), 3))
        queue = _queue(runtime, client)
        dead = queue.settings.dead
        entries = [dead_letter(i) for i in range(1000)]
        kill(side, entries, dead)
        taken = []

        def then(_client, _dead):  # after the first chunk's commit, before its removal
            for info in side.client_list():
                if int(info["id"]) != side.client_id():
                    side.client_kill_filter(_id=info["id"])
            time.sleep(1.1)  # the health check is due
            taken.append(side.rpop(dead))  # a consumer takes the oldest

        archive = AfterCommit(trim_archive(runtime), side, dead, 1, then)
        report = queue.run_trim(keep=5, archive=archive, batch=50, chunk=400, max_drop=len(entries) - 5)
        assert report.outcome == "done" and report.fallback and report.watched == 0, report
        in_redis = Counter(oldest_first(side, dead))
        archived = Counter(r[2] for r in archive_rows(database_url))
        assert in_redis + archived + Counter(taken) == Counter(entries)
        assert not set(in_redis) & set(archived) and not set(taken) & set(archived)
