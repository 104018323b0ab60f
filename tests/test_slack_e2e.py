"""End to end through signed HTTP requests to ``opsbot serve``, against a fake Slack Web API."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import ALICE, BOB, MALLORY, SIGNING_SECRET
from tests.support.commands import EXECUTIONS
from tests.support.harness import SlackBot


@pytest.fixture
def bot(make_runtime, fake_slack, config_path, slack_env):
    from slack_sdk import WebClient

    runtime = make_runtime(config_path, slack=WebClient(token="xoxb-test-token-0000", base_url=fake_slack.api_url))
    harness = SlackBot(runtime, fake_slack, SIGNING_SECRET)
    yield harness
    harness.close()


def executions(bot) -> int:
    return int(bot.runtime.state.redis.get(EXECUTIONS) or 0)


def test_help_is_acked_at_once_and_the_result_posted(bot):
    started = time.perf_counter()
    reply = bot.command("help", wait=False)
    acked = time.perf_counter() - started

    assert reply.http.status_code == 200
    assert acked < 3.0
    body = bot.reply_to(reply.key)
    assert body["response_type"] == "ephemeral"
    assert "/ops: " in body["text"] and "commands" in body["text"]
    assert any("/ops runbook" in block.get("text", {}).get("text", "") for block in body["blocks"])


def test_usage_error_is_answered_in_the_ack_and_nothing_runs(bot):
    reply = bot.command("dlq-nope --x", wait=False)

    assert reply.http.status_code == 200
    answer = reply.http.json()
    assert answer["response_type"] == "ephemeral"
    assert "Unknown command `dlq-nope`" in answer["text"]
    bot.command("help")  # a later request finished, so anything the bad one queued would have run by now
    assert bot.slack.responses(reply.key) == []
    assert [e.action for e in bot.runtime.state.action_log.entries()] == ["request", "outcome"]


def test_forged_signature_is_rejected_and_nothing_runs(bot):
    reply = bot.command("test bump", signature="v0=" + "0" * 64, wait=False)

    assert reply.http.status_code == 401
    bot.command("help")
    assert bot.slack.responses(reply.key) == []
    assert bot.runtime.state.redis.keys("opsbot:pending:*") == []


def test_stale_timestamp_is_rejected_and_nothing_runs(bot):
    reply = bot.command("test bump", timestamp=int(time.time()) - 600, wait=False)

    assert reply.http.status_code == 401
    bot.command("help")
    assert bot.slack.responses(reply.key) == []


def test_guarded_flow_executes_once_despite_double_click_and_retry(bot):
    preview = bot.command("test bump --by 5", user=ALICE)
    assert preview.body["response_type"] == "in_channel"
    assert "Preview: add 5 to the counter (0 → 5)" in preview.text
    confirm = preview.button("Confirm")
    assert confirm["style"] == "primary" and confirm["confirm"]["title"]["text"] == "Are you sure?"

    # Double click: two different deliveries. Then Slack retries the first one.
    key = "click-dup"
    body = bot.click_body(preview, "Confirm", user=ALICE, channel="C-ops", key=key, trigger="trig-dup")
    first = bot.post(body)
    second = bot.click(preview, "Confirm", user=ALICE, wait=False)
    retried = bot.post(body, headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"})
    assert first.status_code == second.http.status_code == retried.status_code == 200

    outcome = bot.reply_to(key)
    other = bot.reply_to(second.key)
    assert executions(bot) == 1
    answers = sorted([outcome["text"], other["text"]])
    assert any("counter is now 5" in text for text in answers)
    assert any("Already confirmed" in text for text in answers)
    # The executed outcome replaced the preview; the late click was told privately.
    executed = outcome if "counter is now 5" in outcome["text"] else other
    late = other if executed is outcome else outcome
    assert executed["replace_original"] is True
    assert late["response_type"] == "ephemeral" and late["replace_original"] is False
    # The retried delivery was not run at all: only two deliveries answered.
    bot.command("help")
    assert len(bot.slack.responses(key)) == 1
    posts = bot.slack.wait_for("chat.postMessage", count=2)
    assert all(p.body["channel"] == "#incidents" for p in posts)
    assert posts[0].body["text"].startswith(f"OK: <@{ALICE}> requested `test bump --by 5`")  # a live mention


def test_another_user_without_the_role_is_refused(bot):
    preview = bot.command("test bump", user=ALICE)

    refused = bot.click(preview, "Confirm", user=MALLORY)

    assert "does not have" in refused.text and "`oncall`" in refused.text
    assert refused.body["response_type"] == "ephemeral"
    assert executions(bot) == 0
    assert bot.command("test bump", user=MALLORY).body["response_type"] == "ephemeral"


def test_expired_confirmation_changes_nothing(bot):
    preview = bot.command("test bump", user=ALICE)
    bot.runtime.state.redis.delete(f"opsbot:pending:{preview.button('Confirm')['value']}")  # the TTL ran out

    late = bot.click(preview, "Confirm", user=ALICE)

    assert "expired" in late.text and "nothing was changed" in late.text
    assert late.body["replace_original"] is True
    assert executions(bot) == 0


def test_two_person_command_needs_a_second_responder(bot):
    preview = bot.command("test bump2", user=ALICE)
    assert "A second holder of the `oncall` role" in str(preview.blocks)

    alone = bot.click(preview, "Confirm", user=ALICE)
    assert "two-person" in alone.text and alone.body["response_type"] == "ephemeral"
    assert executions(bot) == 0

    second = bot.click(preview, "Confirm", user=BOB)
    assert "counter is now 1" in second.text
    assert executions(bot) == 1


def test_cancel_button_cancels(bot):
    preview = bot.command("test bump", user=ALICE)

    cancelled = bot.click(preview, "Cancel", user=ALICE)

    assert "Cancelled `test bump`" in cancelled.text and cancelled.body["replace_original"] is True
    assert executions(bot) == 0


def test_runbook_step_button_runs_the_command(bot):
    book = bot.command("runbook incident-response")
    buttons = [b["accessory"]["value"] for b in book.blocks if b.get("accessory", {}).get("type") == "button"]
    # Steps whose command exists get a Run button; the others show the command as text.
    assert buttons == ["status", "health", "runbook", "runbook safe-rollback", "incident postmortem"]
    assert "/ops incident declare sev2" in str(book.blocks)  # shown as text: its title is yours to write

    listing = bot.click(book, "Run", value="runbook", user=MALLORY)  # reading needs no role

    assert "runbooks" in listing.text
    assert "incident-response" in str(listing.blocks)
    assert listing.body["replace_original"] is False


def test_healthz_and_readyz(bot):
    assert bot.http.get("/healthz").json() == {"ok": True}
    ready = bot.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"redis": "ok", "postgres": "ok"}


def test_dlq_requeue_from_slack_shows_progress_then_the_result(bot):
    from tests.support.dlq import dead_letter, kill

    redis = bot.runtime.state.redis
    kill(redis, [dead_letter(i) for i in range(60)])

    preview = bot.command("dlq requeue --rate 25", user=ALICE)
    assert "Preview: requeue 60 of 60 matching dead letters" in preview.text
    done = bot.click(preview, "Confirm", user=ALICE)

    assert "Requeued 60 dead letters `jobs:dead` → `jobs`" in done.text
    assert done.body["replace_original"] is True
    progress = bot.slack.calls("chat.postMessage")
    progress = [c for c in progress if c.body["channel"] == "C-ops"]
    assert len(progress) == 1 and "Requeueing `jobs`" in progress[0].body["text"]
    assert "dlq cancel jobs" in json.dumps(progress[0].body["blocks"])
    updates = bot.slack.calls("chat.update")
    assert 1 <= len(updates) <= 3  # ~2 s of work: at most one throttled edit, then the final one
    assert all(u.body["ts"] == updates[0].body["ts"] for u in updates)  # one message, edited in place
    assert "Requeued 60 dead letters" in updates[-1].body["text"]
    assert "dlq cancel" not in json.dumps(updates[-1].body["blocks"])
    assert redis.llen("jobs") == 60
