"""Root messages and their threads in one channel: a colour-coded root message, edited in place, and its thread.

Usage (a group gets one from the runtime: ``runtime.board(channel, setting=...)``)::

    board = SlackBoard(client, "#ops", redactor, outbox, metrics, setting="ops.channel")
    channel, ts = board.post_root(root_result, "#E01E5A")
    board.update_root(channel, ts, root_result, "#ECB22E")
    board.post_thread(channel, ts, Result.ok("restarted the worker"))
    board.post(Result.warn("scheduled check: 3 dead letters"), "#ECB22E")   # a message of its own

The root message is the desk's :class:`~bot.core.result.Result` rendered as usual and
wrapped in an attachment for the colour bar. A thread post Slack refuses goes to
the outbox and is retried; the root message itself must succeed (its ``ts`` is the
thread's home), so its failure is raised to the caller, as a
:class:`~bot.slack.errors.SlackRefused` whose text says what to fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.runtime.metrics import Metrics
from bot.store.outbox import Outbox
from bot.core.redact import Redactor
from bot.render.blocks import to_message
from bot.core.result import Attachment, Result
from bot.slack.client import upload_attachment
from bot.slack.errors import SlackRefused, explain
from bot.slack.notify import post_or_keep

if TYPE_CHECKING:
    from slack_sdk import WebClient

__all__ = ["SlackBoard"]

class SlackBoard:
    def __init__(self, client: WebClient, channel: str, redactor: Redactor, outbox: Outbox, metrics: Metrics,
                 setting: str = "the channel setting"):
        self.client = client
        self.setting = setting  # the app.yaml key naming the channel, for error messages
        self.channel = channel
        self.redactor = redactor
        self.outbox = outbox
        self.metrics = metrics

    def _colored(self, message: Result, color: str) -> dict:
        rendered = to_message(message, self.redactor)
        return {"text": rendered["text"], "attachments": [{"color": color, "blocks": rendered["blocks"]}]}

    def post_root(self, message: Result, color: str) -> tuple[str, str]:
        try:
            response = self.client.chat_postMessage(channel=self.channel, **self._colored(message, color))
        except Exception as exc:
            raise self._refused(exc, self.channel) from exc
        return response["channel"], response["ts"]

    def update_root(self, channel: str, ts: str, message: Result, color: str) -> None:
        try:
            self.client.chat_update(channel=channel, ts=ts, **self._colored(message, color))
        except Exception as exc:
            raise self._refused(exc, channel) from exc

    def post(self, message: Result, color: str) -> None:
        """A colour-coded message of its own (no thread expected); one Slack refuses goes to the outbox."""
        post_or_keep(self.client, self.outbox, self.metrics, self.channel, self._colored(message, color),
                     setting=self.setting)

    def post_thread(self, channel: str, ts: str, message: Result) -> None:
        post_or_keep(self.client, self.outbox, self.metrics, channel, {**to_message(message, self.redactor),
                                                                        "thread_ts": ts}, setting=self.setting)

    def upload_thread(self, channel: str, ts: str, attachment: Attachment) -> None:
        try:
            upload_attachment(self.client, attachment, channel=channel, thread_ts=ts)
        except Exception as exc:
            raise self._refused(exc, channel) from exc
        finally:
            attachment.discard()

    def _refused(self, exc: Exception, channel: str) -> SlackRefused:
        problem = explain(exc, channel=channel, setting=self.setting)
        self.metrics.slack_errors.labels(kind="post_failed").inc()
        return SlackRefused(problem)
