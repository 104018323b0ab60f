"""Post results to the incident channel through the Web API.

Usage::

    SlackNotifier(client, "#incidents", redactor, outbox, metrics).announce(result, where)

A post Slack refuses is never lost silently: it is logged in one clear line
(:mod:`bot.slack.errors`), kept in the outbox to be retried, or, when no retry can
help, recorded as abandoned with the reason. A message Slack finds invalid (an
opsbot bug) is posted again as plain text, so the channel still hears of it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bot.core.invocation import Where
from bot.runtime.metrics import Metrics
from bot.store.outbox import Outbox
from bot.core.redact import Redactor
from bot.render.blocks import to_message
from bot.core.result import Result
from bot.slack.errors import explain, plain_fallback

if TYPE_CHECKING:
    from slack_sdk import WebClient

__all__ = ["SlackNotifier", "post_or_keep"]

log = logging.getLogger("opsbot.slack")

SETTING = "slack.incident_channel"


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
        post_or_keep(self.client, self.outbox, self.metrics, self.channel, to_message(result, self.redactor),
                     setting=SETTING)


def post_or_keep(client: WebClient, outbox: Outbox, metrics: Metrics, channel: str, message: dict, *,
                 setting: str | None = None) -> None:
    """``chat.postMessage`` now; if Slack refuses, say why and keep it for the workers to retry (or abandon it).

    ``setting`` names the configuration that chose ``channel``, for the advice in the log line.
    """
    try:
        client.chat_postMessage(channel=channel, **message)
        return
    except Exception as exc:
        problem = explain(exc, channel=channel, setting=setting)
    metrics.slack_errors.labels(kind="post_failed").inc()
    log.error("could not post to %s, %s: %s", channel, "giving up" if problem.permanent else "keeping it for later",
              outbox.redactor.text(problem.line))
    outbox.keep({"kind": "chat", "channel": channel}, message, problem)
    if problem.kind == "content":
        try:
            client.chat_postMessage(channel=channel, **plain_fallback(message, problem))
        except Exception as exc:
            why = explain(exc, channel=channel).line
            log.error("the plain-text copy was refused too: %s", outbox.redactor.text(why))
