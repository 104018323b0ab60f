"""Results that Slack would not take yet: kept in Redis and delivered later.

Usage::

    outbox.keep({"kind": "response_url", "url": url}, message, error="HTTP 500")
    outbox.retry_due()          # run by every worker's heartbeat

A post that still fails after the client's own retries is not lost: it waits here,
the action log records ``post_failed``, and the workers try again until it is
delivered (``post_delivered``) or can no longer be (a ``response_url`` dies after
30 minutes: ``post_abandoned``; channel posts are tried for a day). A refusal that
no retry can cure (a bad token, a channel opsbot is not in, a message Slack finds
invalid: :mod:`bot.slack.errors`) is abandoned at once. Each entry says why, in
one clear line (``reason``) and Slack's code (``error``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from typing import TYPE_CHECKING

from bot.core.redact import Redactor
from bot.slack.errors import SlackProblem, SlackRefused, WebhookError, explain

if TYPE_CHECKING:
    from slack_sdk import WebClient

    from bot.store.state import State

__all__ = ["Outbox"]

log = logging.getLogger("opsbot.outbox")

GIVE_UP = {"response_url": 1800.0, "chat": 86400.0}


class Outbox:
    def __init__(self, state: "State", prefix: str, redactor: Redactor, slack: WebClient | None,
                 send_webhook: Callable[[str, dict], Any]):
        self.state = state
        self.key = f"{prefix}outbox"
        self.redactor = redactor
        self.slack = slack
        self.send_webhook = send_webhook

    def keep(self, target: dict[str, str], message: dict[str, Any], error: SlackProblem | str) -> None:
        """Keep a post Slack did not take, to try again later; one it never will take is abandoned now."""
        problem = error if isinstance(error, SlackProblem) else SlackProblem("error", "unknown", error)
        if problem.permanent:
            self._log("post_abandoned", target, message, problem, attempts=1)
            return
        item = {"target": target, "message": message, "first_failed": time.time(), "attempts": 1}
        try:
            self.state.redis.lpush(self.key, json.dumps(item))
        except Exception as exc:
            log.error("could not keep an undelivered Slack post (it is lost): %s", exc)
        self._log("post_failed", target, message, problem)

    def depth(self) -> int:
        return self.state.redis.llen(self.key)

    def retry_due(self, limit: int = 20, now: float | None = None) -> int:
        """Try up to ``limit`` kept posts once; returns how many were delivered."""
        delivered = 0
        for _ in range(min(limit, self.depth())):
            raw = self.state.redis.rpop(self.key)
            if raw is None:
                break
            item = json.loads(raw)
            target, message = item["target"], item["message"]
            try:
                self._deliver(target, message)
            except Exception as exc:
                age = (now or time.time()) - item["first_failed"]
                problem = explain(exc, channel=target.get("channel"))
                if problem.permanent or age > GIVE_UP[target["kind"]]:
                    log.error("giving up on a Slack post to %s: %s", target.get("channel") or "a response_url",
                              self.redactor.text(problem.line))
                    self._log("post_abandoned", target, message, problem, attempts=item["attempts"] + 1)
                else:
                    item["attempts"] += 1
                    self.state.redis.lpush(self.key, json.dumps(item))
                continue
            delivered += 1
            self._log("post_delivered", target, message, attempts=item["attempts"] + 1)
        return delivered

    def _deliver(self, target: dict[str, str], message: dict[str, Any]) -> None:
        if target["kind"] == "response_url":
            response = self.send_webhook(target["url"], message)
            if response.status_code >= 400:
                raise WebhookError(response.status_code, str(getattr(response, "body", "") or ""))
        elif self.slack is None:
            raise SlackRefused(SlackProblem("not_authed", "auth", "opsbot has no Slack bot token: set SLACK_BOT_TOKEN "
                                            "to the app's Bot User OAuth Token (xoxb-…)"))
        else:
            self.slack.chat_postMessage(channel=target["channel"], **message)

    def _log(self, action: str, target: dict[str, str], message: dict[str, Any], problem: SlackProblem | None = None,
             **extra: Any) -> None:
        where = target.get("channel") or "response_url"
        payload = {"target": where, "summary": self.redactor.text(message.get("text", ""))[:500], **extra}
        if problem is not None:
            payload.update(error=problem.code, reason=self.redactor.text(problem.line))
        self.state.action_log.append_or_keep(action, actor="opsbot", payload=payload)
