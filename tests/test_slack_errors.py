"""Each way Slack refuses opsbot becomes one clear line, and a refusal no retry can cure is not retried."""

from __future__ import annotations

import logging
import time

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.core.invocation import Actor, Where
from bot.runtime.metrics import Metrics
from bot.core.progress import SlackProgress
from bot.core.redact import Redactor
from bot.slack.errors import WebhookError, explain
from bot.slack.notify import post_or_keep
from bot.slack.work import SafeRespond
from tests.conftest import ALICE, BOT_TOKEN, SIGNING_SECRET, write_config
from tests.support.harness import Reply, SlackBot

OPS = Where("C-ops", channel_name="ops")
TOO_LONG = [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}]


def refusal(call) -> SlackApiError:
    with pytest.raises(SlackApiError) as caught:
        call()
    return caught.value


def actions(runtime, name: str) -> list[dict]:
    return [e.payload for e in runtime.state.action_log.entries() if e.action == name]


def wait_for_action(runtime, name: str, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while not actions(runtime, name) and time.monotonic() < deadline:
        time.sleep(0.05)
    return actions(runtime, name)


def incident_channel(tmp_path, database_url, fake_slack, channel: str):
    path = write_config(tmp_path / "app.yaml", database_url, api_url=fake_slack.api_url)
    path.write_text(path.read_text().replace('incident_channel: "#incidents"', f'incident_channel: "{channel}"'))
    return path


# -- one line per refusal ------------------------------------------------------------------------

def test_each_refusal_reads_as_what_to_fix(fake_slack):
    fake_slack.allow("not_in_channel", "channel_not_found", "invalid_auth", "invalid_blocks", "msg_too_long")
    fake_slack.channel("G0PRIVATE", private=True, member=False)
    client = WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)

    def line(call, **kw):
        return explain(refusal(call), **kw)

    private = line(lambda: client.chat_postMessage(channel="G0PRIVATE", text="t"), channel="#ops-private")
    assert private.line == ("opsbot is not in #ops-private: invite it with /invite @opsbot (posting to private "
                            "channels needs an invitation; chat:write.public covers public ones only)")
    missing = line(lambda: client.chat_postMessage(channel="incidents", text="t"), channel="incidents",
                   setting="slack.incident_channel")
    assert "check slack.incident_channel in app.yaml" in missing.line and missing.code == "channel_not_found"
    token = line(lambda: WebClient(token="xoxb-revoked", base_url=fake_slack.api_url).auth_test())
    assert "SLACK_BOT_TOKEN" in token.line and token.code == "invalid_auth"
    blocks = line(lambda: client.chat_postMessage(channel="C1", text="t", blocks=TOO_LONG))
    assert blocks.line == ("Slack refused a message opsbot built (invalid_blocks: must be less than 3001 characters "
                           "[json-pointer:/blocks/0/text/text]): this is an opsbot bug, please report this line")
    long = line(lambda: client.chat_postMessage(channel="C1", text="x" * 40_001))
    assert long.code == "msg_too_long" and "opsbot bug" in long.line
    assert all(p.permanent for p in (private, missing, token, blocks, long))


def test_transient_answers_are_worth_retrying(fake_slack):
    fake_slack.fail("chat.postMessage", status=429, body={"ok": False, "error": "ratelimited"},
                    headers={"Retry-After": "7"})
    fake_slack.fail("chat.postMessage", status=503, body={"ok": False, "error": "service_unavailable"})
    client = WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)  # no retry handlers: see each answer

    limited = explain(refusal(lambda: client.chat_postMessage(channel="C1", text="t")))
    assert (limited.kind, limited.permanent) == ("rate", False) and "retry after 7s" in limited.line
    assert not explain(refusal(lambda: client.chat_postMessage(channel="C1", text="t"))).permanent
    assert not explain(ConnectionRefusedError("refused")).permanent
    expired = explain(WebhookError(404, "expired_url"))
    assert expired.permanent and "run the command again" in expired.line
    assert explain(WebhookError(400, "invalid_blocks")).kind == "content"
    assert not explain(WebhookError(502, "<html>bad gateway</html>")).permanent


