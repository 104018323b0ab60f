"""The Webhook seam of the Group contract: any group can offer an HTTP intake on `opsbot serve`; the framework
authenticates it, queues it durably, and hands the body to the group in a worker, again when the handler fails."""

from __future__ import annotations

import json
import os
import time

import pytest
from slack_sdk import WebClient

from bot.config.settings import installed_groups, load_settings
from bot.core.group import Group, Webhook
from bot.runtime.factory import Runtime
from tests.conftest import BOT_TOKEN, SIGNING_SECRET
from tests.support.harness import SlackBot

TOKEN = "hook-token-0123456789"
FAILS = {"left": 0}


def _handle(runtime, body: dict) -> None:
    if FAILS["left"] > 0:
        FAILS["left"] -= 1
        raise RuntimeError("the target is down")
    runtime.state.redis.rpush("hooktest:got", json.dumps(body))


HOOKED = Group("hooked", commands=(), webhooks=(Webhook("/hooks/test", credentials=lambda settings: (TOKEN, None),
                                                        handle=_handle, max_bytes=lambda settings: 4096),))


@pytest.fixture
def bot(config_path, fake_slack, slack_env):
    runtime = Runtime.build(load_settings(config_path, env=os.environ),
                            slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url),
                            groups=[*installed_groups(), HOOKED])
    runtime.state.migrate()
    harness = SlackBot(runtime, fake_slack, SIGNING_SECRET)
    yield harness
    harness.close()
    runtime.close()


def _got(bot, count: int) -> list[dict]:
    redis = bot.runtime.state.redis
    for _ in range(300):
        if redis.llen("hooktest:got") >= count:
            break
        time.sleep(0.05)
    return [json.loads(raw) for raw in redis.lrange("hooktest:got", 0, -1)]


def test_a_groups_webhook_is_authenticated_queued_and_handled_again_after_a_failure(bot):
    FAILS["left"] = 1
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert bot.http.post("/hooks/test", json={"n": 1}).status_code == 401
    assert bot.http.post("/hooks/test", json={"n": 1}, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert bot.http.post("/hooks/test", content=b"x" * 5000, headers=auth).status_code == 413
    assert bot.http.post("/hooks/test", json={"n": 2}, headers=auth).status_code == 200
    assert _got(bot, 1) == [{"n": 2}]  # handled on its second attempt
    assert FAILS["left"] == 0
