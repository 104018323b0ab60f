"""One result, three renderings: Block Kit within Slack's limits, text, JSON; secrets never shown."""

from __future__ import annotations

import json

import pytest

from slack_sdk.models.blocks import Block

from bot.core.markup import Mrkdwn, code, here, link, md, mention, plain, subteam
from bot.core.redact import MASK, Redactor
from bot.render.blocks import to_message
from bot.render.text import to_text
from bot.core.result import Button, Result, Section, to_json

SECRET_RESULT = Result.fail(
    "could not reach postgresql://app:s3cret-pw@db:5432/app",
    data={"dsn": "redis://:hunter22@cache:6379/0", "password": "pw-value", "nested": {"api_key": "k-123"},
          "rows": 3},
    sections=[
        Section("Details", text="SMTP_PASS=hunter22 and token: xoxb-1234-5678-abcdef"),
        Section(fields=(("smtp_password", "pw-value"), ("host", "smtp.example.com"))),
        Section(code="Authorization: Bearer abc.def.ghi"),
    ],
    command="email triage",
)


def test_secrets_are_redacted_in_every_rendering():
    redactor = Redactor(known=["k-123"])
    renderings = [to_text(SECRET_RESULT, redactor), to_json(redactor.result(SECRET_RESULT)),
                  json.dumps(to_message(SECRET_RESULT, redactor))]
    for rendered in renderings:
        for secret in ("s3cret-pw", "hunter22", "pw-value", "k-123", "xoxb-1234", "abc.def.ghi"):
            assert secret not in rendered, (secret, rendered)
        assert MASK in rendered
    assert "smtp.example.com" in renderings[0]


def test_json_rendering_has_the_spec_shape():
    body = json.loads(to_json(Result.ok("fine", data={"n": 1}, command="dlq status")))
    assert body == {"command": "dlq status", "status": "ok", "summary": "fine", "data": {"n": 1}}


def test_huge_results_stay_within_slack_limits():
    result = Result.warn(
        "s" * 5000,
        sections=[Section(f"part {i}", text="t" * 4000, fields=tuple((f"k{j}", "v" * 2500) for j in range(23)),
                          code="c" * 9000) for i in range(60)],
        buttons=[Button(f"b{i}", "run", "help") for i in range(40)],
        command="x" * 3000,
    )
    message = to_message(result)
    blocks = message["blocks"]
    assert len(blocks) <= 50
    assert len(message["text"]) <= 3000
    for block in blocks:
        Block.parse(block).validate_json()  # slack_sdk's own limit checks
        for field in block.get("fields", []):
            assert len(field["text"]) <= 2000
        if block["type"] == "section" and "text" in block:
            assert len(block["text"]["text"]) <= 3000
        if block["type"] == "actions":
            assert len(block["elements"]) <= 25
    assert "more blocks not shown" in json.dumps(blocks)
    assert "cut to fit Slack" in json.dumps(blocks)


def test_buttons_have_unique_action_ids_and_a_confirm_dialog():
    result = Result.ok("p", buttons=[Button("Confirm", "confirm", "id1", style="primary", confirm="Run it?"),
                                     Button("Cancel", "cancel", "id1")])
    actions = to_message(result)["blocks"][-1]
    assert [e["action_id"] for e in actions["elements"]] == ["opsbot_confirm:0", "opsbot_cancel:1"]
    assert actions["elements"][0]["confirm"]["text"]["text"] == "Run it?"


def test_text_rendering_reads_well_in_a_terminal():
    markup = md(":lock: see {} {}", link("https://x.test", "the docs"), mention("U1"))
    text = to_text(Result.ok("2 queues", sections=[Section("jobs", fields=(("ready", "3"), ("dead", "14")),
                                                           text=markup)]))
    assert text.splitlines() == ["[OK] 2 queues", "", "== jobs", "[guarded] see the docs (https://x.test) @U1",
                                 "  ready  3", "  dead   14"]


def test_a_word_ending_a_line_before_an_emoji_is_not_a_secret():
    from bot.core.redact import Redactor

    text = "readiness pass\n:white_circle: unknown"
    assert Redactor().text(text) == text
    assert Redactor().text("password: hunter2") == "password: [redacted]"


HOSTILE = "Payments slow <!here> & co <https://evil.example|click here> <@U0BOSS> <#C0SECRET> <!subteam^S0ALL>"


def _all_text(message: dict) -> str:
    """Every mrkdwn string Slack will parse in a message: the fallback text and each block's text and fields."""
    return json.dumps(message)


