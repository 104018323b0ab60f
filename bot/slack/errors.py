"""Slack's refusals as one clear line for the operator and the user, and whether trying again can help.

Usage::

    try:
        client.chat_postMessage(channel="#incidents", **message)
    except Exception as exc:
        problem = explain(exc, channel="#incidents", setting="slack.incident_channel")
        log.error("could not post: %s", problem.line)   # "opsbot is not in #incidents: invite it with ..."
        if problem.permanent:                           # not_in_channel, invalid_auth, invalid_blocks...
            ...                                         # the same post will never succeed: do not retry it

A response_url answers errors with an HTTP status and a one-word body:
``explain(WebhookError(400, "invalid_blocks"))``. :class:`SlackRefused` carries a problem
through code that only shows ``str(exc)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from bot.core.invocation import CommandError

__all__ = ["SlackProblem", "SlackRefused", "WebhookError", "explain", "plain_fallback"]

Kind = Literal["auth", "scope", "channel", "workspace", "content", "gone", "expired", "rate", "unavailable", "unknown"]
PERMANENT: set[str] = {"auth", "scope", "channel", "workspace", "content", "gone", "expired"}

_KINDS: dict[str, Kind] = {
    **dict.fromkeys(("not_authed", "invalid_auth", "account_inactive", "token_revoked", "token_expired",
                     "not_allowed_token_type", "invalid_token", "no_service", "no_team", "team_disabled"), "auth"),
    **dict.fromkeys(("missing_scope", "no_permission"), "scope"),
    **dict.fromkeys(("channel_not_found", "not_in_channel", "is_archived", "channel_is_archived"), "channel"),
    **dict.fromkeys(("restricted_action", "restricted_action_read_only_channel", "posting_to_general_channel_denied",
                     "action_prohibited", "ekm_access_denied"), "workspace"),
    **dict.fromkeys(("invalid_blocks", "invalid_blocks_format", "msg_too_long", "msg_blocks_too_long", "no_text",
                     "too_many_attachments", "invalid_attachments", "invalid_arguments", "invalid_payload",
                     "invalid_json", "invalid_form_data"), "content"),
    **dict.fromkeys(("message_not_found", "cant_update_message", "edit_window_closed", "file_not_found"), "gone"),
    **dict.fromkeys(("expired_url", "used_url", "expired_trigger_id", "invalid_trigger_id"), "expired"),
    **dict.fromkeys(("ratelimited", "rate_limited"), "rate"),
    **dict.fromkeys(("internal_error", "fatal_error", "service_unavailable", "request_timeout", "rollup_error"),
                    "unavailable"),
}


@dataclass(frozen=True)
class SlackProblem:
    code: str  # Slack's error code ("not_in_channel"), else "http_503" or the exception's class name
    kind: Kind
    line: str  # one line for the operator and the user

    @property
    def permanent(self) -> bool:
        """Trying the same call again will fail the same way."""
        return self.kind in PERMANENT


class SlackRefused(CommandError):
    """A Slack call failed: ``str()`` is the clear line, ``problem`` the rest (a command shows the line)."""

    def __init__(self, problem: SlackProblem):
        super().__init__(problem.line)
        self.problem = problem


class WebhookError(Exception):
    """A response_url (or incoming webhook) answered an HTTP error: status and Slack's one-word body."""

    def __init__(self, status: int, body: str = ""):
        super().__init__(f"HTTP {status} {body[:200]}".strip())
        self.status, self.body = status, body


