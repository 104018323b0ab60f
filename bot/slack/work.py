"""Carry out one queued Slack delivery: a slash command or a button click.

Usage::

    SlackWork(runtime).run(job)      # job from the work queue; replies through the delivery's response_url

The delivery is translated for the engine (who, where, what) and the outcome is
rendered back to Slack. A delivery already handled (a Slack retry, on any
replica) is skipped.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from bot.engine.dispatch import Outcome
from bot.core.invocation import Actor, Where
from bot.runtime.logs import log_context
from bot.core.markup import escape
from bot.core.parser import Parsed, UsageError
from bot.core.progress import SlackProgress, Throttled
from bot.render.blocks import ACTION_PREFIX, to_message
from bot.core.result import Result
from bot.runtime.factory import Runtime
from bot.slack.client import upload_attachment, webhook
from bot.slack.errors import SlackProblem, WebhookError, explain, plain_fallback
from bot.store.workqueue import Job

__all__ = ["PARSED", "SafeRespond", "SlackWork"]

PARSED = "opsbot_parsed"  # the ack's parsed command, in a queued job: the worker does not parse it again

log = logging.getLogger("opsbot.slack")

MAX_AGE = 1800.0  # Slack's response_url stops working after 30 minutes
PROGRESS_EVERY = 2.0  # at most one progress edit every 2 s


class SlackWork:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.engine = runtime.engine
        self.settings = runtime.settings

    def run(self, job: Job, now: float | None = None) -> None:
        """Carry the job out; never raises (a worker thread must survive any delivery)."""
        body = job.body
        age = (now or time.time()) - job.enqueued_at
        if age > MAX_AGE:
            log.warning("dropping a %s queued %.0fs ago: Slack can no longer be answered", job.kind, age)
            return
        respond = SafeRespond(body.get("response_url"), self.runtime)
        user = body.get("user_id") or (body.get("user") or {}).get("id")
        channel = body.get("channel_id") or (body.get("channel") or {}).get("id")
        team = body.get("team_id") or (body.get("team") or {}).get("id")
        try:
            with log_context(request_id=job.id, team=team, user=user, channel=channel):
                if not self._first_delivery(body, job.id):
                    return
                if job.kind == "command":
                    self._command(body, respond)
                elif job.kind == "action":
                    self._action(body, respond)
                else:
                    log.error("unknown job kind %r", job.kind)
        except Exception as exc:
            log.exception("delivery failed")
            self._reply(respond, Outcome("result", Result.error(f"opsbot failed on this request: {exc}")),
                        replace=False)

    def _command(self, body: dict, respond: SafeRespond) -> None:
        parsed = Parsed.from_dict(body[PARSED], self.engine.registry) if isinstance(body.get(PARSED), dict) else None
        if parsed is None:  # a form's submission (or a job queued by an older release): parse it here
            try:
                parsed = self.engine.parse(body.get("text", ""))
            except UsageError:
                return  # answered in the ack already
        actor = Actor(body["user_id"], team=body.get("team_id", ""))
        where = Where(body.get("channel_id", ""), channel_name=body.get("channel_name"))
        outcome = self.engine.handle(parsed, actor, where, self._progress(where))
        self._reply(respond, outcome, replace=False, where=where)

    def _action(self, body: dict, respond: SafeRespond) -> None:
        action = (body.get("actions") or [{}])[0]
        kind = action.get("action_id", "").removeprefix(ACTION_PREFIX).split(":", 1)[0]
        actor, where, value = self._clicked(body)
        if kind == "confirm":
            self._reply(respond, self.engine.confirm(value, actor, where, self._progress(where)), replace=True)
        elif kind == "cancel":
            self._reply(respond, self.engine.cancel(value, actor, where), replace=True)
        elif kind == "run":
            self._reply(respond, self.engine.handle(value, actor, where), replace=False, where=where)

    def _progress(self, where: Where) -> Throttled | None:
        if self.runtime.slack is None or not where.channel:  # a form submission has no channel to show it in
            return None
        sink = SlackProgress(self.runtime.slack, where.channel, where.thread_ts, self.runtime.redactor)
        return Throttled(sink, every=PROGRESS_EVERY)

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
        return Actor(user.get("id", ""), team=team), where, (body.get("actions") or [{}])[0].get("value", "")

    def _reply(self, respond: SafeRespond, outcome: Outcome, *, replace: bool, where: Where | None = None) -> None:
        try:
            message: dict[str, Any] = to_message(outcome.result, self.runtime.redactor)
            if outcome.result.attachments:
                message["text"] += self._upload(outcome.result, where)
        finally:  # a file of results (an audit export) never outlives its reply, whatever happened
            for attachment in outcome.result.attachments:
                attachment.discard()
        # A preview turned into its outcome replaces the preview; a refusal aimed at one
        # person (denied, waiting, already taken) is shown to that person only.
        personal = outcome.kind in ("denied", "waiting", "taken", "usage", "unavailable")
        if outcome.in_thread:  # everyone sees it in the conversation's thread; the requester gets a copy here
            if respond.url is None:  # a form submission: the thread is the only place to answer
                return
            message["text"] = f"Posted in the {outcome.in_thread} thread. " + message["text"]
            personal = True
        if replace and not personal:
            respond(replace_original=True, **message)
        else:
            respond(response_type="ephemeral" if outcome.ephemeral or personal else "in_channel",
                    replace_original=False, **message)

    def _upload(self, result: Result, where: Where | None) -> str:
        """Upload the result's files into the channel (thread) it was run from; a note for the reply."""
        notes = []
        for attachment in result.attachments:
            try:
                if self.runtime.slack is None or where is None or not where.channel:
                    raise RuntimeError("no Slack client or channel to upload to")
                size = attachment.size()
                if size > UPLOAD_LIMIT:
                    raise RuntimeError(f"{size / 1e6:,.0f} MB is more than Slack takes ({UPLOAD_LIMIT / 1e6:,.0f} MB)")
                upload_attachment(self.runtime.slack, attachment, channel=where.channel, thread_ts=where.thread_ts)
                notes.append(f"\n:paperclip: {escape(attachment.filename)} uploaded")
            except Exception as exc:
                # a plain RuntimeError is opsbot's own reason (too big, nowhere to upload); the rest came from Slack
                why = str(exc) if type(exc) is RuntimeError else explain(exc, channel=where and where.channel).line
                why = self.runtime.redactor.text(why)
                log.error("could not upload %s: %s", attachment.filename, why)
                notes.append("\n:warning: " + escape(f"{attachment.filename} could not be uploaded ({why})")
                             + "; run the command with `opsbot run` to get the file")
            finally:
                attachment.discard()
        return "".join(notes)

    def _first_delivery(self, body: dict, job_id: str) -> bool:
        """False when another copy of this delivery (a Slack retry, on any replica) was taken already.

        The same job handed back after its worker died runs again; guarded actions still claim atomically.
        """
        key = body.get("trigger_id") or _action_key(body)
        if not key:
            return True
        redis_key = f"{self.settings.state.prefix}delivery:{key}"
        client = self.runtime.state.redis
        try:
            if client.set(redis_key, job_id, nx=True, ex=int(self.settings.guard.dedupe_ttl)):
                return True
            return client.get(redis_key) == job_id.encode()
        except Exception as exc:  # Redis down: run it; guarded actions still claim atomically
            log.warning("delivery dedupe unavailable: %s", exc)
            return True


