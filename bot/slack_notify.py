"""Post results to the incident channel through the Web API.

Usage::

    SlackNotifier(client, "#incidents", redactor).announce(result, where)
"""

from __future__ import annotations

from slack_sdk import WebClient

from bot.invocation import Where
from bot.redact import Redactor
from bot.render.blocks import to_message
from bot.result import Result

__all__ = ["SlackNotifier"]


class SlackNotifier:
    def __init__(self, client: WebClient, channel: str, redactor: Redactor):
        self.client = client
        self.channel = channel
        self.redactor = redactor

    def announce(self, result: Result, where: Where) -> None:
        """Post to the incident channel, unless the result was produced there already."""
        if where.is_channel(self.channel):
            return
        self.client.chat_postMessage(channel=self.channel, **to_message(result, self.redactor))
