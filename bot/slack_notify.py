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

__all__ = ["SlackNotifier"]

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
        message = to_message(result, self.redactor)
        try:
            self.client.chat_postMessage(channel=self.channel, **message)
        except Exception as exc:
            self.metrics.slack_errors.labels(kind="post_failed").inc()
            log.error("could not post to %s, keeping it for later: %s", self.channel, exc)
            self.outbox.keep({"kind": "chat", "channel": self.channel}, message, error=str(exc))