UPLOAD_LIMIT = 1_000_000_000  # bytes: Slack's limit for one file


class SafeRespond:
    """Reply through the delivery's ``response_url``; a reply Slack will not take goes to the outbox.

    Why Slack refused it is logged in one clear line; a reply it will never take is
    abandoned at once, and one whose blocks it refused (an opsbot bug) is sent again
    as plain text, so the user still learns the outcome.
    """

    def __init__(self, response_url: str | None, runtime: Runtime):
        self.url = response_url
        self.runtime = runtime

    def __call__(self, **message: Any) -> None:
        if not self.url:
            log.error("the delivery has no response_url; the reply cannot be sent")
            return
        message = {key: value for key, value in message.items() if value is not None}
        problem = self._send(message)
        if problem is None:
            return
        self.runtime.metrics.slack_errors.labels(kind="reply_failed").inc()
        log.error("could not post the reply to Slack, %s: %s", "giving up" if problem.permanent else
                  "keeping it for later", self.runtime.redactor.text(problem.line))
        self.runtime.outbox.keep({"kind": "response_url", "url": self.url}, message, problem)
        if problem.kind == "content" and self._send(plain_fallback(message, problem)) is not None:
            log.error("the plain-text copy of the reply was refused too")

    def _send(self, message: dict[str, Any]) -> SlackProblem | None:
        try:
            response = webhook(self.url, self.runtime.metrics).send_dict(message)
        except Exception as exc:
            return explain(exc)
        if response.status_code < 400:
            return None
        return explain(WebhookError(response.status_code, str(response.body or "")))


def _action_key(body: dict) -> str | None:
    actions = body.get("actions") or []
    if actions and actions[0].get("action_ts"):
        return f"{(body.get('user') or {}).get('id')}:{actions[0]['action_ts']}"
    return None
