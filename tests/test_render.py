"""One result, three renderings: Block Kit within Slack's limits, text, JSON; secrets never shown."""

from __future__ import annotations

import json

from slack_sdk.models.blocks import Block

from bot.redact import MASK, Redactor
from bot.render.blocks import to_message
from bot.render.text import to_text
from bot.result import Button, Result, Section, to_json

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
    text = to_text(Result.ok("2 queues", sections=[Section("jobs", fields=(("ready", "3"), ("dead", "14")),
                                                           text=":lock: see <https://x.test|the docs> <@U1>")]))
    assert text.splitlines() == ["[OK] 2 queues", "", "== jobs", "[guarded] see the docs (https://x.test) @U1",
                                 "  ready  3", "  dead   14"]


def test_a_word_ending_a_line_before_an_emoji_is_not_a_secret():
    from bot.redact import Redactor

    text = "readiness pass\n:white_circle: unknown"
    assert Redactor().text(text) == text
    assert Redactor().text("password: hunter2") == "password: [redacted]"
