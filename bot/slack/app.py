"""The Slack side: a Bolt app built by a factory. It verifies, acks and queues; workers do the rest.

Usage::

    intake = Intake(runtime, WorkQueue(runtime.state.ack_redis))
    app = build_app(runtime, intake)
    SlackRequestHandler(app)                 # HTTP (see bot.runtime.http), or SocketModeHandler(app, token)

``/ops`` and button clicks are acknowledged at once. Before the ack, the
delivery is pushed onto the Redis work queue, so an acked request is never
lost. A usage error is answered in the ack itself. If the queue cannot be
reached, the user is told so at once. Worker processes (:mod:`bot.runtime.worker`)
carry the work out with :class:`bot.slack.work.SlackWork`.

What happens before an ack is :class:`Intake`'s, and knows no Bolt: it answers a
delivery with the text to ack with (None for a plain ack). The Bolt listeners
call it, and so does ``opsbot serve`` for a slash command directly, without Bolt
(see :mod:`bot.runtime.http`).

The listeners run in the request's own thread and the answer goes out as soon as they
return (Bolt's ``process_before_response``): all they do before the ack is a parse and
one Redis push. Left to Bolt's default, each listener would run on another thread while
the request's thread polled for the ack every 10 ms, adding up to 10 ms to every ack.
The one slow step, opening a form (a Slack API call), runs after the ack as a lazy
listener.
"""

from __future__ import annotations

import logging
import re
import shlex

from redis.exceptions import TimeoutError as RedisTimeout
from slack_bolt import Ack, App, BoltResponse

from bot.core.parser import UsageError
from bot.core.result import Form
from bot.render.blocks import ACTION_PREFIX
from bot.runtime.factory import Runtime
from bot.slack.client import webhook
from bot.slack.errors import explain
from bot.slack.work import PARSED
from bot.store.workqueue import WorkQueue

__all__ = ["Intake", "build_app", "form_view"]

log = logging.getLogger("opsbot.slack")

QUEUE_DOWN = ":x: opsbot cannot take work right now (its Redis is unreachable); nothing was run. " \
             "Use `opsbot run` from a terminal, or try again shortly."
QUEUE_SLOW = ":warning: opsbot's Redis did not answer within a second, so this request may or may not have been " \
             "queued. Watch for its answer here; if none comes, try again or use `opsbot run` from a terminal."


class Intake:
    """What is done with a delivery before its ack: the text to ack with, or None for a plain ack."""

    def __init__(self, runtime: Runtime, queue: WorkQueue):
        self.runtime = runtime
        self.queue = queue

    def command(self, body: dict) -> str | None:
        """A slash command: parsed (a usage error is the answer), then queued with its parse."""
        try:
            parsed = self.runtime.engine.parse(body.get("text", ""))
        except UsageError as exc:
            return self.runtime.redactor.text(str(exc))
        return self.enqueue("command", {**body, PARSED: parsed.to_dict()})  # the worker does not parse again

    def enqueue(self, kind: str, body: dict) -> str | None:
        try:
            self.queue.push(kind, body)
        except RedisTimeout as exc:  # sent, perhaps received: it may run after all
            log.error("queueing a %s timed out: %s", kind, exc)
            return QUEUE_SLOW
        except Exception as exc:
            log.error("could not queue a %s: %s", kind, exc)
            return QUEUE_DOWN
        return None


def _answer(ack: Ack, text: str | None) -> None:
    if text is None:
        ack()
    else:
        ack(text=text, response_type="ephemeral")


def build_app(runtime: Runtime, intake: Intake) -> App:
    settings = runtime.settings
    if runtime.slack is None:
        raise ValueError("the Slack app needs a bot token (SLACK_BOT_TOKEN)")
    secret = settings.slack.signing_secret.get_secret_value() if settings.slack.signing_secret else None
    app = App(
        signing_secret=secret,
        client=runtime.slack,
        token_verification_enabled=False,
        request_verification_enabled=secret is not None,
        process_before_response=True,
        logger=logging.getLogger("opsbot.bolt"),
    )

    def ack_command(ack: Ack, body: dict) -> None:
        _answer(ack, intake.command(body))

    def ack_action(ack: Ack, body: dict) -> None:
        _answer(ack, intake.enqueue("action", body))

    def open_form(body: dict) -> None:
        """After the ack (a lazy listener): the form must open within 3 s of the click (its trigger_id),
        so here rather than through the work queue."""
        action = (body.get("actions") or [{}])[0]
        name, value = action.get("action_id", "").split(":")[1], action.get("value", "")
        form = runtime.registry.forms.get(name)
        try:
            if form is None:
                raise ValueError(f"no form {name!r} here")
            runtime.slack.views_open(trigger_id=body["trigger_id"], view=form_view(form, value))
        except Exception as exc:
            line = runtime.redactor.text(explain(exc).line)
            log.error("could not open the form %s for %s: %s", name, value, line)
            if body.get("response_url"):  # tell the person who clicked, rather than nothing happening
                try:
                    webhook(body["response_url"], runtime.metrics).send_dict({
                        "response_type": "ephemeral", "replace_original": False,
                        "text": f":warning: The {form.field if form else name} form could not be opened: {line}"})
                except Exception as error:
                    log.error("could not say so either: %s", error)

    def ack_form(ack: Ack, body: dict) -> None:
        """A form was submitted: run its command with what was written, as its author, like a command."""
        view = body.get("view") or {}
        form = runtime.registry.forms.get(view.get("callback_id", "").removeprefix(FORM_PREFIX))
        if form is None:
            ack()
            return
        text = view["state"]["values"][form.field][FORM_INPUT]["value"] or ""
        user = body.get("user") or {}
        command = {"text": form.command.format(text=shlex.quote(text),
                                               value=shlex.quote(view.get("private_metadata", ""))),
                   "user_id": user.get("id", ""), "team_id": user.get("team_id") or (body.get("team") or {}).get("id"),
                   "channel_id": "", "trigger_id": f"view:{view.get('id')}:{view.get('hash')}"}
        _answer(ack, intake.enqueue("command", command))

    app.command(settings.slack.command)(ack_command)
    app.action(re.compile(rf"^{ACTION_PREFIX}(confirm|cancel|run)"))(ack_action)
    app.action(re.compile(rf"^{ACTION_PREFIX}form:"))(ack=lambda ack: ack(), lazy=[open_form])
    app.view(re.compile(rf"^{FORM_PREFIX}"))(ack_form)
    app.error(_on_error)
    return app


FORM_PREFIX, FORM_INPUT = "opsbot_", "text"


def form_view(form: Form, value: str) -> dict:
    """The modal behind a form button; ``value`` travels with it (``private_metadata``) to the submission."""
    return {
        "type": "modal", "callback_id": f"{FORM_PREFIX}{form.name}", "private_metadata": value,
        "title": {"type": "plain_text", "text": form.title.format(value=value)[:24]},
        "submit": {"type": "plain_text", "text": "Post"}, "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [{"type": "input", "block_id": form.field,
                    "label": {"type": "plain_text", "text": form.label[:2000]},
                    "element": {"type": "plain_text_input", "action_id": FORM_INPUT, "multiline": True,
                                "max_length": 2000}}],
    }


def _on_error(error: Exception, body: dict) -> BoltResponse:
    log.error("unhandled error for %s: %r", body.get("type") or body.get("command"), error, exc_info=error)
    return BoltResponse(status=500, body="")