def test_what_users_wrote_never_becomes_live_markup_in_any_field():
    result = Result.fail(HOSTILE, sections=[
        Section(HOSTILE, text=HOSTILE, fields=((HOSTILE, HOSTILE),), code=HOSTILE,
                button=Button("Run", "run", "help", confirm=HOSTILE)),
    ], buttons=[Button("Go", "run", "help", confirm=HOSTILE)], command=HOSTILE)
    message = to_message(result)
    texts = [message["text"]]
    for block in message["blocks"]:
        texts += [block.get("text", {}).get("text", "")] + [f["text"] for f in block.get("fields", [])]
        texts += [e.get("text", "") for e in block.get("elements", []) if isinstance(e.get("text"), str)]
        for element in block.get("elements", []) + [block.get("accessory") or {}]:
            if element.get("confirm"):
                texts.append(element["confirm"]["text"]["text"])
    assert len([t for t in texts if "Payments slow" in t]) >= 7
    for text in texts:
        for live in ("<!here>", "<https://evil", "<@U0BOSS>", "<#C0SECRET>", "<!subteam"):
            assert live not in text, text
    assert "&lt;!here&gt; &amp; co" in message["text"]


def test_the_bots_own_mentions_and_links_stay_live():
    summary = md("Paging {}: {} requested {} {}", subteam("S0ONCALL"), mention("U0ALICE"), code("dlq requeue"),
                 link("https://status.example/x?a=1&b=2", "status page"))
    message = to_message(Result.fail(summary, sections=[Section(text=md("by {} in {}", mention("U0BOB"), here()))]))
    assert message["text"] == ("FAIL: Paging <!subteam^S0ONCALL>: <@U0ALICE> requested `dlq requeue` "
                               "<https://status.example/x?a=1&amp;b=2|status page>")
    assert "by <@U0BOB> in <!here>" in json.dumps(message["blocks"])


def test_a_value_combined_with_markup_is_escaped_however_it_is_combined():
    value = "<!channel> & <@U1>"
    for combined in (md("{} says {}", mention("U2"), value), mention("U2") + value, value + mention("U2"),
                     Mrkdwn(", ").join([mention("U2"), value])):
        assert "<@U2>" in combined and "&lt;!channel&gt; &amp; &lt;@U1&gt;" in combined
    assert plain(md("{} says {}", mention("U2"), value)) == "@U2 says <!channel> & <@U1>"
    # An f-string gives a plain str: its mention is shown as text, never live.
    assert "&lt;@U2&gt;" in to_message(Result.ok(f"{mention('U2')} did it"))["text"]


def test_ids_and_links_cannot_smuggle_markup():
    assert mention("U1> <!here") == "U1&gt; &lt;!here"      # not an id: shown as a name
    assert link("javascript:alert(1)", "x") == "x (javascript:alert(1))"
    assert link("https://a.example/|<!here>", "y") == "y (https://a.example/|&lt;!here&gt;)"
    assert link("https://a.example/", "a|<!here>") == "<https://a.example/|a¦&lt;!here&gt;>"
    assert code("a`<!here>`b") == "`aˋ&lt;!here&gt;ˋb`"
    with pytest.raises(ValueError):
        subteam("S1>|<!here")


def test_cutting_a_long_message_never_splits_an_escape_or_a_mention():
    for filler in range(2990, 3000):
        summary = md("{}{}", "x" * filler, mention("U0ALICE")) + " & more <tail>"
        head = to_message(Result.ok(summary))["blocks"][0]["text"]["text"]
        Block.parse(to_message(Result.ok(summary))["blocks"][0]).validate_json()
        body = head.split("\n…")[0]
        assert body.count("<") == body.count(">") and not body.rstrip("*").endswith(("&", "&a", "&am", "&amp"))


def test_a_message_stays_within_slacks_total_size_and_never_cuts_a_command():
    result = Result.ok("big", sections=[Section(f"part {i}", text="t" * 2900) for i in range(30)],
                       buttons=[Button("Run", "run", "dlq peek --type " + "x" * 2100), Button("Help", "run", "help")])
    message = to_message(result)
    total = sum(len(b.get("text", {}).get("text", "")) for b in message["blocks"])
    assert total <= 12_100 and "more blocks not shown" in json.dumps(message)
    buttons = [e for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert [b["value"] for b in buttons] == ["help"]  # the too-long command is left out, not cut
    assert "too long for Slack was left out" in json.dumps(message)
    small = to_message(Result.ok("fits", sections=[Section(text=f"s{i}") for i in range(45)]))
    assert "not shown" not in json.dumps(small)
