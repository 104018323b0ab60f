"""The work queue between ack and work: nothing acked is lost, nothing runs twice, workers survive."""

from __future__ import annotations

import os
import signal
import time

import pytest
from slack_sdk import WebClient

from bot.slack.work import SlackWork
from bot.runtime.worker import Worker
from bot.store.workqueue import WorkQueue
from tests.conftest import BOT_TOKEN, SIGNING_SECRET, write_config
from tests.support.harness import SlackBot
from tests.support.servers import RedisServer


def command_body(fake_slack, text="help", key="k1", trigger="t1"):
    return {"user_id": "UALICE", "team_id": "T1", "channel_id": "C-ops", "channel_name": "ops", "command": "/ops",
            "text": text, "response_url": fake_slack.response_url(key), "trigger_id": trigger}


def test_jobs_of_a_worker_that_died_are_recovered_and_run(runtime, fake_slack):
    queue = WorkQueue(runtime.state.redis, runtime.settings.state.prefix)
    queue.push("command", command_body(fake_slack))
    taken = queue.take("dead-worker", timeout=1)  # taken, then the worker died before finishing
    assert taken is not None and queue.depth() == 0

    worker = Worker(runtime, threads=1).start()  # a new worker recovers it on its first heartbeat
    try:
        reply = fake_slack.wait(lambda s: s.responses("k1"))[0]
    finally:
        worker.stop()
    assert "commands" in reply.body["text"]
    assert runtime.state.redis.keys("opsbot:work:processing:*") == []


def test_a_recovered_job_runs_again_but_a_retried_copy_does_not(runtime, fake_slack):
    queue = WorkQueue(runtime.state.redis, runtime.settings.state.prefix)
    work = SlackWork(runtime)
    queue.push("command", command_body(fake_slack, key="first"))
    job = queue.take("w", timeout=1)
    work.run(job)
    work.run(job)  # the same job again, as after recovery: allowed
    queue.push("command", command_body(fake_slack, key="retry"))  # Slack's retry: same trigger_id, new copy
    work.run(queue.take("w", timeout=1))

    fake_slack.wait(lambda s: len(s.responses("first")) == 2)
    assert fake_slack.responses("retry") == []


def test_jobs_too_old_to_answer_are_dropped(runtime, fake_slack):
    queue = WorkQueue(runtime.state.redis, runtime.settings.state.prefix)
    queue.push("command", command_body(fake_slack, key="old"))
    job = queue.take("w", timeout=1)

    SlackWork(runtime).run(job, now=job.enqueued_at + 3600)

    assert runtime.state.action_log.entries() == []


def test_a_worker_survives_slack_being_unreachable(runtime, fake_slack):
    queue = WorkQueue(runtime.state.redis, runtime.settings.state.prefix)
    worker = Worker(runtime, threads=1).start()
    try:
        bad = command_body(fake_slack, key="x", trigger="t-bad")
        bad["response_url"] = "http://127.0.0.1:9/unreachable"
        queue.push("command", bad)
        queue.push("command", command_body(fake_slack, key="after", trigger="t-after"))
        reply = fake_slack.wait(lambda s: s.responses("after"))[0]
    finally:
        worker.stop()
    assert "commands" in reply.body["text"]


def test_worker_stop_hands_back_what_it_did_not_start(runtime, fake_slack):
    queue = WorkQueue(runtime.state.redis, runtime.settings.state.prefix)
    queue.push("command", command_body(fake_slack))
    queue.take("leaving", timeout=1)

    queue.leave("leaving")

    assert queue.depth() == 1


@pytest.fixture
def bot_without_redis(tmp_path, database_url, make_runtime, fake_slack, slack_env):
    path = write_config(tmp_path / "app.yaml", database_url, redis_url="redis://127.0.0.1:1/0")
    runtime = make_runtime(path, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))
    bot = SlackBot(runtime, fake_slack, SIGNING_SECRET, with_worker=False)
    yield bot
    bot.close()


def test_when_the_queue_is_down_the_user_is_told_at_once(bot_without_redis):
    started = time.perf_counter()
    reply = bot_without_redis.command("help", wait=False)

    assert reply.http.status_code == 200
    assert time.perf_counter() - started < 3.0
    assert "cannot take work right now" in reply.http.json()["text"]


def test_readyz_answers_503_naming_redis(bot_without_redis):
    ready = bot_without_redis.http.get("/readyz")

    assert ready.status_code == 503
    body = ready.json()
    assert body["ok"] is False and body["checks"]["postgres"] == "ok"
    assert body["checks"]["redis"].startswith("error:")
    assert bot_without_redis.http.get("/healthz").status_code == 200


@pytest.fixture
def bot_on_a_redis_that_hangs(tmp_path, database_url, make_runtime, fake_slack, slack_env):
    """The bot's state Redis is a server of the test's own, stopped (SIGSTOP) once the bot is up."""
    with RedisServer() as server:
        path = write_config(tmp_path / "app.yaml", database_url, redis_url=server.url)
        runtime = make_runtime(path, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))
        bot = SlackBot(runtime, fake_slack, SIGNING_SECRET, with_worker=False)
        os.kill(server.pid, signal.SIGSTOP)
        try:
            yield bot, server
        finally:
            os.kill(server.pid, signal.SIGCONT)
            bot.close()


def test_when_the_queue_hangs_the_user_is_told_before_slack_gives_up(bot_on_a_redis_that_hangs):
    bot, server = bot_on_a_redis_that_hangs
    started = time.perf_counter()
    reply = bot.command("help", wait=False)

    assert reply.http.status_code == 200
    assert time.perf_counter() - started < 3.0  # Slack's limit for an ack; the general client waited 5 s
    text = reply.http.json()["text"]
    assert "did not answer within a second" in text and "may or may not have been queued" in text

    os.kill(server.pid, signal.SIGCONT)  # it answers again: the next request is queued as usual
    again = bot.command("help", wait=False).http
    assert again.status_code == 200 and "queued" not in again.text
    assert server.client().llen("opsbot:work:queue") >= 1


def test_when_the_queue_hangs_every_ack_of_a_burst_is_told_before_slack_gives_up(bot_on_a_redis_that_hangs):
    """Commands eight at once (waitress's eight threads) on a Redis that went quiet: their pushes gather behind
    one LPUSH in flight. Each is answered before Slack's 3 s: those in a timed-out LPUSH hear it may or may not
    have been queued, those gathered behind it that it was not (they are not sent into the same silence)."""
    from concurrent.futures import ThreadPoolExecutor

    bot, _ = bot_on_a_redis_that_hangs

    def timed(n: int) -> tuple[float, int, str]:
        started = time.perf_counter()
        reply = bot.command("help", wait=False).http
        return time.perf_counter() - started, reply.status_code, reply.json()["text"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(timed, range(24)))
    slow = [text for _, _, text in answers if "may or may not have been queued" in text]
    down = [text for _, _, text in answers if "cannot take work right now" in text]
    assert all(status == 200 for _, status, _ in answers) and len(slow) + len(down) == len(answers), answers
    assert max(took for took, _, _ in answers) < 3.0, sorted(took for took, _, _ in answers)
