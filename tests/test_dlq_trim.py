"""dlq trim against the real Redis and PostgreSQL: interrupted, resumed, replaced, raced; one task per queue."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from bot.core.invocation import Actor
from commands.dlq.redis_list import RedisListQueue
from tests.conftest import ALICE, BOB, write_config
from tests.support.dlq import HookedArchive, dead_letter, kill, lease_held, oldest_first, two_queues_runtime
from tests.test_dlq import BINARY, OPS, run
from commands.dlq.settings import find_queue


@pytest.fixture
def q(dlq_layout):
    """The queue's Redis and names: the scenarios below run on one server and on a Redis Cluster."""
    return dlq_layout


@pytest.fixture
def two_queues(tmp_path, database_url, make_runtime, fake_slack, q):
    return two_queues_runtime(tmp_path, database_url, make_runtime, fake_slack, q)


# -- trim: interrupted, resumed, replaced; one task per queue ---------------------------------

class Killed(BaseException):
    """What SIGKILL would leave behind, raised at a chosen point of a trim."""


class KilledAfterCommit(HookedArchive):
    """The real archive, 'killed' right after its n-th batch is committed (before Redis removes it)."""

    def __init__(self, archive, commits: int):
        super().__init__(archive)
        self.commits = commits

    def after(self, call, first, entries):
        if call == self.commits:
            raise Killed(f"killed after committing ordinals {first}..{first + len(entries) - 1}")


def trim_archive(runtime, queue="jobs"):
    from commands.dlq.archive import TrimArchive

    return TrimArchive(runtime.state.pool, "opsbot", find_queue(runtime.settings, queue))


def interrupted_trim(runtime, redis_client, keep: int, commits: int):
    """A trim killed between an archive commit and its removal (batch 7: `commits - 1` batches removed)."""
    queue = RedisListQueue(find_queue(runtime.settings, "jobs"), redis_client)
    with pytest.raises(Killed):
        queue.run_trim(keep=keep, archive=KilledAfterCommit(trim_archive(runtime), commits), batch=7)
    return queue


def test_an_interrupted_trim_is_shown_and_a_different_keep_replaces_it_never_dropping_more(
        two_queues, q, database_url):
    from tests.support.dlq import archive_rows, assert_exactly_once

    entries = [dead_letter(i) for i in range(154)]
    kill(q.client, entries, q.dead)
    interrupted_trim(two_queues, q.client, keep=1, commits=3)   # 14 removed, 7 archived but still there
    assert q.client.llen(q.dead) == 140 and len(archive_rows(database_url)) == 21

    status = run(two_queues, "dlq status jobs").result
    assert status.data["queues"][0]["trim"] == {"id": status.data["queues"][0]["trim"]["id"], "keep": 1,
                                                "dropped": 14, "to_drop": 153, "running": False}
    assert "trim interrupted" in str(status.sections) and "14/153 dropped, keep 1" in str(status.sections)

    preview = run(two_queues, "dlq trim --keep 80")
    assert preview.kind == "preview", preview.result.summary
    plan = preview.result.data["plan"]
    assert "replace the interrupted trim (keep 1, 14 of 153 dropped)" in preview.result.summary
    assert (plan["to_drop"], plan["keep"], plan["dead"]) == (60, 80, 140) and plan["replaces"]
    newer = [dead_letter(1000 + i) for i in range(5)]     # +5 before the click: within the 10% bound
    kill(q.client, newer, q.dead)

    done = two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS).result

    assert done.status == "ok" and done.data["dropped_now"] == 60, done.summary   # not 65, not 139
    assert done.data["abandoned"] == plan["replaces"] and "was abandoned" in done.summary
    assert q.client.llen(q.dead) == 85
    assert oldest_first(q.client, q.dead) == entries[74:] + newer
    assert_exactly_once(q.client, database_url, Counter(entries + newer), q.ready, q.dead)
    assert [r[2] for r in archive_rows(database_url) if r[0] == plan["replaces"]] == entries[:14]
    assert "trim" not in str(run(two_queues, "dlq status jobs").result.sections)


