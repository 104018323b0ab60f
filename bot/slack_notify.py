"""Post results to the incident channel through the Web API.

Usage::

    SlackNotifier(client, "#incidents", redactor).announce(result, where)
"""

from __future__ import annotations

import logging

from slack_sdk import WebClient

from bot.invocation import Where
from bot.metrics import Metrics
from bot.outbox import Outbox
from bot.redact import Redactor
from bot.render.blocks import to_message
from bot.result import Result

__all__ = ["SlackNotifier", "post_or_keep"]

log = logging.getLogger("opsbot.slack")


class SlackNotifier:
    def __init__(self, client: WebClient, channel: str, redactor: Redactor, outbox: Outbox, metrics: Metrics):
        self.client = client
        self.channel = channel
        self.redactor = redactor
        self.outbox = outbox
        self.metrics = metrics

    def announce(self, result: Result, where: Where) -> None:
        """Post to the incident channel, unless the result was produced there already; never lose it."""
        if where.is_channel(self.channel):
            return
        post_or_keep(self.client, self.outbox, self.metrics, self.channel, to_message(result, self.redactor))


def post_or_keep(client: WebClient, outbox: Outbox, metrics: Metrics, channel: str, message: dict) -> None:
    """``chat.postMessage`` now; if Slack refuses, count it and keep it in the outbox for the workers to retry."""
    try:
        client.chat_postMessage(channel=channel, **message)
    except Exception as exc:
        metrics.slack_errors.labels(kind="post_failed").inc()
        log.error("could not post to %s, keeping it for later: %s", channel, exc)
        outbox.keep({"kind": "chat", "channel": channel}, message, error=str(exc))