def explain(exc: BaseException, *, channel: str | None = None, setting: str | None = None) -> SlackProblem:
    """What went wrong, for people. ``setting`` names the configuration that chose ``channel``."""
    from slack_sdk.errors import SlackApiError

    if isinstance(exc, SlackRefused):
        return exc.problem
    if isinstance(exc, SlackApiError):
        data: Any = getattr(exc.response, "data", None)
        data = data if isinstance(data, dict) else {}
        status = getattr(exc.response, "status_code", 200)
        code = data.get("error") or f"http_{status}"
        details = data.get("errors") or (data.get("response_metadata") or {}).get("messages") or []
        retry = (getattr(exc.response, "headers", None) or {}).get("Retry-After")
        return _problem(code, status, [str(d) for d in details], channel, setting, data.get("needed"), retry)
    if isinstance(exc, WebhookError):
        code = exc.body.strip().split()[0] if exc.body.strip() else f"http_{exc.status}"
        return _problem(code if code.replace("_", "").isalnum() else f"http_{exc.status}", exc.status, [],
                        channel, setting)
    name = type(exc).__name__
    return SlackProblem(name, "unavailable", f"Slack could not be reached ({name}: {str(exc)[:200]}); "
                                             "opsbot will try again")


def _problem(code: str, status: int, details: list[str], channel: str | None, setting: str | None,
             needed: str | None = None, retry: str | None = None) -> SlackProblem:
    kind = _KINDS.get(code) or ("rate" if status == 429 else "unavailable" if status >= 500 else "unknown")
    where = channel or "the channel"
    fix = f"check {setting} in app.yaml (a #name or an id like C0123ABCD); " if setting else ""
    elsewhere = f" or point {setting} at another channel" if setting else ""
    listed = f": {'; '.join(details[:3])[:400]}" if details else ""
    specific = {
        "not_allowed_token_type": "SLACK_BOT_TOKEN is not a bot token (not_allowed_token_type): use the app's Bot "
                                  "User OAuth Token (xoxb-…), not the app-level token (xapp-…)",
        "not_in_channel": f"opsbot is not in {where}: invite it with /invite @opsbot (posting to private channels "
                          "needs an invitation; chat:write.public covers public ones only)",
        "channel_not_found": f"Slack has no channel {where} that opsbot can see (channel_not_found): {fix}a private "
                             "channel must invite opsbot first (/invite @opsbot)",
        "is_archived": f"{where} is archived (is_archived): unarchive it{elsewhere}",
        "channel_is_archived": f"{where} is archived (channel_is_archived): unarchive it{elsewhere}",
        "expired_trigger_id": "Slack took too long to open the form (expired_trigger_id: forms must open within 3 s "
                              "of the click); click again",
        "invalid_trigger_id": "Slack did not recognise the click that should open the form (invalid_trigger_id); "
                              "click again",
    }
    general = {
        "auth": f"Slack refused opsbot's bot token ({code}): set SLACK_BOT_TOKEN to the app's Bot User OAuth Token "
                "(xoxb-…) and restart opsbot",
        "scope": f"the Slack app lacks a permission it needs ({code}{': ' + needed if needed else ''}): reinstall it "
                 "with the manifest from `opsbot manifest`",
        "channel": f"opsbot cannot post in {where} ({code})",
        "workspace": f"a workspace setting stops opsbot posting in {where} ({code}): ask a Slack admin",
        "content": f"Slack refused a message opsbot built ({code}{listed}): this is an opsbot bug, please report "
                   "this line",
        "gone": f"the Slack message or file opsbot meant to change is gone or is not its own ({code})",
        "expired": f"Slack no longer takes replies to this request ({code}: a response_url takes 5 messages within "
                   "30 minutes); run the command again",
        "rate": f"Slack is rate limiting opsbot ({code}{f', retry after {retry}s' if retry else ''}); "
                "opsbot will try again",
        "unavailable": f"Slack is having trouble ({code}); opsbot will try again",
        "unknown": f"Slack answered {code}{listed}",
    }
    return SlackProblem(code, kind, specific.get(code) or general[kind])


def plain_fallback(message: dict[str, Any], problem: SlackProblem, limit: int = 3000) -> dict[str, Any]:
    """The message as plain text with a note, for when Slack refused its blocks: the reader still gets the gist."""
    text = str(message.get("text") or "")
    note = f"\n_(Slack refused the full message — {problem.line})_"
    if len(text) + len(note) > limit:
        text = text[: max(limit - len(note) - 1, 0)] + "…"
    kept = {k: v for k, v in message.items() if k in ("thread_ts", "response_type", "replace_original")}
    return {**kept, "text": text + note}
