"""Inputs at the edges (long, astral unicode, markup characters) still make messages Slack takes.

The strict fake Slack checks every post, reply and ack; the ``fake_slack`` fixture fails a
test in which it refused anything.
"""

from __future__ import annotations

import pytest
from slack_sdk import WebClient

from tests.conftest import BOT_TOKEN, SIGNING_SECRET, write_config
from tests.support.harness import SlackBot

INCIDENTS = """
incidents:
  severities:
    sev1: {description: "Full outage", response: 15m, page: true, notify: [SONCALL], color: "#E01E5A"}
    sev3: {description: "Minor", response: 4h, color: "#36C5F0"}
"""
LONG = "😀<&>" * 500 + "é*_`" * 400  # 3,600 characters: near the 4,000 a command takes


@pytest.fixture
def bot(tmp_path, database_url, make_runtime, fake_slack, slack_env, redis_client):
    path = write_config(tmp_path / "app.yaml", database_url, extra=INCIDENTS, api_url=fake_slack.api_url)
    harness = SlackBot(make_runtime(path, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url)),
                       fake_slack, SIGNING_SECRET)
    yield harness
    harness.close()


def test_an_incident_with_a_huge_unicode_title_and_note(bot, fake_slack):
    bot.command(f"incident declare sev1 '{LONG}'")
    for text in (f"incident note '{LONG}' --incident INC-1", "incident sev sev3 --incident INC-1",
                 "incident timeline --incident INC-1", "incident resolve --incident INC-1",
                 "incident postmortem --incident INC-1"):
        assert bot.command(text).text
    root = fake_slack.calls("chat.postMessage")[0]
    assert root.ok and len(root.body["text"]) <= 3000
    assert [c.ok for c in fake_slack.calls("chat.update")] == [True] * len(fake_slack.calls("chat.update"))


@pytest.mark.parametrize("text", [
    "help " + "x" * 3900,                       # a usage error, answered in the ack
    f"runbook email-not-sending x='{LONG}'",
    "dlq peek --type " + "😀" * 3900,
    "x" * 4100,                                 # longer than a command may be
])
def test_long_command_text_is_answered_within_slacks_limits(bot, fake_slack, text):
    reply = bot.command(text, wait=False)
    if not reply.http.text:
        bot.reply_to(reply.key)
    assert fake_slack.calls("ack") or fake_slack.responses(reply.key)
