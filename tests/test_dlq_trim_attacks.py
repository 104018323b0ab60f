"""Attacks on ``dlq trim``'s watched path and its byte-compare fallback (real Redis and PostgreSQL).

What must hold whatever happens: every entry ends exactly once in the dead list, the archive or
the hands of another client; archive ordinals are contiguous; the trim never removes an entry
that is, when it goes, among the newest ``keep``; the task closes or can be resumed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest
import redis
from redis.backoff import ConstantBackoff
from redis.retry import Retry

from commands.dlq.lease import LeaseBusy
from commands.dlq.redis_list import RedisListQueue
from commands.dlq.settings import find_queue
from commands.dlq.trimmer import QueueTrim
from tests.conftest import REDIS_URL
from tests.support.dlq import HookedArchive, archive_rows, dead_letter, kill, oldest_first, two_queues_runtime
from tests.support.dlqlayout import QueueLayout
from tests.support.servers import RedisServer
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


# -- the trimmer's connection killed, or Redis paused, inside the watched window ---------------

def _trimmer_client(url: str, name: str, **options) -> redis.Redis:
    """A client like a careful deployment configures: health checks and retries on connection errors."""
    return redis.Redis.from_url(url, client_name=name, health_check_interval=1,
                                retry=Retry(ConstantBackoff(0.01), 3), retry_on_error=[redis.ConnectionError],
                                **options)


def _kill_connections(admin: redis.Redis, name: str) -> int:
    """CLIENT KILL every connection named ``name`` (only the trimmer's: others share this Redis)."""
    killed = 0
    for client in admin.client_list():
        if client.get("name") == name:
            killed += admin.client_kill_filter(_id=client["id"])
    return killed


class DuringRead(HookedArchive):
    """The real archive; on call ``call``, after ``piece`` pieces of a streamed chunk were read
    (or after the commit, with ``piece`` None), ``then()`` runs."""

    def __init__(self, archive, call: int, piece: int | None, then):
        super().__init__(archive)
        self.call, self.piece, self.then = call, piece, then

    def before(self, call, entries):
        if call == self.call and self.piece is not None and hasattr(entries, "pieces"):
            return _Interrupted(entries, self.piece, self.then)
        return entries

    def after(self, call, first, entries):
        if call == self.call and self.piece is None:
            self.then()


class _Interrupted:
    def __init__(self, chunk, after: int, then):
        self.chunk, self.after, self.then = chunk, after, then

    def pieces(self):
        for index, piece in enumerate(self.chunk.pieces(), 1):
            yield piece
            if index == self.after:
                self.then()


def _finish(queue, archive, task_id: str, keep: int):
    """What an on-call does after a failed run: run it again (once the failed run's lease ran out), resuming."""
    deadline = time.monotonic() + 30
    while True:
        try:
            report = queue.run_trim(keep=keep, archive=archive, batch=50, chunk=400, resume=task_id)
            break
        except LeaseBusy:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    assert report.outcome == "done", report
    return report


def _run_or_resume(runtime, queue, archive, keep: int, **options):
    """Run a trim; if Redis failed it (an error, not a report), resume it as an on-call would."""
    try:
        report = queue.run_trim(keep=keep, archive=archive, batch=50, chunk=400, lease_ttl=1.0, **options)
    except (redis.ConnectionError, redis.TimeoutError) as error:
        print("the run failed:", type(error).__name__, error)
        report = None
    if report is None or report.outcome != "done":
        task = QueueTrim(queue).task()
        assert task is not None and task.unfinished
        report = _finish(queue, trim_archive(runtime), task.id, keep=keep)
    return report


CLIENTS = {
    "careful": lambda url, name: _trimmer_client(url, name),
    "plain": lambda url, name: redis.Redis.from_url(url, client_name=name),
    "no retries": lambda url, name: redis.Redis.from_url(url, client_name=name, retry=Retry(ConstantBackoff(0), 0)),
}


@pytest.mark.parametrize("kind", list(CLIENTS))
@pytest.mark.parametrize("call,piece", [(1, 1), (1, 3), (2, 2), (103, 5), (2, None), (103, None)])
def test_the_trimmers_connection_killed_inside_a_watched_chunk_loses_nothing(
        runtime, redis_client, database_url, monkeypatch, call, piece, kind):
    from commands.dlq import trimpieces

    monkeypatch.setattr(trimpieces, "STREAM_PIECE", 10)
    name = f"trim-attack-{call}-{piece}"
    client = CLIENTS[kind](REDIS_URL, name)
    dead = "jobs:dead"
    entries = [dead_letter(i) for i in range(6000)] + [BINARY, b""] + [dead_letter(i) for i in range(6000, 6100)]
    kill(redis_client, entries, dead)
    killed = []
    archive = DuringRead(trim_archive(runtime), call, piece, lambda: killed.append(_kill_connections(redis_client,
                                                                                                        name)))
    report = _queue(runtime, client).run_trim(keep=5, archive=archive, batch=50, chunk=400)
    # A dead connection under a watched read fails it (the COPY rolls back) and the chunk is read again;
    # after the commit it fails the EXEC and the rest is compared: the run goes on either way.
    assert report.outcome == "done" and report.fallback == (piece is None), report
    assert killed and killed[0] >= 1
    assert oldest_first(redis_client, dead) == entries[-5:]
    assert [r[2] for r in archive_rows(database_url)] == entries[:-5]
    _accounted(redis_client, database_url, entries, dead)
    client.close()


@pytest.mark.parametrize("piece", [2, None], ids=["mid-read", "after-commit"])
def test_redis_paused_inside_a_watched_chunk_times_the_trimmer_out_and_loses_nothing(
        runtime, database_url, monkeypatch, piece):
    from commands.dlq import trimpieces

    monkeypatch.setattr(trimpieces, "STREAM_PIECE", 10)
    with RedisServer() as server:
        client = _trimmer_client(server.url, "trimmer", socket_timeout=0.3)
        entries = [dead_letter(i) for i in range(600)] + [BINARY]
        kill(server.client(), entries)

        def pause():  # SIGSTOP for a second: the next read or the EXEC times out
            os.kill(server.pid, signal.SIGSTOP)
            threading.Timer(1.0, os.kill, (server.pid, signal.SIGCONT)).start()

        archive = DuringRead(trim_archive(runtime), 3, piece, pause)
        _run_or_resume(runtime, _queue(runtime, client), archive, keep=5)
        assert oldest_first(server.client(), "jobs:dead") == entries[-5:]
        assert [r[2] for r in archive_rows(database_url)] == entries[:-5]
        _accounted(server.client(), database_url, entries, "jobs:dead")
        client.close()


@pytest.mark.parametrize("piece", [2, None], ids=["mid-read", "after-commit"])
def test_redis_killed_and_restarted_inside_a_watched_chunk_then_resumed_loses_nothing(
        runtime, database_url, monkeypatch, piece):
    from commands.dlq import trimpieces

    monkeypatch.setattr(trimpieces, "STREAM_PIECE", 10)
    with RedisServer(persist=True) as server:
        client = _trimmer_client(server.url, "trimmer")
        entries = [dead_letter(i) for i in range(600)] + [BINARY, b""]
        kill(server.client(), entries)
        archive = DuringRead(trim_archive(runtime), 3, piece, server.restart)
        _run_or_resume(runtime, _queue(runtime, client), archive, keep=5)
        assert oldest_first(server.client(), "jobs:dead") == entries[-5:]
        assert [r[2] for r in archive_rows(database_url)] == entries[:-5]
        _accounted(server.client(), database_url, entries, "jobs:dead")
        client.close()


# -- others writing the dead list all along ----------------------------------------------------

REPLACE_OLDEST = """
local old = redis.call('LINDEX', KEYS[1], tonumber(ARGV[1]))
if not old then return false end
redis.call('LSET', KEYS[1], tonumber(ARGV[1]), ARGV[2])
return old
"""


class Churn(threading.Thread):
    """Another client writing the dead list in a loop: push new, pop oldest, LSET/LREM/LINSERT near the
    oldest end; it records what it took and what it added (LSET's swap is atomic, in Lua)."""

    def __init__(self, url: str, dead: str, kinds: tuple[str, ...]):
        super().__init__(daemon=True)
        self.client, self.dead, self.kinds = redis.Redis.from_url(url), dead, kinds
        self.replace = self.client.register_script(REPLACE_OLDEST)
        self.taken, self.added, self.stop, self.writes = [], [], threading.Event(), 0

    def run(self):
        step = 0
        while not self.stop.is_set():
            step += 1
            kind = self.kinds[step % len(self.kinds)]
            new = b"churn %d" % step
            if kind == "push":
                self.client.lpush(self.dead, new)
                self.added.append(new)
            elif kind == "pop":
                old = self.client.rpop(self.dead)
                if old is not None:
                    self.taken.append(old)
            elif kind == "lset":
                old = self.replace(keys=[self.dead], args=[-1 - step % 3, new])
                if old is not None:
                    self.taken.append(old)
                    self.added.append(new)
            elif kind == "lrem":
                old = self.client.lindex(self.dead, -2)
                if old is not None and self.client.lrem(self.dead, -1, old) == 1:
                    self.taken.append(old)
            elif kind == "linsert":
                pivot = self.client.lindex(self.dead, -2)
                if pivot is not None and self.client.linsert(self.dead, "AFTER", pivot, new) > 0:
                    self.added.append(new)
            self.writes += 1
            time.sleep(0.002)


@pytest.mark.parametrize("kinds", [("push",), ("pop",), ("push", "pop"), ("lset",), ("lrem",), ("linsert",),
                                   ("push", "pop", "lset", "lrem", "linsert")])
def test_others_writing_the_oldest_end_all_along_leave_every_entry_exactly_once(
        runtime, redis_client, database_url, kinds):
    dead = "jobs:dead"
    entries = [dead_letter(i) for i in range(8000)] + [BINARY, b""] + [dead_letter(i) for i in range(8000, 9000)]
    kill(redis_client, entries, dead)
    churn = Churn(REDIS_URL, dead, kinds)
    churn.start()
    while churn.writes < 3:
        time.sleep(0.001)
    try:
        report = _queue(runtime, redis_client).run_trim(keep=100, archive=trim_archive(runtime), batch=50,
                                                        chunk=400)
    finally:
        churn.stop.set()
        churn.join()
    assert report.outcome in ("done", "changed"), (churn.writes, report)
    if report.outcome == "done" and "pop" not in kinds and "lrem" not in kinds:
        assert redis_client.llen(dead) >= 100
    _accounted(redis_client, database_url, entries, dead, taken=churn.taken, added=churn.added)


# -- the dead key itself replaced under a chunk -------------------------------------------------

@pytest.mark.parametrize("piece", [2, None], ids=["mid-read", "after-commit"])
@pytest.mark.parametrize("how", ["deleted", "renamed over", "retyped", "newest taken", "expired"])
def test_the_dead_key_deleted_renamed_over_or_retyped_under_a_chunk_loses_nothing(
        runtime, redis_client, database_url, monkeypatch, how, piece):
    from commands.dlq import trimpieces

    monkeypatch.setattr(trimpieces, "STREAM_PIECE", 10)
    dead = "jobs:dead"
    entries = [dead_letter(i) for i in range(600)]
    other = [b"other %d" % i for i in range(300)]
    kill(redis_client, entries, dead)
    kill(redis_client, other, "elsewhere")
    taken = []

    def then():
        if how == "deleted":
            taken.extend(redis_client.lrange(dead, 0, -1))
            redis_client.delete(dead)
        elif how == "renamed over":
            taken.extend(redis_client.lrange(dead, 0, -1))
            redis_client.rename("elsewhere", dead)
        elif how == "expired":  # someone set a TTL on the dead list and it ran out under the chunk
            taken.extend(redis_client.lrange(dead, 0, -1))
            redis_client.pexpire(dead, 1)
            time.sleep(0.01)
        elif how == "newest taken":  # a client takes the newest: what is left is just `keep`
            taken.extend(redis_client.lpop(dead, redis_client.llen(dead) - 100))
        else:
            taken.extend(redis_client.lrange(dead, 0, -1))
            redis_client.delete(dead)
            redis_client.set(dead, b"not a list")

    archive = DuringRead(trim_archive(runtime), 3, piece, then)
    queue = _queue(runtime, redis_client)
    if how == "retyped":  # the run fails (WRONGTYPE), the task stays resumable, refused until the key is fixed
        with pytest.raises(redis.ResponseError):
            queue.run_trim(keep=100, archive=archive, batch=50, chunk=400)
        task = QueueTrim(queue).task()
        assert task is not None and task.unfinished
        redis_client.delete(dead)
        _finish(queue, trim_archive(runtime), task.id, keep=100)
        _accounted(redis_client, database_url, entries, dead, taken=taken)
        return
    report = queue.run_trim(keep=100, archive=archive, batch=50, chunk=400)
    assert report.outcome == "done", report
    added = other if how == "renamed over" else []
    if how == "renamed over":
        assert oldest_first(redis_client, dead) == other[-100:]
    if how == "newest taken":
        assert oldest_first(redis_client, dead) == entries[100:200]
    _accounted(redis_client, database_url, entries, dead, taken=taken, added=added)


# -- the lease running out under a chunk; two trimmers at once -----------------------------------

@pytest.mark.parametrize("piece", [2, None], ids=["mid-read", "after-commit"])
def test_the_lease_running_out_under_a_watched_chunk_stops_the_trim_and_a_resume_loses_nothing(
        runtime, redis_client, database_url, monkeypatch, piece):
    from commands.dlq import trimpieces

    monkeypatch.setattr(trimpieces, "STREAM_PIECE", 10)
    dead = "jobs:dead"
    entries = [dead_letter(i) for i in range(600)] + [BINARY]
    kill(redis_client, entries, dead)
    archive = DuringRead(trim_archive(runtime), 3, piece, lambda: time.sleep(0.5))
    queue = _queue(runtime, redis_client)
    report = queue.run_trim(keep=5, archive=archive, batch=50, chunk=400, lease_ttl=0.3)
    assert report.outcome == "lost" and report.dropped == 100, report
    _finish(queue, trim_archive(runtime), report.task_id, keep=5)
    assert oldest_first(redis_client, dead) == entries[-5:]
    assert [r[2] for r in archive_rows(database_url)] == entries[:-5]
    _accounted(redis_client, database_url, entries, dead)


def test_two_trimmers_started_together_never_overlap_and_lose_nothing(runtime, redis_client, database_url):
    dead = "jobs:dead"
    entries = [dead_letter(i) for i in range(6000)] + [BINARY, b""]
    kill(redis_client, entries, dead)
    outcomes, start = [], threading.Barrier(2)

    def trim(keep):
        client = redis.Redis.from_url(REDIS_URL)
        start.wait()
        try:
            outcomes.append(_queue(runtime, client).run_trim(keep=keep, archive=trim_archive(runtime), batch=50,
                                                             chunk=400))
        except LeaseBusy as busy:
            outcomes.append(busy)

    threads = [threading.Thread(target=trim, args=(keep,)) for keep in (10, 3000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = [o for o in outcomes if not isinstance(o, LeaseBusy)]
    assert len(done) == 1 and len(outcomes) == 2 and done[0].outcome == "done", outcomes
    keep = 10 if done[0].to_drop == len(entries) - 10 else 3000
    assert oldest_first(redis_client, dead) == entries[-keep:]
    _accounted(redis_client, database_url, entries, dead)


# -- entries and sizes at the edges ----------------------------------------------------------------

def test_huge_empty_and_binary_entries_are_archived_byte_for_byte(runtime, redis_client, database_url):
    dead = "jobs:dead"
    huge = [bytes([i]) * (8 * 2 ** 20) for i in range(3)]
    entries = [b"", huge[0], BINARY, b"", huge[1], bytes(range(256)), huge[2], b"\r\n", b"", dead_letter(1)]
    kill(redis_client, entries, dead)
    report = _queue(runtime, redis_client).run_trim(keep=2, archive=trim_archive(runtime), batch=4)
    assert report.outcome == "done" and report.dropped == len(entries) - 2, report
    assert [r[2] for r in archive_rows(database_url)] == entries[:-2]
    assert oldest_first(redis_client, dead) == entries[-2:]


@pytest.mark.parametrize("optimistic", [True, False], ids=["watched", "compared"])
def test_huge_entries_under_a_producer_are_compared_part_by_part(runtime, redis_client, database_url, optimistic):
    dead = "jobs:dead"
    entries = [bytes([i % 251]) * (3 * 2 ** 20 + i) for i in range(6)] + [b"", BINARY]
    kill(redis_client, entries, dead)
    trim = QueueTrim(_queue(runtime, redis_client))
    trim.optimistic = optimistic
    archive = DuringRead(trim_archive(runtime), 1, None, lambda: redis_client.lpush(dead, b"new"))
    report = trim.run(archive=archive, keep=1, owner="t", batch=500)
    assert report.outcome == "done" and report.fallback == optimistic, report
    assert [r[2] for r in archive_rows(database_url)] == entries[:-1]
    assert oldest_first(redis_client, dead) == entries[-1:] + [b"new"]


@pytest.mark.parametrize("keep,max_drop,dropped", [(20, None, 0), (10, None, 0), (9, None, 1), (0, 4, 4),
                                                   (0, 0, 0), (3, 100, 7)])
def test_keep_and_max_drop_at_their_edges(runtime, redis_client, database_url, keep, max_drop, dropped):
    dead = "jobs:dead"
    entries = [dead_letter(i) for i in range(9)] + [b""]
    kill(redis_client, entries, dead)
    report = _queue(runtime, redis_client).run_trim(keep=keep, archive=trim_archive(runtime), batch=3,
                                                    max_drop=max_drop)
    assert report.outcome == "done" and report.dropped == report.to_drop == dropped, report
    assert [r[2] for r in archive_rows(database_url)] == entries[:dropped]
    assert oldest_first(redis_client, dead) == entries[dropped:]
    assert QueueTrim(_queue(runtime, redis_client)).task().status == "done"


# -- a real `opsbot run --yes "dlq trim --keep N"` SIGKILLed at many points ----------------------

def test_a_real_trim_sigkilled_at_many_points_with_others_writing_then_resumed_loses_nothing(tmp_path, database_url):
    import subprocess

    from tests.conftest import write_config
    from tests.support.dlq import opsbot, reset_schema

    reset_schema(database_url)
    with RedisServer(persist=True) as server:
        client = server.client()
        q = QueueLayout.server(client, server.url, server=server)
        path = q.configure(write_config(tmp_path / "app.yaml", database_url), "batch: 50, lease_ttl: 1s")
        entries = [dead_letter(i) for i in range(120000)] + [BINARY, b""] + \
            [dead_letter(i) for i in range(120000, 121000)]
        kill(client, entries, q.dead)
        env = {"RUN_MIGRATIONS": "true", **{k: v for k, v in os.environ.items() if k != "RUN_MIGRATIONS"}}
        churn = Churn(server.url, q.dead, ("push",))
        kills = []
        # Kill at once, a little later, and once `dropped` grew by some (deep in watched or compared chunks).
        for how, at in [("time", 0.0), ("time", 0.15), ("dropped", 2000), ("churn", 0), ("dropped", 3000),
                        ("time", 0.4), ("dropped", 5000)]:
            if how == "churn":
                churn.start()   # from here on the list is written all along: chunks are compared
                continue
            proc = subprocess.Popen(opsbot(path, "dlq trim --keep 7"), env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            deadline = time.monotonic() + 60
            while not client.exists(q.lease) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            if how == "time":  # but never so late that a fast machine has finished the trim (it has, at 0.4 s)
                until_then, cap = time.monotonic() + at, (kills[-1] if kills else 0) + 6000
                while time.monotonic() < until_then and int(client.hget(q.trim, "dropped") or 0) < cap:
                    time.sleep(0.002)
            else:   # `at` more than when the process started
                mark = at + (kills[-1] if kills else 0)
                while int(client.hget(q.trim, "dropped") or 0) < mark and proc.poll() is None:
                    assert time.monotonic() < deadline
                    time.sleep(0.002)
            assert proc.poll() is None, proc.communicate()[0]   # still under way when killed
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
            kills.append(int(client.hget(q.trim, "dropped") or 0))
            time.sleep(1.1)  # the killed trimmer's lease runs out
        churn.stop.set()
        churn.join()
        again = subprocess.run(opsbot(path, "dlq trim --keep 7"), env=env, capture_output=True, text=True,
                               timeout=300)
        assert again.returncode == 0, again.stdout + again.stderr
        assert len(set(kills)) >= 4, kills      # killed at different points
        assert client.hget(q.trim, "status") == b"done"     # the confirmed size dropped; pushes since are kept
        assert oldest_first(client, q.dead) == entries[-7:] + churn.added and len(churn.added) > 10
        _accounted(client, database_url, entries, q.dead, taken=churn.taken, added=churn.added)


# -- PostgreSQL killed or restarted in the middle of a chunk's COPY (a cluster of the test's own) --

@pytest.mark.parametrize("restart", [False, True], ids=["killed", "restarted"])
def test_postgresql_dying_mid_copy_of_a_watched_chunk_archives_nothing_of_it_and_a_resume_loses_nothing(
        tmp_path, make_runtime, redis_client, monkeypatch, restart):
    import psycopg

    from commands.dlq import trimpieces
    from commands.dlq.archive import TrimArchive
    from tests.conftest import write_config
    from tests.support.servers import PostgresCluster

    monkeypatch.setattr(trimpieces, "STREAM_PIECE", 10)
    pg = PostgresCluster().open()
    try:
        path = write_config(tmp_path / "app.yaml", pg.url)
        runtime = make_runtime(path)
        entries = [dead_letter(i) for i in range(400)] + [BINARY, b""]
        kill(redis_client, entries)
        queue = RedisListQueue(find_queue(runtime.settings, "jobs"), redis_client)

        def die():
            pg.stop(signal.SIGQUIT)   # every backend dies at once, mid-COPY
            if restart:
                pg.start()

        archive = DuringRead(TrimArchive(runtime.state.pool, "opsbot", find_queue(runtime.settings, "jobs")), 3, 2,
                             die)
        with pytest.raises(psycopg.OperationalError):
            queue.run_trim(keep=10, archive=archive, batch=50, chunk=400)
        assert redis_client.llen("jobs:dead") == len(entries) - 100   # two chunks removed, the third not
        if restart:     # the COPY under way rolled back: only the two chunks removed are archived
            assert [r[1] for r in archive_rows(pg.url)] == list(range(100))
        if not restart:
            pg.start()
        again = make_runtime(path)
        task = QueueTrim(queue).task()
        assert task.unfinished and task.dropped == 100
        _finish(queue, TrimArchive(again.state.pool, "opsbot", find_queue(again.settings, "jobs")), task.id, keep=10)
        assert oldest_first(redis_client, "jobs:dead") == entries[-10:]
        assert [r[2] for r in archive_rows(pg.url)] == entries[:-10]
        _accounted(redis_client, pg.url, entries, "jobs:dead")
    finally:
        pg.close()


def test_sidekiq_pruning_between_the_trims_size_and_its_read_never_makes_it_cut_into_keep(tmp_path):
    from commands.dlq.sidekiq import SidekiqSet, SidekiqTrim
    from tests.test_dlq_sidekiq import _job, _settings_with

    class PrunedAfterMeasuring(SidekiqTrim):
        calls, taken = 0, []

        def _size(self) -> int:
            size = super()._size()
            self.calls += 1
            if self.calls == 2:   # Sidekiq prunes (or retries) the 5 oldest right then
                self.taken = [member for member, _ in self.client.zpopmin(self.queue.set_key, 5)]
            return size

    with RedisServer() as server:
        client = server.client()
        now = time.time()
        members = [_job(i, failed_at=now - 600 + i).encode() for i in range(100)]
        client.zadd("dead", {m: now - 600 + i for i, m in enumerate(members)})
        queue = SidekiqSet(find_queue(_settings_with(tmp_path, server.url, "batch: 50"), "mail"), client)
        archived: list[bytes] = []
        trim = PrunedAfterMeasuring(queue)
        report = trim.run(archive=lambda task_id, first, entries: archived.extend(entries), keep=90, owner="t",
                          batch=50)
        assert report.outcome == "done", report
        assert client.zcard("dead") == 90, "the trim removed jobs that were among the newest 90"
        assert client.zrange("dead", 0, -1) == members[10:] and trim.taken == members[:5]
        assert report.dropped == 5 and set(archived) >= set(members[5:10])


class EachCommit(HookedArchive):
    """The real archive; after its n-th commit, ``actions[n]()`` runs."""

    def __init__(self, archive, actions):
        super().__init__(archive)
        self.actions = actions

    def after(self, call, first, entries):
        self.actions.get(call, lambda: None)()


@pytest.mark.parametrize("kind", list(CLIENTS))
@pytest.mark.parametrize("call", [3, 4, 9])
def test_the_trimmers_connection_killed_while_comparing_loses_nothing(runtime, redis_client, database_url, kind,
                                                                     call):
    name = f"trim-compare-{call}"
    client = CLIENTS[kind](REDIS_URL, name)
    dead = "jobs:dead"
    entries = [dead_letter(i) for i in range(3000)] + [BINARY, b""]
    kill(redis_client, entries, dead)
    killed = []
    archive = EachCommit(trim_archive(runtime), {
        1: lambda: redis_client.lpush(dead, b"pushed"),      # the first EXEC fails: the rest is compared
        call: lambda: killed.append(_kill_connections(redis_client, name))})
    queue = _queue(runtime, client)
    try:
        report = queue.run_trim(keep=5, archive=archive, batch=50, chunk=400, lease_ttl=1.0)
        assert report.fallback, report
    except (redis.ConnectionError, redis.TimeoutError) as error:
        print("the run failed:", type(error).__name__, error)
        report = None
    if report is None or report.outcome != "done":
        _finish(queue, trim_archive(runtime), QueueTrim(queue).task().id, keep=5)
    assert killed and killed[0] >= 1
    assert oldest_first(redis_client, dead) == entries[-5:] + [b"pushed"]
    assert [r[2] for r in archive_rows(database_url)] == entries[:-5]
    _accounted(redis_client, database_url, entries, dead, added=[b"pushed"])
    client.close()


@pytest.mark.parametrize("optimistic", [True, False], ids=["watched", "compared"])
def test_chunks_of_huge_entries_stay_under_batch_bytes_from_the_second_one_on(runtime, redis_client, database_url,
                                                                             optimistic):
    from commands.dlq.trimmer import BATCH_BYTES

    dead = "jobs:dead"
    entries = [bytes([i % 251]) * 2 ** 20 for i in range(70)] + [b""]
    kill(redis_client, entries, dead)
    sizes = []

    class Measured(HookedArchive):
        def after(self, call, first, chunk):
            sizes.append(sum(map(len, chunk)))

    trim = QueueTrim(_queue(runtime, redis_client))
    trim.optimistic = optimistic
    report = trim.run(archive=Measured(trim_archive(runtime)), keep=1, owner="t", batch=50)
    assert report.outcome == "done", report
    assert sizes[0] == 50 * 2 ** 20 and max(sizes[1:]) <= BATCH_BYTES, sizes   # the first is one batch, unseen
    assert [r[2] for r in archive_rows(database_url)] == entries[:-1]


def test_two_real_trims_started_at_once_from_two_processes_never_overlap(tmp_path, database_url, redis_client):
    import subprocess

    from tests.conftest import write_config
    from tests.support.dlq import opsbot, reset_schema

    reset_schema(database_url)
    q = QueueLayout.server(redis_client, REDIS_URL)
    path = q.configure(write_config(tmp_path / "app.yaml", database_url), "batch: 50, lease_ttl: 1s")
    entries = [dead_letter(i) for i in range(40000)] + [BINARY, b""]
    kill(redis_client, entries, q.dead)
    env = {"RUN_MIGRATIONS": "true", **{k: v for k, v in os.environ.items() if k != "RUN_MIGRATIONS"}}
    procs = [subprocess.Popen(opsbot(path, f"dlq trim --keep {keep}"), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for keep in (10, 20000)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    codes = [proc.returncode for proc in procs]
    assert 0 in codes, outputs
    survivors = redis_client.llen(q.dead)
    # The one that found the other's trim under way says so (a warning, exit 0 or not, depending on
    # whether its preview or its run found it) and trims nothing; otherwise they ran one after the other.
    refused = [index for index, out in enumerate(outputs) if "already running" in out]
    if not refused:
        assert codes == [0, 0] and survivors == 10, outputs
    else:
        assert len(refused) == 1 and survivors == (10, 20000)[1 - refused[0]], outputs
    assert oldest_first(redis_client, q.dead) == entries[-survivors:]
    _accounted(redis_client, database_url, entries, q.dead)


@pytest.mark.parametrize("optimistic", [True, False], ids=["watched", "compared"])
@pytest.mark.parametrize("stop_after", [1, 2, 5])
def test_a_trim_stopped_midway_leaves_no_archive_row_of_an_entry_still_in_redis(runtime, redis_client, database_url,
                                                                                optimistic, stop_after):
    dead = "jobs:dead"
    entries = [dead_letter(i) for i in range(3000)]
    kill(redis_client, entries, dead)
    archive = EachCommit(trim_archive(runtime), {})
    trim = QueueTrim(_queue(runtime, redis_client))
    trim.optimistic = optimistic
    report = trim.run(archive=archive, keep=5, owner="t", batch=50, should_stop=lambda: archive.calls >= stop_after)
    assert report.outcome == "interrupted" and report.dropped < len(entries) - 5, report
    _accounted(redis_client, database_url, entries, dead)     # at rest: no row of an entry still in Redis
    _finish(_queue(runtime, redis_client), trim_archive(runtime), report.task_id, keep=5)
    assert oldest_first(redis_client, dead) == entries[-5:]
    _accounted(redis_client, database_url, entries, dead)
