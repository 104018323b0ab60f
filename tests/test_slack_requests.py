"""Requests to /slack/events that are signed correctly but malformed get 400 (or 401), never a 500 and a traceback."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from slack_sdk import WebClient

from tests.conftest import BOT_TOKEN, SIGNING_SECRET
from tests.support.harness import SlackBot


@pytest.fixture
def bot(make_runtime, fake_slack, config_path, slack_env):
    runtime = make_runtime(config_path, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))
    harness = SlackBot(runtime, fake_slack, SIGNING_SECRET)
    yield harness
    harness.close()


def _payload(document) -> str:
    return urlencode({"payload": document if isinstance(document, str) else json.dumps(document)})


BAD_BODIES = {
    "payload not JSON": _payload("{not json"),
    "payload a JSON list": _payload([1, 2]),
    "payload a JSON string": _payload("\"block_actions\""),
    "block_actions without actions": _payload({"type": "block_actions", "user": {"id": "U1"}, "actions": []}),
    "block_actions with a non-object action": _payload({"type": "block_actions", "user": {"id": "U1"},
                                                         "actions": ["x"]}),
    "view_submission without a view": _payload({"type": "view_submission", "user": {"id": "U1"}}),
    "JSON body that is a list": "[1, 2, 3]",
    "form body with two payloads": "payload=%7B%7D&payload=%7B%7D",
    "binary": "\udcff\x00\x01".encode("utf-8", "surrogateescape").decode("latin-1"),
}


@pytest.mark.parametrize("name", BAD_BODIES)
def test_malformed_but_signed_bodies_get_400(bot, name, caplog):
    answer = bot.post(BAD_BODIES[name])
    assert answer.status_code == 400, (answer.status_code, answer.text)
    assert "Traceback" not in caplog.text
    bot.command("help")  # the server still works
    assert bot.runtime.state.redis.llen("opsbot:work:queue") == 0


@pytest.mark.parametrize("timestamp", ["abc", "", "1e9", "-1", "99999999999999999999999"])
def test_a_timestamp_that_is_not_a_number_gets_401(bot, timestamp, caplog):
    body = bot.command_body("help", user="UALICE", channel="C1", channel_name="ops", key="k", trigger="t")
    answer = bot.http.post("/slack/events", content=body.encode(), headers={
        "Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": "v0=" + "0" * 64})
    assert answer.status_code == 401
    assert "Traceback" not in caplog.text


def test_an_oversized_body_is_refused_before_anything_reads_it(bot):
    answer = bot.post("text=" + "x" * 2_000_000)
    assert answer.status_code == 413


def _bolt_answer(bot, body: str, timestamp: str) -> tuple[str, dict, bytes]:
    """What the Bolt app alone (build_app behind Bolt's own WSGI adapter) answers to ``body``."""
    import io

    from slack_bolt.adapter.wsgi import SlackRequestHandler

    from bot.slack.app import Intake, build_app
    from bot.store.workqueue import WorkQueue

    handler = SlackRequestHandler(build_app(bot.runtime, Intake(bot.runtime, WorkQueue(bot.runtime.state.ack_redis))))
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/slack/events", "SERVER_PROTOCOL": "HTTP/1.1",
               "CONTENT_TYPE": "application/x-www-form-urlencoded", "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body.encode()), "HTTP_X_SLACK_REQUEST_TIMESTAMP": timestamp,
               "HTTP_X_SLACK_SIGNATURE": bot.verifier.generate_signature(timestamp=timestamp, body=body)}
    answer: dict = {}
    content = b"".join(handler(environ, lambda status, headers: answer.update(status=status, headers=headers)))
    return answer["status"], dict(answer["headers"]), content


@pytest.mark.parametrize("text", ["help", "dlq requeue --bogus-flag"])
def test_a_command_is_acked_without_bolt_exactly_as_bolt_acks_it(bot, text):
    """`opsbot serve` acks /ops itself (the gate has verified and parsed it): the same status, content type and
    body as the Bolt listener gives, for a plain ack and for a usage error answered in the ack."""
    import time

    body = bot.command_body(text, user="UALICE", channel="C1", channel_name="ops", key=f"same-{len(text)}",
                            trigger="t")
    status, headers, content = _bolt_answer(bot, body, str(int(time.time())))
    answer = bot.post(body)
    assert (f"{answer.status_code} OK", answer.headers["content-type"], answer.content) == \
           (status, headers["content-type"], content)
    assert answer.headers["content-length"] == headers["content-length"]
    assert (b'"response_type": "ephemeral"' in content) == ("bogus" in text), content
    assert bot.runtime.state.redis.llen("opsbot:work:queue") in (0, 1, 2)  # the worker may have taken them


def test_a_command_that_says_payload_is_answered(bot):
    """Bolt 1.30 reads any form body holding the text "payload" as an interaction, finds no payload field and
    answers 404 (Slack: dispatch_failed), so `/ops audit verify payload` or a command from #payload-team was
    lost. It is acked and run."""
    import time

    body = bot.command_body("help payload", user="UALICE", channel="C1", channel_name="payload-team", key="pl",
                            trigger="t")
    assert _bolt_answer(bot, body, str(int(time.time())))[0] == "404 Not Found"  # what Bolt alone does
    reply = bot.command("help payload", channel_name="payload-team")
    assert reply.http.status_code == 200
    assert reply.text, reply.body


@pytest.fixture
def bot_without_worker(make_runtime, fake_slack, config_path, slack_env):
    """A bot whose deliveries stay in the queue (no worker takes them), so a test can see what was queued."""
    runtime = make_runtime(config_path, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))
    harness = SlackBot(runtime, fake_slack, SIGNING_SECRET, with_worker=False)
    yield harness
    harness.close()


@pytest.mark.parametrize("fields, queued", [
    ("ssl_check=1&{command}", 0),              # Slack checking the certificate: Bolt answers it, runs nothing
    ("{command}&ssl_check=1", 0),
    ("{command}&ssl_check=0", 1),              # not a check (Bolt looks for "1"): a command like any other
    ("ssl_check=1&{command}&ssl_check=0", 1),  # the last value wins, as in Bolt's dict(parse_qsl(...))
])
def test_an_ssl_check_that_names_the_command_is_not_run(bot_without_worker, fields, queued):
    """Bolt answers a body with ssl_check=1 with an empty 200 before any listener, so even one that carries
    `command=/ops` runs nothing. The fast path answers it with the same bytes and queues nothing either."""
    import time

    bot = bot_without_worker
    command = bot.command_body("help", user="UALICE", channel="C1", channel_name="ops", key="ssl", trigger="t")
    body = fields.format(command=command)
    status, headers, content = _bolt_answer(bot, body, str(int(time.time())))
    bolt_queued = bot.runtime.state.redis.llen("opsbot:work:queue")
    answer = bot.post(body)
    assert (f"{answer.status_code} OK", answer.headers["content-type"], answer.content) == \
           (status, headers["content-type"], content)
    assert bolt_queued == queued
    assert bot.runtime.state.redis.llen("opsbot:work:queue") == 2 * queued, "the fast path ran what Bolt did not"