def test_an_interrupted_trim_resumes_with_its_confirmed_size(two_queues, q, database_url):
    from tests.support.dlq import assert_exactly_once

    entries = [dead_letter(i) for i in range(60)]
    kill(q.client, entries, q.dead)
    interrupted_trim(two_queues, q.client, keep=20, commits=2)   # 7 removed, 7 archived but still there

    preview = run(two_queues, "dlq trim --keep 20")
    assert "resume the interrupted trim" in preview.result.summary
    assert preview.result.data["plan"]["to_drop"] == 33
    done = two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS).result

    assert done.status == "ok" and (done.data["dropped"], done.data["dropped_now"]) == (40, 33)
    assert oldest_first(q.client, q.dead) == entries[40:]
    assert_exactly_once(q.client, database_url, Counter(entries), q.ready, q.dead)


def test_keep_zero_trims_everything_through_the_engine(two_queues, q, database_url):
    from tests.support.dlq import archive_rows

    entries = [dead_letter(i) for i in range(12)] + [BINARY]
    kill(q.client, entries, q.dead)
    preview = run(two_queues, "dlq trim jobs --keep 0")
    assert preview.pending.text == "dlq trim jobs --keep 0"
    assert preview.result.data["plan"]["keep"] == 0 and preview.result.data["plan"]["to_drop"] == 13
    done = two_queues.engine.confirm(preview.pending.id, Actor(ALICE), OPS).result
    assert done.status == "ok" and done.data["dropped"] == 13
    assert q.client.llen(q.dead) == 0
    assert [r[2] for r in archive_rows(database_url)] == entries


