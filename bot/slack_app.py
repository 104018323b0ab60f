"""The Slack side: a Bolt app built by a factory. It verifies, acks and queues; workers do the rest.

Usage::

    app = build_app(runtime, WorkQueue(runtime.state.redis))
    SlackRequestHandler(app)                 # HTTP (see bot.http), or SocketModeHandler(app, token)

``/ops`` and button clicks are acknowledged at once. Before the ack, the
delivery is pushed onto the Redis work queue, so an acked request is never
lost. A usage error is answered in the ack itself. If the queue cannot be
reached, the user is told so at once. Worker processes (:mod:`bot.worker`)
carry the work out with :class:`bot.slack_work.SlackWork`.
"""

from __future__ import annotations

import logging
import re

from slack_bolt import Ack, App, BoltResponse

from bot.parser import UsageError
from bot.render.blocks import ACTION_PREFIX
from bot.runtime import Runtime
from bot.workqueue import WorkQueue

__all__ = ["build_app"]

log = logging.getLogger("opsbot.slack")

QUEUE_DOWN = ":x: opsbot cannot take work right now (its Redis is unreachable); nothing was run. " \
             "Use `opsbot run` from a terminal, or try again shortly."


def build_app(runtime: Runtime, queue: WorkQueue) -> App:
    settings = runtime.settings
    if runtime.slack is None:
        raise ValueError("the Slack app needs a bot token (SLACK_BOT_TOKEN)")
    secret = settings.slack.signing_secret.get_secret_value() if settings.slack.signing_secret else None
    app = App(
        signing_secret=secret,
        client=runtime.slack,
        token_verification_enabled=False,
        request_verification_enabled=secret is not None,
        logger=logging.getLogger("opsbot.bolt"),
    )

    def ack_command(ack: Ack, body: dict) -> None:
        try:
            runtime.engine.parse(body.get("text", ""))
        except UsageError as exc:
            ack(text=runtime.redactor.text(str(exc)), response_type="ephemeral")
            return
        _enqueue(ack, queue, "command", body)

    def ack_action(ack: Ack, body: dict) -> None:
        _enqueue(ack, queue, "action", body)

    app.command(settings.slack.command)(ack_command)
    app.action(re.compile(rf"^{ACTION_PREFIX}(confirm|cancel|run)"))(ack_action)
    app.error(_on_error)
    return app


def _enqueue(ack: Ack, queue: WorkQueue, kind: str, body: dict) -> None:
    try:
        queue.push(kind, body)
    except Exception as exc:
        log.error("could not queue a %s: %s", kind, exc)
        ack(text=QUEUE_DOWN, response_type="ephemeral")
        return
    ack()


def _on_error(error: Exception, body: dict) -> BoltResponse:
    log.error("unhandled error for %s: %r", body.get("type") or body.get("command"), error, exc_info=error)
    return BoltResponse(status=500, body="")
