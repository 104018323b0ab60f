"""The Slack side: a Bolt app built by a factory, translating Slack payloads for the engine.

Usage::

    app = build_app(runtime)                 # runtime.slack is the Web API client
    SlackRequestHandler(app)                 # HTTP (see bot.http), or SocketModeHandler(app, token)

``/ops`` is acknowledged at once; the work runs after the ack in a lazy
listener and the result goes back through ``response_url``. Buttons: Confirm
and Cancel on previews, Run on runbook steps. A delivery Slack retries
(same ``trigger_id``) is run once, whichever replica receives it.
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from slack_bolt import Ack, App, BoltResponse, Respond

from bot.engine import Outcome
from bot.invocation import Actor, Where
from bot.parser import UsageError
from bot.render.blocks import ACTION_PREFIX, to_message
from bot.runtime import Runtime

__all__ = ["build_app"]

log = logging.getLogger("opsbot.slack")


def build_app(runtime: Runtime, executor: ThreadPoolExecutor | None = None) -> App:
    """The Bolt app; ``executor`` runs the work after each ack (the caller shuts it down)."""
    settings = runtime.settings
    if runtime.slack is None:
        raise ValueError("the Slack app needs a bot token (SLACK_BOT_TOKEN)")
    secret = settings.slack.signing_secret.get_secret_value() if settings.slack.signing_secret else None
    app = App(
        signing_secret=secret,
        client=runtime.slack,
        token_verification_enabled=False,
        request_verification_enabled=secret is not None,
        listener_executor=executor or ThreadPoolExecutor(max_workers=16, thread_name_prefix="opsbot-work"),
        logger=logging.getLogger("opsbot.bolt"),
    )
    listeners = _Listeners(runtime)
    app.command(settings.slack.command)(ack=listeners.ack_command, lazy=[listeners.run_command])
    app.action(re.compile(rf"^{ACTION_PREFIX}confirm"))(ack=_ack_action, lazy=[listeners.confirm])
    app.action(re.compile(rf"^{ACTION_PREFIX}cancel"))(ack=_ack_action, lazy=[listeners.cancel])
    app.action(re.compile(rf"^{ACTION_PREFIX}run"))(ack=_ack_action, lazy=[listeners.run_button])
    app.error(_on_error)
    return app


def _ack_action(ack: Ack) -> None:
    ack()


def _on_error(error: Exception, body: dict) -> BoltResponse:
    log.error("unhandled error for %s: %r", body.get("type") or body.get("command"), error, exc_info=error)
    return BoltResponse(status=500, body="")


class _Listeners:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.engine = runtime.engine
        self.settings = runtime.settings

    # -- the slash command ------------------------------------------------------------

    def ack_command(self, ack: Ack, body: dict) -> None:
        """Answer within Slack's 3 s: usage errors right here, everything else after the ack."""
        try:
            self.engine.parse(body.get("text", ""))
        except UsageError as exc:
            ack(text=self.runtime.redactor.text(str(exc)), response_type="ephemeral")
            return
        ack()

    def run_command(self, body: dict, respond: Respond) -> None:
        if not self._first_delivery(body):
            return
        try:
            self.engine.parse(body.get("text", ""))
        except UsageError:
            return  # already answered in the ack
        actor = Actor(body["user_id"], team=body.get("team_id", ""))
        where = Where(body.get("channel_id", ""), channel_name=body.get("channel_name"))
        outcome = self.engine.handle(body.get("text", ""), actor, where)
        self._reply(respond, outcome, replace=False)

    # -- buttons ----------------------------------------------------------------------

    def confirm(self, body: dict, respond: Respond) -> None:
        if self._first_delivery(body):
            actor, where, value = self._clicked(body)
            self._reply(respond, self.engine.confirm(value, actor, where), replace=True)

    def cancel(self, body: dict, respond: Respond) -> None:
        if self._first_delivery(body):
            actor, where, value = self._clicked(body)
            self._reply(respond, self.engine.cancel(value, actor, where), replace=True)

    def run_button(self, body: dict, respond: Respond) -> None:
        if self._first_delivery(body):
            actor, where, value = self._clicked(body)
            self._reply(respond, self.engine.handle(value, actor, where), replace=False)

    # -- helpers ----------------------------------------------------------------------

    def _clicked(self, body: dict) -> tuple[Actor, Where, str]:
        user = body.get("user") or {}
        team = user.get("team_id") or (body.get("team") or {}).get("id", "")
        channel = body.get("channel") or {}
        container = body.get("container") or {}
        where = Where(
            channel.get("id") or container.get("channel_id", ""),
            thread_ts=container.get("thread_ts"),
            channel_name=channel.get("name"),
        )
        return Actor(user.get("id", ""), team=team), where, body["actions"][0].get("value", "")

    def _reply(self, respond: Respond, outcome: Outcome, *, replace: bool) -> None:
        message: dict[str, Any] = to_message(outcome.result, self.runtime.redactor)
        # A preview turned into its outcome replaces the preview; a refusal aimed at one
        # person (denied, waiting, already taken) is shown to that person only.
        personal = outcome.kind in ("denied", "waiting", "taken", "usage")
        if replace and not personal:
            respond(replace_original=True, **message)
        else:
            respond(response_type="ephemeral" if outcome.ephemeral or personal else "in_channel",
                    replace_original=False, **message)

    def _first_delivery(self, body: dict) -> bool:
        """False when this exact delivery was already handled (a Slack retry, on any replica)."""
        key = body.get("trigger_id") or _action_key(body)
        if not key:
            return True
        redis_key = f"{self.settings.state.prefix}delivery:{key}"
        try:
            return bool(self.runtime.state.redis.set(redis_key, 1, nx=True, ex=int(self.settings.guard.dedupe_ttl)))
        except Exception as exc:  # Redis down: run it; guarded actions still claim atomically
            log.warning("delivery dedupe unavailable: %s", exc)
            return True


def _action_key(body: dict) -> str | None:
    actions = body.get("actions") or []
    if actions and actions[0].get("action_ts"):
        return f"{(body.get('user') or {}).get('id')}:{actions[0]['action_ts']}"
    return None