def _holding_the_lease(q, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not q.client.exists(q.lease) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert q.client.exists(q.lease)


def test_a_trim_waits_for_a_running_requeue_and_a_requeue_for_a_running_trim(two_queues, q,
                                                                              database_url):
    from tests.support.dlq import assert_exactly_once

    entries = [dead_letter(i) for i in range(40)]
    kill(q.client, entries, q.dead)
    preview = run(two_queues, "dlq requeue --rate 40")
    thread = threading.Thread(target=two_queues.engine.confirm, args=(preview.pending.id, Actor(ALICE), OPS))
    thread.start()
    try:
        _holding_the_lease(q)
        refused = run(two_queues, "dlq trim --keep 0", user=BOB)
    finally:
        run(two_queues, "dlq cancel")
        thread.join()
    assert refused.kind == "result" and refused.result.status == "warn"
    assert refused.result.summary.startswith("A requeue of `jobs` is running")

    class Slow(HookedArchive):
        def before(self, call, entries):
            time.sleep(0.1)
            return entries

    queue = RedisListQueue(find_queue(two_queues.settings, "jobs"), q.client)
    trimming = threading.Thread(target=queue.run_trim, kwargs=dict(keep=0, archive=Slow(trim_archive(two_queues)),
                                                                   batch=3))
    trimming.start()
    try:
        _holding_the_lease(q)
        second = run(two_queues, "dlq requeue", user=BOB)
        third = run(two_queues, "dlq trim --keep 3", user=BOB)
    finally:
        trimming.join()
    assert second.kind == "result" and second.result.summary.startswith("A trim of `jobs` is running")
    assert third.kind == "result" and third.result.summary.startswith("A trim of `jobs` is already running")
    assert_exactly_once(q.client, database_url, Counter(entries), q.ready, q.dead)


def test_a_requeue_and_a_trim_confirmed_together_on_two_replicas_never_overlap(two_queues, make_runtime, tmp_path,
                                                                                q, database_url):
    from tests.support.dlq import assert_exactly_once

    entries = [dead_letter(i) for i in range(400)]
    kill(q.client, entries, q.dead)
    other = make_runtime(tmp_path / "app.yaml")  # a second replica on the same configuration
    requeue_preview = run(two_queues, "dlq requeue --type send_email")
    trim_preview = run(other, "dlq trim --keep 10", user=BOB)
    outcomes = {}
    barrier = threading.Barrier(2)

    def confirm(name, runtime, preview, user):
        barrier.wait()
        outcomes[name] = runtime.engine.confirm(preview.pending.id, Actor(user), OPS)

    threads = [threading.Thread(target=confirm, args=("requeue", two_queues, requeue_preview, ALICE)),
               threading.Thread(target=confirm, args=("trim", other, trim_preview, BOB))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    ran = [name for name, outcome in outcomes.items() if outcome.result.status == "ok"]
    busy = [outcome.result.summary for outcome in outcomes.values() if outcome.result.status != "ok"]
    assert len(ran) >= 1 and all("running" in text or "changed" in text.lower() or "Not executed" in text
                                 for text in busy), busy
    assert_exactly_once(q.client, database_url, Counter(entries), q.ready, q.dead)
    assert q.held_keys() == []
    # The one refused left nothing half-started behind (no requeue task recorded without a driver).
    assert q.client.hget(q.task, "status") in (None, b"done")
    assert q.client.hget(q.trim, "status") in (None, b"done")


@pytest.mark.parametrize("stall", ["before_commit", "after_commit"])
def test_a_stale_trimmer_is_fenced_off_by_the_one_that_took_over(two_queues, q, database_url, stall):
    from commands.dlq.trimmer import QueueTrim
    from tests.support.dlq import archive_rows, assert_exactly_once

    entries = [dead_letter(i) for i in range(50)]
    kill(q.client, entries, q.dead)
    queue = RedisListQueue(find_queue(two_queues.settings, "jobs"), q.client)
    woke = threading.Event()

    class Stalls(HookedArchive):
        """Stalls past its lease on the second batch, before or after committing it."""

        def before(self, call, entries):
            if call == 2 and stall == "before_commit":
                woke.wait(10)
            return entries

        def after(self, call, first, entries):
            if call == 2 and stall == "after_commit":
                woke.wait(10)

    reports = {}
    stale = threading.Thread(target=lambda: reports.update(stale=queue.run_trim(
        keep=5, archive=Stalls(trim_archive(two_queues)), batch=7, lease_ttl=0.3)))
    stale.start()
    deadline = time.monotonic() + 5
    while q.client.exists(q.lease) or QueueTrim(queue).task() is None:
        assert time.monotonic() < deadline, "the stale trimmer's lease never ran out"
        time.sleep(0.02)
    task = QueueTrim(queue).task()
    fresh = queue.run_trim(keep=5, archive=trim_archive(two_queues), resume=task.id, batch=7)
    woke.set()
    stale.join()

    assert fresh.outcome == "done" and reports["stale"].outcome == "lost"
    assert oldest_first(q.client, q.dead) == entries[45:]
    assert [r[2] for r in archive_rows(database_url)] == entries[:45]
    assert_exactly_once(q.client, database_url, Counter(entries), q.ready, q.dead)


def test_keep_zero_trims_everything_through_the_cli(tmp_path, database_url, redis_client):
    import json
    import os
    import subprocess

    from tests.support.dlq import archive_rows, opsbot, reset_schema

    reset_schema(database_url)
    path = write_config(tmp_path / "app.yaml", database_url)
    entries = [dead_letter(i) for i in range(9)] + [BINARY]
    kill(redis_client, entries)
    env = {**os.environ, "RUN_MIGRATIONS": "true"}

    preview = subprocess.run(opsbot(path, "dlq trim --keep 0", "--json", yes=False), env=env, capture_output=True,
                             text=True, timeout=60)
    done = subprocess.run(opsbot(path, "dlq trim --keep 0", "--json"), env=env, capture_output=True, text=True,
                          timeout=60)

    assert preview.returncode == 3 and json.loads(preview.stdout)["data"]["plan"]["to_drop"] == 10, preview.stdout
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["data"]["dropped"] == 10
    assert redis_client.llen("jobs:dead") == 0 and [r[2] for r in archive_rows(database_url)] == entries


@pytest.mark.parametrize("earlier_trim", [False, True])
def test_a_trim_that_has_its_lease_but_no_task_yet_is_a_running_trim(two_queues, q, earlier_trim):
    """Between taking the queue's lease and writing its task, a trim is only its lease. A second trim in that
    window was told "A requeue of `jobs` is running" (seen in a two-process race test); it is a trim, and an
    earlier trim's finished task is not shown as its progress."""
    kill(q.client, [dead_letter(i) for i in range(30)], q.dead)
    if earlier_trim:
        done = two_queues.engine.confirm(run(two_queues, "dlq trim --keep 20").pending.id, Actor(ALICE), OPS).result
        assert done.status == "ok"  # a finished trim task stays behind
    with lease_held(q, "trim"):
        refused = run(two_queues, "dlq trim --keep 0", user=BOB)
    assert refused.kind == "result" and refused.result.status == "warn"
    assert refused.result.summary == "A trim of `jobs` is already running (just starting).", refused.result.summary
    assert q.client.llen(q.dead) == (20 if earlier_trim else 30)
