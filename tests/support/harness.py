"""Drive ``opsbot serve`` the way Slack does: signed HTTP requests, replies read from the fake Web API.

Usage::

    reply = bot.command("help")                       # signed /ops help; waits for the response_url post
    preview = bot.command("test bump", user=ALICE)
    bot.click(preview, "Confirm", user=ALICE)         # signed block_actions for that button
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx
from slack_sdk.signature import SignatureVerifier

from bot.runtime.http import HttpServer
from bot.runtime.factory import Runtime
from bot.slack.app import Intake
from bot.runtime.worker import Worker
from bot.store.workqueue import WorkQueue
from tests.support.fakeslack import FakeSlack

__all__ = ["SlackBot", "Reply"]

_ids = itertools.count(1)


@dataclass
class Reply:
    """What the bot sent to one response_url, plus the HTTP answer to the request itself."""

    http: httpx.Response
    key: str
    body: dict | None = None

    @property
    def text(self) -> str:
        return (self.body or {}).get("text", "")

    @property
    def blocks(self) -> list[dict]:
        return (self.body or {}).get("blocks", [])

    def button(self, label: str, value: str | None = None) -> dict:
        for block in self.blocks:
            elements = block.get("elements", []) if block["type"] == "actions" else [block.get("accessory") or {}]
            for element in elements:
                if element.get("type") == "button" and element["text"]["text"] == label \
                        and value in (None, element.get("value")):
                    return {**element, "block_id": block.get("block_id", "b")}
        raise AssertionError(f"no {label!r} button in {self.blocks}")


class SlackBot:
    def __init__(self, runtime: Runtime, slack: FakeSlack, signing_secret: str, *, with_worker: bool = True):
        self.runtime = runtime
        self.slack = slack
        self.verifier = SignatureVerifier(signing_secret)
        queue = WorkQueue(runtime.state.ack_redis, runtime.settings.state.prefix)
        self.server = HttpServer(runtime, Intake(runtime, queue), host="127.0.0.1", port=0)
        self.server.start()
        self.worker = Worker(runtime, threads=4).start() if with_worker else None
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.server.port}", timeout=10)

    @classmethod
    def against(cls, base_url: str, slack: FakeSlack, signing_secret: str) -> "SlackBot":
        """Talk to an ``opsbot serve`` running elsewhere (another process)."""
        bot = cls.__new__(cls)
        bot.runtime, bot.slack, bot.server, bot.worker = None, slack, None, None
        bot.verifier = SignatureVerifier(signing_secret)
        bot.http = httpx.Client(base_url=base_url, timeout=10)
        return bot

    def close(self) -> None:
        self.http.close()
        if self.server:
            self.server.stop()
        if self.worker:
            self.worker.stop()

    # -- requests as Slack sends them ------------------------------------------------------

    def post(self, body: str, *, timestamp: int | None = None, signature: str | None = None,
             headers: dict | None = None) -> httpx.Response:
        timestamp = int(time.time()) if timestamp is None else timestamp
        signature = signature or self.verifier.generate_signature(timestamp=str(timestamp), body=body)
        all_headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": str(timestamp),
            "X-Slack-Signature": signature,
            **(headers or {}),
        }
        response = self.http.post("/slack/events", content=body.encode(), headers=all_headers)
        if response.status_code == 200 and response.headers.get("content-type", "").startswith("application/json"):
            answer = response.json()
            if isinstance(answer, dict) and ("text" in answer or "blocks" in answer):
                self.slack.acked(answer)  # a message in the ack is checked like any other
        return response

    def command_body(self, text: str, *, user: str, channel: str, channel_name: str, key: str, trigger: str) -> str:
        return urlencode({
            "token": "legacy", "team_id": "T1", "team_domain": "test", "channel_id": channel,
            "channel_name": channel_name, "user_id": user, "user_name": user.lower(), "command": "/ops",
            "text": text, "api_app_id": "A1", "response_url": self.slack.response_url(key), "trigger_id": trigger,
        })

    def command(self, text: str, *, user: str = "UALICE", channel: str = "C-ops", channel_name: str = "ops",
                wait: bool = True, **post_kw) -> Reply:
        key = f"cmd{next(_ids)}"
        body = self.command_body(text, user=user, channel=channel, channel_name=channel_name, key=key,
                                 trigger=f"trig-{key}")
        reply = Reply(self.post(body, **post_kw), key)
        if wait:
            reply.body = self.reply_to(key)
        return reply

    def click_body(self, reply: Reply, label: str, *, user: str, channel: str, key: str, trigger: str,
                   value: str | None = None, thread_ts: str | None = None) -> str:
        button = reply.button(label, value)
        payload = {
            "type": "block_actions",
            "team": {"id": "T1", "domain": "test"},
            "user": {"id": user, "team_id": "T1", "username": user.lower()},
            "api_app_id": "A1",
            "trigger_id": trigger,
            "channel": {"id": channel, "name": "ops"},
            "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": channel,
                          **({"thread_ts": thread_ts} if thread_ts else {})},
            "response_url": self.slack.response_url(key),
            "actions": [{
                "type": "button", "action_id": button["action_id"], "block_id": button["block_id"],
                "value": button.get("value", ""), "text": button["text"], "action_ts": f"{time.time():.6f}",
            }],
        }
        return urlencode({"payload": json.dumps(payload)})

    def click(self, reply: Reply, label: str, *, user: str = "UALICE", channel: str = "C-ops",
              wait: bool = True, value: str | None = None, thread_ts: str | None = None, **post_kw) -> Reply:
        key = f"click{next(_ids)}"
        body = self.click_body(reply, label, user=user, channel=channel, key=key, trigger=f"trig-{key}", value=value,
                               thread_ts=thread_ts)
        result = Reply(self.post(body, **post_kw), key)
        if wait:
            result.body = self.reply_to(key)
        return result

    def ready(self, _=None) -> tuple[float, int, dict]:
        """GET /readyz as a load balancer's probe: (seconds it took, status, body)."""
        started = time.monotonic()
        answer = self.http.get("/readyz")
        return time.monotonic() - started, answer.status_code, answer.json()

    def reply_to(self, key: str, timeout: float = 10.0) -> dict:
        return self.slack.wait(lambda s: (s.responses(key) or [None])[0], timeout).body