# -- the incident channel is one opsbot cannot post to -------------------------------------------

def test_a_private_incident_channel_opsbot_is_not_in(tmp_path, database_url, make_runtime, fake_slack, slack_env,
                                                    caplog):
    fake_slack.channel("G0PRIVATE", private=True, member=False)
    fake_slack.allow("not_in_channel")
    runtime = make_runtime(incident_channel(tmp_path, database_url, fake_slack, "G0PRIVATE"),
                           slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))
    bot = SlackBot(runtime, fake_slack, SIGNING_SECRET)
    try:
        with caplog.at_level(logging.ERROR, logger="opsbot.slack"):
            reply = bot.command("test bump")  # its request is announced to the incident channel
            abandoned = wait_for_action(runtime, "post_abandoned")
    finally:
        bot.close()

    assert reply.button("Confirm")  # the command still answered the user
    why = "opsbot is not in G0PRIVATE: invite it with /invite @opsbot (posting to private channels needs an invitation"
    assert abandoned[0]["error"] == "not_in_channel" and abandoned[0]["reason"].startswith(why)
    assert abandoned[0]["target"] == "G0PRIVATE" and "requested `test bump`" in abandoned[0]["summary"]
    assert any(why in r.getMessage() and "giving up" in r.getMessage() for r in caplog.records)
    assert runtime.outbox.depth() == 0 and actions(runtime, "post_failed") == []  # not retried for a day
    assert len(fake_slack.refusals("not_in_channel")) == 1


def test_a_revoked_bot_token_is_named(tmp_path, database_url, make_runtime, fake_slack, slack_env):
    fake_slack.allow("invalid_auth")
    runtime = make_runtime(incident_channel(tmp_path, database_url, fake_slack, "#incidents"),
                           slack=WebClient(token="xoxb-revoked", base_url=fake_slack.api_url))

    assert runtime.engine.handle("test bump", Actor(ALICE), OPS).kind == "preview"
    abandoned = actions(runtime, "post_abandoned")
    assert abandoned[0]["error"] == "invalid_auth" and "set SLACK_BOT_TOKEN" in abandoned[0]["reason"]


def test_a_kept_post_that_meets_a_permanent_refusal_is_abandoned_at_its_next_try(runtime, fake_slack):
    fake_slack.channel("G0PRIVATE", private=True, member=False)
    fake_slack.allow("not_in_channel")
    runtime.outbox.keep({"kind": "chat", "channel": "G0PRIVATE"}, {"text": "hello"}, "HTTP 503")
    assert runtime.outbox.depth() == 1 and actions(runtime, "post_failed")[0]["reason"] == "HTTP 503"

    assert runtime.outbox.retry_due() == 0
    assert runtime.outbox.depth() == 0
    abandoned = actions(runtime, "post_abandoned")[0]
    assert abandoned["error"] == "not_in_channel" and abandoned["attempts"] == 2


def test_a_message_slack_finds_invalid_is_posted_as_plain_text_and_reported(runtime, fake_slack):
    fake_slack.allow("invalid_blocks")
    client = WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)
    post_or_keep(client, runtime.outbox, Metrics(), "C-ops", {"text": "OK: 3 jobs requeued", "blocks": TOO_LONG})

    refused, plain = fake_slack.calls("chat.postMessage")
    assert refused.refusal == "invalid_blocks" and "blocks" not in plain.body and plain.ok
    assert plain.body["text"].startswith("OK: 3 jobs requeued\n_(Slack refused the full message — Slack refused a "
                                         "message opsbot built (invalid_blocks: must be less than 3001 characters")
    assert "[json-pointer:/blocks/0/text/text]" in actions(runtime, "post_abandoned")[0]["reason"]


# -- replies through the response_url ------------------------------------------------------------

def test_a_reply_slack_refuses_reaches_the_user_as_plain_text(runtime, fake_slack):
    fake_slack.allow("invalid_blocks")
    SafeRespond(fake_slack.response_url("r1"), runtime)(text="OK: done", blocks=TOO_LONG, response_type="in_channel")

    refused, plain = fake_slack.responses("r1")
    assert (refused.status, refused.answer) == (400, b"invalid_blocks")
    assert plain.ok and plain.body["response_type"] == "in_channel" and "opsbot bug" in plain.body["text"]
    assert actions(runtime, "post_abandoned")[0]["error"] == "invalid_blocks" and runtime.outbox.depth() == 0


