"""Celery with opsbot's hook against a real worker: tasks fail for good, opsbot peeks and requeues some onto the
Celery queue, the worker runs exactly those again; SIGKILL mid-requeue loses and duplicates nothing."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from collections import Counter

from slack_sdk import WebClient

from bot.core.invocation import Actor, Where
from bot.render.blocks import to_message
from tests.conftest import ALICE, BOT_TOKEN, write_config
from tests.support.celeryworker import CeleryWorker, send
from tests.support.dlq import opsbot, reset_schema
from tests.support.sidekiq import wait_until

OPS = Where("C-ops", channel_name="ops")


def _config(tmp_path, database_url, redis_url, extra="", api_url="https://slack.invalid/api/"):
    path = write_config(tmp_path / "app.yaml", database_url, redis_url=redis_url, api_url=api_url)
    path.write_text(path.read_text().replace(
        '  - {name: jobs, redis: main, ready: jobs, dead: "jobs:dead"}',
        f'  - {{name: celery, redis: main, ready: celery, dead: celery.dead{extra},\n'
        '     fields: {id: headers.id, type: headers.task, attempts: headers.retries}}'))
    return path


def dead_ids(client, task="", error=""):
    """Task ids in the dead list, oldest first, of the given task and error."""
    entries = [json.loads(raw) for raw in reversed(client.lrange("celery.dead", 0, -1))]
    return [e["headers"]["id"] for e in entries if task in e["headers"]["task"] and error in e["error"]]


def fail_for_real(client, redis_url, folder, flaky, other):
    client.set("failing", "1")
    ids = send(redis_url, folder, "tasks.flaky", flaky) + send(redis_url, folder, "tasks.other", other)
    with CeleryWorker(redis_url, folder) as worker:
        wait_until(lambda: worker.alive() and client.llen("celery.dead") == flaky + other, timeout=120,
                   what="every task to fail for good")
    client.set("failing", "0")
    return ids


def test_peek_and_requeue_a_subset_that_the_celery_worker_runs_again(tmp_path, own_redis, database_url,
                                                                     make_runtime, fake_slack):
    client = own_redis.client()
    folder = tmp_path / "app"
    folder.mkdir()
    ids = fail_for_real(client, own_redis.url, folder, 9, 3)
    runtime = make_runtime(_config(tmp_path, database_url, own_redis.url, api_url=fake_slack.api_url),
                           slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))

    def run(text):
        return runtime.engine.handle(text, Actor(ALICE), OPS)

    peek = run("dlq peek celery --type tasks.flaky --error valueerror").result
    value_errors = dead_ids(client, task="tasks.flaky", error="ValueError")
    assert peek.data["matching"] == 6 == len(value_errors) and peek.data["dead"] == 12
    shown = peek.data["entries"]
    assert [e["id"] for e in shown] == value_errors
    assert shown[0]["attempts"] == 1 and shown[0]["error"].startswith("ValueError: bad input")  # retried once first
    assert [e["id"] for e in run(f"dlq peek celery --id {ids[10]}").result.data["entries"]] == [ids[10]]
    assert run("dlq peek celery --type tasks.other").result.data["matching"] == 3
    rendered = json.dumps(to_message(peek))                           # the error's markup reaches Slack escaped
    assert "<b>" not in rendered and "&lt;b&gt;" in rendered

    preview = run("dlq requeue celery --type tasks.flaky --error valueerror --limit 4")
    assert preview.kind == "preview" and "requeue 4 of 6 matching" in preview.result.summary
    done = runtime.engine.confirm(preview.pending.id, Actor(ALICE), OPS)
    assert done.result.status == "ok" and done.result.summary.startswith("Requeued 4"), done.result.summary
    message = json.loads(client.lindex("celery", -1))
    args, kwargs, embed = json.loads(base64.b64decode(message["body"]))
    assert args[1] == 2 ** 70 and message["headers"]["task"] == "tasks.flaky"

    with CeleryWorker(own_redis.url, folder) as worker:
        wait_until(lambda: worker.alive() and client.llen("ran") == 4, what="the 4 requeued tasks to run")
        time.sleep(1.0)
    assert sorted(r.decode() for r in client.lrange("ran", 0, -1)) == sorted(value_errors[:4])
    assert client.llen("celery") == 0 and client.llen("celery.dead") == 8


def test_a_requeue_killed_mid_way_resumes_and_the_worker_runs_each_task_once(tmp_path, own_redis, database_url):
    reset_schema(database_url)
    client = own_redis.client()
    folder = tmp_path / "app"
    folder.mkdir()
    ids = fail_for_real(client, own_redis.url, folder, 0, 240)
    value_errors = dead_ids(client, error="ValueError")
    assert len(value_errors) == 160
    path = _config(tmp_path, database_url, own_redis.url, ", batch: 10, lease_ttl: 1s")
    env = {**os.environ, "RUN_MIGRATIONS": "true"}
    command = opsbot(path, "dlq requeue celery --error ValueError --limit 120 --rate 60")

    def everywhere() -> Counter:  # the Celery queue, the dead list, and what the task set aside meanwhile
        keys = ["celery", "celery.dead", *client.keys("opsbot:dlq:held:*")]
        return Counter(json.loads(raw)["headers"]["id"] for key in keys for raw in client.lrange(key, 0, -1))

    for delay in (0.6, 0.9):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_until(lambda: proc.poll() is None and int(client.hget("opsbot:dlq:task:celery", "moved") or 0) > 0,
                   what="the requeue to move something")
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert everywhere() == Counter(ids)
        assert 0 < int(client.hget("opsbot:dlq:task:celery", "moved")) < 120
        time.sleep(1.1)

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0 and "Requeued 120" in finished.stdout, finished.stdout + finished.stderr
    assert everywhere() == Counter(ids)
    with CeleryWorker(own_redis.url, folder) as worker:
        wait_until(lambda: worker.alive() and client.llen("ran") == 120, what="120 tasks to run again")
        time.sleep(1.0)
    ran = [r.decode() for r in client.lrange("ran", 0, -1)]
    assert sorted(ran) == sorted(value_errors[:120]) and len(set(ran)) == 120


def test_field_paths_select_the_same_entries_in_lua_and_in_python(own_redis):
    from commands.dlq.entries import Filters
    from commands.dlq.redis_list import RedisListQueue
    from commands.dlq.settings import QueueSettings

    client = own_redis.client()
    fields = {"id": "headers.id", "type": "headers.task", "failedAt": "meta.when"}
    queue = RedisListQueue(QueueSettings(name="c", ready="celery", dead="celery.dead", fields=fields), client)
    entries = [{"headers": {"id": "a", "task": "t.x"}, "error": "ValueError: x", "meta": {"when": 1000}},
               {"headers": {"id": 7, "task": "t.y"}, "error": "KeyError: k", "meta": {"when": "2001-01-01T00:00:00Z"}},
               {"headers": ["not", "an", "object"], "error": "ValueError: y", "meta": None},
               {"headers": {"id": None, "task": {"nested": "t.x"}}, "type": "t.x", "id": "a"},
               {"headers": {"task": "t.x"}, "error": 5, "meta": {"when": 10 ** 12}}]
    client.lpush("celery.dead", *[json.dumps(e) for e in entries])
    for filters in [Filters(), Filters(type="t.x"), Filters(ids=("a", "7")), Filters(error="valueerror"),
                    Filters(older_than=60), Filters(type="t.y", ids=("7",))]:
        summary = queue.scan(filters, samples=10)                          # filtered in Lua
        in_python = [e.raw for e in queue.entries(filters)]
        assert [e.raw for e in summary.samples] == in_python, filters
        assert summary.matched == len(in_python)
    summary = queue.scan(Filters(), samples=10)
    assert summary.types == Counter({"t.x": 2, "t.y": 1, "(none)": 2})
    task = queue.start_requeue(Filters(type="t.x"), limit=None, rate=None, matching=2, requested_by="t")
    assert queue.run_requeue(task.id, owner="t").task.moved == 2
    assert sorted(json.loads(raw)["headers"]["task"] for raw in client.lrange("celery", 0, -1)) == ["t.x", "t.x"]
