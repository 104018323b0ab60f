"""Progress of long actions, shown by each transport in its own way.

Usage::

    progress = Throttled(SlackProgress(client, channel, thread_ts, redactor), every=2.0)
    progress(result)      # the first update posts a message; later ones edit it, at most every 2 s

Commands call ``inv.progress(result)`` as often as they like; the transport
decides how often anything is shown.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bot.core.redact import Redactor
from bot.render.text import to_text
from bot.core.result import Result

if TYPE_CHECKING:  # slack_sdk is imported by the Slack transport that uses it, not by the terminal
    from slack_sdk import WebClient

__all__ = ["Throttled", "SlackProgress", "TerminalProgress", "finish"]

log = logging.getLogger("opsbot.progress")


class Throttled:
    def __init__(self, sink: Callable[[Result], None], every: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.sink = sink
        self.every = every
        self.clock = clock
        self._last: float | None = None
        self._lock = threading.Lock()

    def __call__(self, result: Result) -> None:
        with self._lock:
            now = self.clock()
            if self._last is not None and now - self._last < self.every:
                return
            self._last = now
        self.sink(result)

    def finish(self, result: Result) -> None:
        """The action ended: show its outcome now, whatever the throttle says."""
        finish = getattr(self.sink, "finish", None)
        if finish is not None:
            finish(result)


def finish(progress: Callable[[Result], None] | None, result: Result) -> None:
    """Tell a progress sink the action ended, if it cares."""
    end = getattr(progress, "finish", None)
    if end is not None:
        end(result)


class SlackProgress:
    """One message per action: posted on the first update, edited in place afterwards.

    Progress is best effort: when Slack refuses it for good (opsbot is not in the
    channel, the message was deleted, ...), the reason is logged once and later
    updates are not sent; the action goes on and its outcome is the reply.
    """

    def __init__(self, client: WebClient, channel: str, thread_ts: str | None, redactor: Redactor):
        self.client = client
        self.channel = channel
        self.thread_ts = thread_ts
        self.redactor = redactor
        self.ts: str | None = None
        self.given_up: str | None = None  # why progress is no longer shown

    def __call__(self, result: Result) -> None:
        from bot.render.blocks import to_message
        from bot.slack.errors import explain

        if self.given_up is not None:
            return
        message = to_message(result, self.redactor)
        try:
            if self.ts is None:
                answer = self.client.chat_postMessage(channel=self.channel, thread_ts=self.thread_ts, **message)
                self.ts = answer["ts"]
                self.channel = answer.get("channel", self.channel)
            else:
                self.client.chat_update(channel=self.channel, ts=self.ts, **message)
        except Exception as exc:  # progress is best effort; the action goes on
            problem = explain(exc, channel=self.channel)
            log.warning("could not show progress in Slack%s: %s", "; no more progress for this action"
                        if problem.permanent else "", self.redactor.text(problem.line))
            if problem.permanent:
                self.given_up = problem.line

    def finish(self, result: Result) -> None:
        """Turn the progress message, if there is one, into the outcome (its Cancel button goes)."""
        if self.ts is not None:
            self(result)


class TerminalProgress:
    def __init__(self, redactor: Redactor, stream=sys.stderr):
        self.redactor = redactor
        self.stream = stream

    def __call__(self, result: Result) -> None:
        print(to_text(result, self.redactor).splitlines()[0], file=self.stream, flush=True)