def test_a_reply_to_an_expired_response_url_is_abandoned_at_once(runtime, fake_slack):
    fake_slack.expire("old")
    fake_slack.allow("expired_url")
    SafeRespond(fake_slack.response_url("old"), runtime)(text="OK: done")

    abandoned = actions(runtime, "post_abandoned")[0]
    assert abandoned["error"] == "expired_url" and "run the command again" in abandoned["reason"]
    assert runtime.outbox.depth() == 0 and len(fake_slack.responses("old")) == 1


# -- progress and forms --------------------------------------------------------------------------

def test_progress_in_a_channel_opsbot_is_not_in_stops_after_the_first_refusal(fake_slack):
    fake_slack.channel("G0PRIVATE", private=True, member=False)
    fake_slack.allow("not_in_channel", "message_not_found")
    client = WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)
    progress = SlackProgress(client, "G0PRIVATE", None, Redactor())
    from bot.core.result import Result

    for n in range(3):
        progress(Result.ok(f"{n} moved"))
    progress.finish(Result.ok("done"))
    assert len(fake_slack.calls("chat.postMessage")) == 1 and progress.given_up.startswith("opsbot is not in G0PRIVATE")

    deleted = SlackProgress(client, "C-ops", None, Redactor())
    deleted(Result.ok("1 moved"))
    fake_slack.workspace.messages.clear()  # someone deleted the progress message
    deleted(Result.ok("2 moved"))
    deleted(Result.ok("3 moved"))
    assert len(fake_slack.calls("chat.update")) == 1 and "message_not_found" in deleted.given_up


def test_a_form_slack_will_not_open_is_explained_to_whoever_clicked(tmp_path, database_url, make_runtime, fake_slack,
                                                                    slack_env):
    path = write_config(tmp_path / "app.yaml", database_url, api_url=fake_slack.api_url)
    runtime = make_runtime(path, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))
    bot = SlackBot(runtime, fake_slack, SIGNING_SECRET, with_worker=False)
    fake_slack.fail("views.open", status=200, body={"ok": False, "error": "expired_trigger_id"})
    note = {"type": "actions", "elements": [{"type": "button", "text": {"type": "plain_text", "text": "Add note"},
                                             "action_id": "opsbot_form:incident_note:0", "value": "INC-1"}]}
    try:
        answer = bot.click(Reply(None, "root", {"blocks": [note]}), "Add note")
    finally:
        bot.close()
    assert answer.body["response_type"] == "ephemeral"
    assert answer.text == (":warning: The note form could not be opened: Slack took too long to open the form "
                           "(expired_trigger_id: forms must open within 3 s of the click); click again")


def test_an_incident_channel_slack_cannot_find_is_named_with_the_setting_to_fix(tmp_path, database_url, make_runtime,
                                                                              fake_slack, slack_env):
    fake_slack.channel("#war-room", private=True, member=False)  # private, and opsbot was never invited
    fake_slack.allow("channel_not_found")
    path = write_config(tmp_path / "app.yaml", database_url, extra='incidents:\n  channel: "#war-room"\n',
                        api_url=fake_slack.api_url)
    runtime = make_runtime(path, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))
    engine = runtime.engine

    declared = engine.handle("incident declare sev3 Slow search", Actor(ALICE), OPS).result
    why = ("Slack has no channel #war-room that opsbot can see (channel_not_found): check incidents.channel "
           "(or slack.incident_channel) in app.yaml (a #name or an id like C0123ABCD); a private channel must invite "
           "opsbot first (/invite @opsbot)")
    assert f"the root message could not be posted ({why})" in str(declared)
    again = engine.handle("incident repost --incident INC-1", Actor(ALICE), OPS).result
    assert (again.status, again.summary) == ("error", why)  # a clear refusal, not "failed unexpectedly"
