"""The bot's own operations: metrics, logs, rate limits, Slack failures, replicas, shutdown."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest
from slack_sdk import WebClient

from bot.config.settings import load_settings
from bot.core.invocation import Actor, Where
from bot.runtime.logs import setup_logging
from bot.runtime.metrics import Metrics
from bot.core.redact import Redactor
from bot.slack.client import web_client
from tests.conftest import ALICE, BOB, BOT_TOKEN, SIGNING_SECRET, write_config
from tests.support.commands import EXECUTIONS
from tests.support.dlq import dead_letter, everything, kill
from tests.support.harness import SlackBot

OPS = Where("C-ops", channel_name="ops")


@pytest.fixture
def bot(tmp_path, database_url, redis_client, make_runtime, fake_slack, slack_env):
    """A bot whose Slack client is the real one (with its retry handlers), pointed at the fake Slack."""
    path = write_config(tmp_path / "app.yaml", database_url, api_url=fake_slack.api_url)
    metrics = Metrics()
    runtime = make_runtime(path, slack=web_client(load_settings(path), metrics), metrics=metrics)
    harness = SlackBot(runtime, fake_slack, SIGNING_SECRET)
    yield harness
    harness.close()


def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


# -- metrics --------------------------------------------------------------------------------

def test_metrics_count_commands_acks_and_confirmations(bot):
    bot.command("help")
    preview = bot.command("test bump")
    bot.click(preview, "Confirm")
    bot.command("test bump", user="UMALLORY")

    text = bot.http.get("/metrics").text

    assert metric(text, "opsbot_commands_total", command="help", outcome="ok") == 1
    assert metric(text, "opsbot_commands_total", command="test bump", outcome="ok") == 1
    assert metric(text, "opsbot_ack_duration_seconds_count") == 4
    assert metric(text, "opsbot_confirmations_total", result="confirmed") == 1
    assert metric(text, "opsbot_denials_total", reason="role") == 1
    assert "opsbot_work_queue_depth 0.0" in text and "opsbot_outbox_depth 0.0" in text
    assert "opsbot_action_log_kept_depth 0.0" in text


def test_metrics_need_the_bearer_token_when_one_is_set(tmp_path, database_url, make_runtime, fake_slack, slack_env,
                                                      monkeypatch):
    monkeypatch.setenv("TEST_METRICS_TOKEN", "scrape-me")
    path = write_config(tmp_path / "app.yaml", database_url, extra='metrics: {token: "${TEST_METRICS_TOKEN}"}\n')
    runtime = make_runtime(path, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))
    bot = SlackBot(runtime, fake_slack, SIGNING_SECRET, with_worker=False)
    try:
        assert bot.http.get("/metrics").status_code == 401
        assert bot.http.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        good = bot.http.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert good.status_code == 200 and "opsbot_commands_total" in good.text
    finally:
        bot.close()


# -- logs -----------------------------------------------------------------------------------

def test_a_token_in_a_command_never_reaches_a_log_line(bot, database_url):
    stream = io.StringIO()
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    handler = setup_logging("DEBUG", Redactor(), stream=stream, json_lines=True)
    try:
        bot.command("help xoxb-1234-secret-value token=hunter2 postgresql://app:pw-s3cret@db/x")
        bot.command("dlq-typo password=hunter2", wait=False)  # a usage error, answered in the ack
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        for old in handlers:
            root.addHandler(old)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines, "something was logged"
    text = stream.getvalue()
    for secret in ("xoxb-1234-secret-value", "hunter2", "pw-s3cret"):
        assert secret not in text
    done = [line for line in lines if line.get("command") == "help"]
    assert done and {"request_id", "team", "user", "channel", "duration_ms"} <= set(done[0])
    import psycopg

    with psycopg.connect(database_url) as conn:
        stored = conn.execute("SELECT string_agg(payload::text, ' ') FROM opsbot.action_log").fetchone()[0]
    assert "hunter2" not in stored and "xoxb-1234-secret-value" not in stored


# -- rate limits ----------------------------------------------------------------------------

def test_guarded_commands_are_limited_per_user_across_replicas(runtime, make_runtime, redis_client):
    replicas = [runtime.engine, make_runtime().engine]
    outcomes = [replicas[n % 2].handle("test bump", Actor(ALICE), OPS) for n in range(7)]

    assert [o.kind for o in outcomes] == ["preview"] * 6 + ["denied"]
    assert outcomes[-1].result.summary.startswith("Slow down: your guarded commands are limited to 6 per 1m. Try again in ")
    assert replicas[0].handle("help", Actor(ALICE), OPS).kind == "result"      # reading is not blocked yet
    assert replicas[0].handle("test bump", Actor(BOB), OPS).kind == "preview"   # others are not limited
    assert "rate_limited" in [e.action for e in runtime.state.action_log.entries()]
    assert Actor.local().local_admin and runtime.engine.handle("test bump", Actor.local(), OPS).kind == "preview"


# -- Slack failures -------------------------------------------------------------------------

def test_slack_429_is_retried_after_retry_after(bot, fake_slack):
    fake_slack.fail("chat.postMessage", status=429, body={"ok": False, "error": "ratelimited"},
                    headers={"Retry-After": "1"})

    bot.command("test bump")  # its announcement to #incidents meets the 429 first

    refused, retried = fake_slack.wait_for("chat.postMessage", count=2)[:2]
    assert retried.at - refused.at >= 0.9                                  # Slack's Retry-After was honoured
    assert refused.body == retried.body and "requested `test bump`" in retried.body["text"]
    assert metric(bot.http.get("/metrics").text, "opsbot_slack_rate_limit_waits_total") == 1


def test_a_reply_slack_refuses_is_kept_and_delivered_later(bot, fake_slack):
    fake_slack.fail("response/late", status=500, times=4)  # the first try and its 3 retries
    body = bot.command_body("help", user=ALICE, channel="C-ops", channel_name="ops", key="late", trigger="t-late")
    bot.post(body)

    actions = lambda: [e.action for e in bot.runtime.state.action_log.entries()]  # noqa: E731
    deadline = time.monotonic() + 30
    while "post_delivered" not in actions() and time.monotonic() < deadline:  # a worker heartbeat retries it
        time.sleep(0.1)

    logged = actions()
    assert logged.index("post_failed") < logged.index("post_delivered")
    delivered = fake_slack.responses("late")[-1]
    assert len(fake_slack.responses("late")) == 5 and "commands" in delivered.body["text"]
    assert bot.runtime.outbox.depth() == 0


# -- replicas and shutdown ------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serve(config, port: int, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.cli_with_test_commands", "--config", str(config), "serve",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "0", "--shutdown-deadline", "10"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"serve did not start: {proc.stderr.read()}")


@pytest.fixture
def replicas(tmp_path, database_url, redis_client, fake_slack):
    config = write_config(tmp_path / "app.yaml", database_url, api_url=fake_slack.api_url)
    env = {**os.environ, "TEST_SLACK_BOT_TOKEN": BOT_TOKEN, "TEST_SLACK_SIGNING_SECRET": SIGNING_SECRET,
           "RUN_MIGRATIONS": "true"}
    ports = [free_port(), free_port()]
    procs = [start_serve(config, port, env) for port in ports]
    bots = [SlackBot.against(f"http://127.0.0.1:{port}", fake_slack, SIGNING_SECRET) for port in ports]
    yield bots, procs, (config, env)
    for bot in bots:
        bot.close()
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


def test_two_replicas_execute_a_confirmation_once(replicas, redis_client):
    (one, two), _, _ = replicas
    preview = one.command("test bump --slow 0.3", user=ALICE)

    body = one.click_body(preview, "Confirm", user=ALICE, channel="C-ops", key="dup", trigger="trig-dup")
    first = one.post(body)                                       # clicked, delivered to replica one
    again = two.click(preview, "Confirm", user=ALICE, wait=False)  # clicked again, on replica two
    retry = two.post(body, headers={"X-Slack-Retry-Num": "1"})     # Slack retries the first on replica two

    assert first.status_code == again.http.status_code == retry.status_code == 200
    answers = [one.reply_to("dup")["text"], two.reply_to(again.key)["text"]]
    assert sorted("counter is now 1" in a for a in answers) == [False, True]
    assert int(redis_client.get(EXECUTIONS)) == 1
    one.command("help")
    assert len(one.slack.responses("dup")) == 1


def test_sigterm_during_a_requeue_checkpoints_and_it_resumes(replicas, redis_client):
    bots, procs, _ = replicas
    one = bots[0]
    entries = [dead_letter(i) for i in range(150)]
    kill(redis_client, entries)
    preview = one.command("dlq requeue --rate 40", user=ALICE)
    one.click(preview, "Confirm", user=ALICE, wait=False)
    deadline = time.monotonic() + 10
    while int(redis_client.hget("opsbot:dlq:task:jobs", "moved") or 0) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)

    # The replicas share one work queue: stop whichever one is running the requeue (its lease says).
    pid = int(redis_client.get("opsbot:dlq:lease:jobs").decode().split(":")[2])
    running = next(index for index, proc in enumerate(procs) if proc.pid == pid)
    proc, other = procs[running], bots[1 - running]
    stopped_at = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert time.monotonic() - stopped_at < 10
    assert proc.returncode == 0

    task = redis_client.hgetall("opsbot:dlq:task:jobs")
    assert task[b"status"] == b"running" and 40 <= int(task[b"moved"]) < 150
    assert everything(redis_client, "jobs", "jobs:dead") == Counter(entries)
    assert not redis_client.exists("opsbot:dlq:lease:jobs")

    resume = other.command("dlq requeue", user=ALICE)
    assert "resume the interrupted requeue" in resume.text
    done = other.click(resume, "Confirm", user=ALICE)
    assert "Requeued 150 dead letters" in done.text
    assert list(reversed(redis_client.lrange("jobs", 0, -1))) == entries
