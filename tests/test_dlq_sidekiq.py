"""The sidekiq backend against a real Sidekiq: jobs fail for real, opsbot peeks and requeues some, Sidekiq runs
exactly those again; SIGKILL mid-requeue loses and duplicates nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter

import pytest
from slack_sdk import WebClient

from bot.config.settings import load_settings
from bot.core.invocation import Actor, Where
from commands.dlq.entries import Filters
from commands.dlq.sidekiq import SidekiqSet, retried_job, sidekiq_view
from commands.dlq.settings import QueueSettings, find_queue
from tests.conftest import ALICE, BOT_TOKEN, write_config
from tests.support.dlq import archive_rows, opsbot, reset_schema
from tests.support.packages import debian_binary
from tests.support.servers import RedisServer
from tests.support.sidekiq import SidekiqProcess, enqueue, wait_until

OPS = Where("C-ops", channel_name="ops")


def _config(tmp_path, database_url, redis_url, extra="", api_url="https://slack.invalid/api/"):
    path = write_config(tmp_path / "app.yaml", database_url, redis_url=redis_url, api_url=api_url)
    path.write_text(path.read_text().replace(
        '  - {name: jobs, redis: main, ready: jobs, dead: "jobs:dead"}',
        f'  - {{name: mail, backend: sidekiq, redis: main, queue: dead{extra}}}'))
    return path


@pytest.fixture
def world(tmp_path, own_redis, database_url, make_runtime, fake_slack):
    """Real dead jobs: 12 FlakyJob (4 IOError, 8 ArgumentError) and 4 OtherJob, killed by a real Sidekiq."""
    client = own_redis.client()
    client.set("failing", "1")
    folder = tmp_path / "app"
    folder.mkdir()
    flaky = enqueue(own_redis.url, folder, "FlakyJob", 12)
    other = enqueue(own_redis.url, folder, "OtherJob", 4, note="<!channel>")
    with SidekiqProcess(own_redis.url, folder) as sidekiq:
        wait_until(lambda: sidekiq.alive() and client.zcard("dead") == 16, what="16 jobs in Sidekiq's dead set")
    client.set("failing", "0")
    path = _config(tmp_path, database_url, own_redis.url, api_url=fake_slack.api_url)
    runtime = make_runtime(path, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))
    return runtime, client, folder, flaky, other


def run(runtime, text):
    return runtime.engine.handle(text, Actor(ALICE), OPS)


def dead_jobs(client):
    return [json.loads(raw) for raw in client.zrange("dead", 0, -1)]


def test_peek_filters_requeue_a_subset_and_sidekiq_runs_exactly_those_again(world, own_redis):
    runtime, client, folder, flaky, other = world

    peek = run(runtime, "dlq peek mail --type FlakyJob --error argumenterror").result
    assert peek.status == "ok" and peek.data["matching"] == 8 and peek.data["dead"] == 16
    assert set(peek.data["by_type"]) == {"FlakyJob"}
    shown = peek.data["entries"]
    died = [job["jid"] for job in dead_jobs(client)
            if job["error_class"] == "ArgumentError" and job["class"] == "FlakyJob"]
    assert [e["id"] for e in shown] == died and set(died) == {j for i, j in enumerate(flaky) if i % 3}
    assert shown[0]["error"] == "ArgumentError: boom 1 <b>&amp; *bold* "
    assert run(runtime, "dlq peek mail --type OtherJob").result.data["matching"] == 4
    by_id = run(runtime, f"dlq peek mail --id {other[2]}").result
    assert [e["id"] for e in by_id.data["entries"]] == [other[2]]
    assert run(runtime, "dlq peek mail --older-than 1h").result.data["matching"] == 0
    status = run(runtime, "dlq status mail").result
    assert status.data["queues"][0]["dead"] == 16

    preview = run(runtime, "dlq requeue mail --type FlakyJob --error argumenterror --limit 5")
    assert preview.kind == "preview", preview.result.summary
    assert "requeue 5 of 8 matching" in preview.result.summary and "`dead` → each job's own queue (`queue:NAME`)" in \
        preview.result.summary
    assert client.zcard("dead") == 16                               # a preview moves nothing
    done = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)
    assert done.result.status == "ok", done.result.summary
    assert done.result.summary.startswith("Requeued 5 dead letters")

    chosen = died[:5]                                                # the oldest five that matched
    queued = [json.loads(raw) for raw in reversed(client.lrange("queue:mail", 0, -1))]
    assert [job["jid"] for job in queued] == chosen
    assert client.smembers("queues") >= {b"mail"}
    assert all(job["retry_count"] == -1 and job["args"][1] == 12345678901234567890123 for job in queued)
    assert {job["jid"] for job in dead_jobs(client)} == set(flaky + other) - set(chosen)

    with SidekiqProcess(own_redis.url, folder) as sidekiq:           # Sidekiq's own worker runs them again
        wait_until(lambda: sidekiq.alive() and client.llen("ran") == 5, what="the 5 requeued jobs to run")
        time.sleep(1.0)
    assert sorted(r.decode() for r in client.lrange("ran", 0, -1)) == sorted(chosen)
    assert client.zcard("dead") == 11 and client.llen("queue:mail") == 0


def test_trim_keeps_the_newest_and_archives_the_rest_byte_for_byte(world, database_url):
    runtime, client, *_ = world
    before = client.zrange("dead", 0, -1)
    preview = run(runtime, "dlq trim mail --keep 10")
    assert preview.kind == "preview" and "drop the 6 oldest of 16" in preview.result.summary
    done = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)
    assert done.result.status == "ok", done.result.summary
    assert client.zrange("dead", 0, -1) == before[6:]
    assert [entry for _, _, entry in archive_rows(database_url)] == before[:6]


def test_a_requeue_killed_mid_batch_resumes_losing_and_repeating_nothing(tmp_path, own_redis, database_url):
    reset_schema(database_url)
    client = own_redis.client()
    client.set("failing", "1")
    folder = tmp_path / "app"
    folder.mkdir()
    jids = enqueue(own_redis.url, folder, "FlakyJob", 240)
    with SidekiqProcess(own_redis.url, folder) as sidekiq:
        wait_until(lambda: sidekiq.alive() and client.zcard("dead") == 240, what="240 dead jobs")
    client.set("failing", "0")
    argument_errors = [job["jid"] for job in dead_jobs(client) if job["error_class"] == "ArgumentError"]
    assert len(argument_errors) == 160                                    # oldest first, as they died
    path = _config(tmp_path, database_url, own_redis.url, ", batch: 10, lease_ttl: 1s")
    env = {**os.environ, "RUN_MIGRATIONS": "true"}
    command = opsbot(path, "dlq requeue mail --error ArgumentError --limit 120 --rate 60")

    def everywhere() -> Counter:
        queued = [json.loads(raw)["jid"] for raw in client.lrange("queue:mail", 0, -1)]
        return Counter(queued + [json.loads(raw)["jid"] for raw in client.zrange("dead", 0, -1)])

    for delay in (0.6, 0.9):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_until(lambda: proc.poll() is None and int(client.hget("opsbot:dlq:task:mail", "moved") or 0) > 0,
                   what="the requeue to move something")
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert everywhere() == Counter(jids)                              # every job exactly once, somewhere
        assert 0 < int(client.hget("opsbot:dlq:task:mail", "moved")) < 120
        time.sleep(1.1)                                                   # the dead process's lease runs out

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "Requeued 120" in finished.stdout
    queued = [json.loads(raw)["jid"] for raw in reversed(client.lrange("queue:mail", 0, -1))]
    assert queued == argument_errors[:120]
    assert everywhere() == Counter(jids)

    with SidekiqProcess(own_redis.url, folder) as sidekiq:
        wait_until(lambda: sidekiq.alive() and client.llen("ran") == 120, what="120 jobs to run again")
        time.sleep(1.0)
    ran = [r.decode() for r in client.lrange("ran", 0, -1)]
    assert sorted(ran) == sorted(argument_errors[:120]) and len(set(ran)) == 120


# -- the backend alone, on edge cases a real Sidekiq would not produce ------------------------

def test_ties_namespaces_hostile_members_and_sidekiqs_retry_rules(tmp_path, own_redis):
    client = own_redis.client()
    settings = find_queue(_settings_with(tmp_path, own_redis.url, "namespace: myapp"), "mail")
    queue = SidekiqSet(settings, client)
    good = [json.dumps({"class": "A", "args": [i, 2 ** 70], "jid": f"j{i:04d}", "queue": "mail",
                        "retry_count": i % 2, "failed_at": 1.5e9, "error_class": "E", "error_message": "m"})
            for i in range(2500)]
    hostile = [b"\xff\x00 not json", b'{"class": 1, "args": []}', b'{"class": "B", "args": "x"}', b"[1,2]"]
    client.zadd("myapp:dead", {m: 1000.0 for m in good} | {m: 1000.0 for m in hostile})   # all the same score
    assert sum(1 for _ in queue.entries()) == 2504                        # ties walked once each, past a page
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=2504, requested_by="t")
    report = queue.run_requeue(task.id, owner="t", batch=333)
    assert report.outcome == "done" and report.task.moved == 2500
    assert sorted(client.zrange("myapp:dead", 0, -1)) == sorted(hostile)  # what Sidekiq could not run stays
    pushed = [json.loads(raw) for raw in client.lrange("myapp:queue:mail", 0, -1)]
    assert len({job["jid"] for job in pushed}) == 2500 and client.smembers("myapp:queues") == {b"mail"}
    assert {job["retry_count"] for job in pushed} == {-1, 0} and pushed[0]["args"][1] == 2 ** 70
    assert retried_job(b'{"class":"A","args":[]}', 5.0) == (
        "default", b'{"retry":true,"queue":"default","class":"A","args":[],"enqueued_at":5.0}')
    wrapped = sidekiq_view(b'{"class":"JobWrapper","wrapped":"SendMail","args":[],"error_class":"E"}')
    assert (wrapped.type, wrapped.error) == ("SendMail", "E")


def _settings_with(tmp_path, redis_url, extra):
    path = _config(tmp_path, "postgresql://127.0.0.1:5432/postgres", redis_url, ", " + extra)
    path.write_text(path.read_text().replace("queue: dead, queue:", "queue:"))
    return load_settings(path, env=os.environ)



def test_a_sidekiq_queue_names_the_dead_or_the_retry_set(tmp_path, own_redis):
    with pytest.raises(Exception, match="Sidekiq's `dead` or `retry` set, not 'mail'"):
        _settings_with(tmp_path, own_redis.url, "queue: mail").queues


# -- attacks --------------------------------------------------------------------------------

def _job(i, **extra):
    return json.dumps({"retry": 0, "queue": "mail", "args": [i, 2 ** 70], "class": "FlakyJob", "jid": f"{i:024x}",
                       "created_at": 1.7e9, "enqueued_at": 1.7e9, "error_message": "boom", "error_class": "E",
                       "failed_at": 1.7e9 + i, "retry_count": 0, **extra})


def test_sidekiqs_own_retry_and_new_deaths_during_a_paused_requeue(tmp_path, own_redis):
    """The web UI's "Retry" (Sidekiq's API) takes a job ahead of opsbot's cursor, and jobs die meanwhile:
    opsbot pushes the retried job no second time, and does not take the new dead."""
    client = own_redis.client()
    now = time.time()  # recent: Sidekiq's kill prunes dead jobs older than 6 months
    client.zadd("dead", {_job(i, failed_at=now - 600 + i): now - 600 + i for i in range(50)})
    queue = SidekiqSet(find_queue(_settings_with(tmp_path, own_redis.url, "batch: 10"), "mail"), client)
    task = queue.start_requeue(Filters(), limit=None, rate=None, matching=50, requested_by="t")
    calls = iter(range(100))
    first = queue.run_requeue(task.id, owner="a", batch=10, should_stop=lambda: next(calls) >= 2)
    assert first.outcome == "interrupted" and first.task.moved == 20
    script = ('require "sidekiq"; require "sidekiq/api"; '
              f'Sidekiq::DeadSet.new.find_job("{40:024x}").retry; '
              f'Sidekiq::DeadSet.new.kill({_job(999, failed_at=now)!r})')
    done = subprocess.run([debian_binary("ruby-sidekiq", "ruby"), "-e", script], env={**os.environ, "REDIS_URL": own_redis.url},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    second = queue.run_requeue(task.id, owner="b", batch=10)
    assert second.outcome == "done" and second.task.moved == 49
    queued = Counter(json.loads(raw)["jid"] for raw in client.lrange("queue:mail", 0, -1))
    assert queued == Counter(f"{i:024x}" for i in range(50))              # each once, the UI's retry included
    assert [json.loads(raw)["jid"] for raw in client.zrange("dead", 0, -1)] == [f"{999:024x}"]


def test_hostile_members_and_markup_never_break_a_command_or_reach_slack_unescaped(world):
    from bot.core.result import to_json
    from bot.render.blocks import to_message
    from bot.render.text import to_text

    runtime, client, *_ = world
    hostile = [b"\xff\xfe\x00binary", b"[1, 2]", b"{" * 5000, _job(1, wrapped="<!here> *x*", error_class="<@U1>").encode(),
               _job(2, error_message="\u202e\x1b[31m" + "e" * 100_000).encode(), _job(3, jid=7, failed_at="soon"),
               _job(4, args={"not": "a list"}).encode()]
    client.zadd("dead", {m: 1.0 + i for i, m in enumerate(hostile)})
    for text in ["dlq status", "status", "dlq peek mail --limit 100", "dlq peek mail --type <!here>",
                 "dlq peek mail --error <@U1>", "dlq peek mail --id 7", "dlq peek mail --older-than 1h",
                 "dlq requeue mail --older-than 1h", "dlq trim mail --keep 20"]:
        outcome = run(runtime, text)
        result = outcome.result
        assert result.status != "error" and "unexpectedly" not in result.summary, (text, result.summary)
        rendered = json.dumps(to_message(result))
        to_text(result).encode(), to_json(result).encode()
        assert "<!here>" not in rendered and "<@U1>" not in rendered and "<!channel>" not in rendered, text
        if outcome.kind == "preview":
            runtime.engine.cancel(outcome.pending.id, Actor(ALICE), OPS)
    preview = run(runtime, "dlq requeue mail --older-than 1h")
    assert "requeue 3 of 3 matching" in preview.result.summary     # jobs 1, 2 and 4 (3's failed_at is unreadable)
    done = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS).result
    queued = [json.loads(raw) for raw in client.lrange("queue:mail", 0, -1)]
    assert sorted(job["args"][0] for job in queued) == [1, 2]           # 4's args are no list: Sidekiq refuses it
    assert done.status == "ok" and done.summary.startswith("Requeued 2")
    assert client.zcard("dead") == 16 + len(hostile) - 2


def test_two_replicas_one_task_and_cancel(tmp_path, own_redis):
    import threading

    from commands.dlq.lease import LeaseBusy

    client = own_redis.client()
    now = time.time()
    client.zadd("dead", {_job(i, failed_at=now - 600 + i): now - 600 + i for i in range(400)})
    queue = SidekiqSet(find_queue(_settings_with(tmp_path, own_redis.url, "batch: 10"), "mail"), client)
    other = SidekiqSet(queue.settings, own_redis.client())
    task = queue.start_requeue(Filters(), limit=None, rate=50, matching=400, requested_by="t")
    reports = []
    driver = threading.Thread(target=lambda: reports.append(queue.run_requeue(task.id, owner="a", batch=10)))
    driver.start()
    wait_until(lambda: other.lease_holder() is not None, what="the first replica to take the lease")
    with pytest.raises(LeaseBusy):
        other.run_requeue(task.id, owner="b", batch=10)
    time.sleep(0.3)
    assert other.cancel().status == "cancelling"
    driver.join(timeout=30)
    assert reports[0].outcome == "cancelled" and 0 < reports[0].task.moved < 400
    moved = reports[0].task.moved
    assert client.llen("queue:mail") == moved and client.zcard("dead") == 400 - moved
    assert other.task().status == "cancelled" and other.lease_holder() is None


def test_redis_restarted_under_a_requeue_then_resumed_loses_and_repeats_nothing(tmp_path):
    server = RedisServer(persist=True).start()
    try:
        client = server.client()
        now = time.time()
        jobs = {_job(i, failed_at=now - 600 + i): now - 600 + i for i in range(300)}
        client.zadd("dead", jobs)
        queue = SidekiqSet(find_queue(_settings_with(tmp_path, server.url, "batch: 10"), "mail"), client)
        task = queue.start_requeue(Filters(), limit=None, rate=100, matching=300, requested_by="t")
        outcomes = []

        def drive():
            try:
                outcomes.append(queue.run_requeue(task.id, owner="a", batch=10, lease_ttl=3).outcome)
            except Exception as exc:  # the server went away under it (redis-py may also reconnect, then the
                outcomes.append(exc)  # lease, granted by the old server, is lost at the next heartbeat)

        import threading

        driver = threading.Thread(target=drive)
        driver.start()
        wait_until(lambda: int(client.hget(queue.task_key, "moved") or 0) >= 50, what="a requeue under way")
        server.restart()
        driver.join(timeout=30)
        assert outcomes and outcomes[0] != "done", outcomes
        resumed = SidekiqSet(queue.settings, server.client()).run_requeue(task.id, owner="b", batch=10)
        assert resumed.outcome == "done" and resumed.task.moved == 300
        pushed = Counter(json.loads(raw)["jid"] for raw in server.client().lrange("queue:mail", 0, -1))
        assert pushed == Counter(json.loads(m)["jid"] for m in jobs) and server.client().zcard("dead") == 0
    finally:
        server.close()


def test_the_sidekiq_backend_satisfies_the_protocol(own_redis):
    import inspect

    from commands.dlq.backend import Capabilities, DeadLetterBackend, OPERATIONS

    backend = SidekiqSet(QueueSettings(name="mail", backend="sidekiq"), own_redis.client())
    assert isinstance(backend, DeadLetterBackend) and isinstance(backend.capabilities, Capabilities)
    for name, wanted in vars(DeadLetterBackend).items():
        if name.startswith("_") or not callable(wanted):
            continue
        have = inspect.signature(getattr(type(backend), name)).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in have.values())
        for param in inspect.signature(wanted).parameters.values():
            assert param.kind is param.VAR_KEYWORD or param.name in have or \
                (takes_any and param.kind is param.KEYWORD_ONLY), f"SidekiqSet.{name} does not take {param.name}"
    assert all(backend.capabilities.supports(op) or backend.capabilities.refusal(op, "mail") for op in OPERATIONS)
    own_redis.client().set("dead", "oops")
    with pytest.raises(Exception, match="Sidekiq set 'dead' of queue 'mail' is a Redis string, not a sorted set"):
        backend.depth()


def test_trim_rereads_a_batch_when_sidekiq_prunes_or_retries_one_of_it_meanwhile(tmp_path, own_redis):
    client = own_redis.client()
    now = time.time()
    members = [_job(i, failed_at=now - 600 + i).encode() for i in range(100)]
    client.zadd("dead", {m: now - 600 + i for i, m in enumerate(members)})
    queue = SidekiqSet(find_queue(_settings_with(tmp_path, own_redis.url, "batch: 10"), "mail"), client)
    archived: list[bytes] = []

    def archive(task_id, first, entries):
        archived.extend(entries)
        if len(archived) == 30:  # between archiving and removing: Sidekiq drops one of the batch
            client.zrem("dead", entries[4])

    report = queue.run_trim(keep=40, archive=archive, batch=10, owner="t")
    assert report.outcome == "done" and report.retries == 1
    assert client.zrange("dead", 0, -1) == members[60:]                  # the newest 40 kept
    assert set(archived) == set(members[:60]) and report.dropped == 59   # the pruned one was not ours to drop


def test_the_retry_set_retry_now_does_not_use_up_an_attempt(tmp_path, own_redis):
    """`queue: retry`: jobs waiting for their next attempt (an hour away) are run now, as the web UI's
    "Retry Now" does: retry_count goes down by one (a failure raises it again: no attempt is used up)."""
    client = own_redis.client()
    client.set("failing", "1")
    folder = tmp_path / "app"
    folder.mkdir()
    jids = enqueue(own_redis.url, folder, "RetryJob", 3, start=1)
    with SidekiqProcess(own_redis.url, folder) as sidekiq:
        wait_until(lambda: sidekiq.alive() and client.zcard("retry") == 3, what="3 jobs in the retry set")
    client.set("failing", "0")
    queue = SidekiqSet(find_queue(_settings_with(tmp_path, own_redis.url, "queue: retry"), "mail"), client)
    assert queue.where() == "retry" and {e.id for e in queue.entries()} == set(jids)
    assert all(e.describe()["attempts"] == 0 for e in queue.entries())
    chosen = [e.id for e in queue.entries()][:2]
    task = queue.start_requeue(Filters(ids=tuple(chosen)), limit=None, rate=None, matching=2, requested_by="t")
    assert queue.run_requeue(task.id, owner="t").task.moved == 2
    assert [json.loads(raw)["retry_count"] for raw in client.lrange("queue:mail", 0, -1)] == [-1, -1]
    with SidekiqProcess(own_redis.url, folder) as sidekiq:
        wait_until(lambda: sidekiq.alive() and client.llen("ran") == 2, what="the 2 retried jobs to run")
        time.sleep(1.0)
    assert sorted(r.decode() for r in client.lrange("ran", 0, -1)) == sorted(chosen)
    assert [e.id for e in queue.entries()] == [j for j in jids if j not in chosen]  # the third still waits
