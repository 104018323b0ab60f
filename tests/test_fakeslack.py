"""The fake Slack refuses what Slack refuses, answering as Slack does; slack_sdk's own clients talk to it."""

from __future__ import annotations

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.models.blocks import Block
from slack_sdk.webhook import WebhookClient

from bot.slack.app import form_view
from commands.incident.desk import NOTE_FORM
from tests.support.fakeslack import FakeSlack

TOKEN = "xoxb-test-token-0000"
pytestmark = pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")  # sent on purpose


@pytest.fixture
def fake():
    with FakeSlack(token=TOKEN, app_token="xapp-test") as slack:
        yield slack


@pytest.fixture
def client(fake):
    return WebClient(token=TOKEN, base_url=fake.api_url)


def refused(call) -> dict:
    with pytest.raises(SlackApiError) as caught:
        call()
    return caught.value.response.data


def section(text: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def button(text: str = "Run", value: str = "v", action_id: str = "a") -> dict:
    return {"type": "button", "text": {"type": "plain_text", "text": text}, "value": value, "action_id": action_id}


# -- the bot token -------------------------------------------------------------------------------

def test_calls_without_the_bot_token_are_refused_as_slack_does(fake, client):
    assert refused(lambda: WebClient(base_url=fake.api_url).chat_postMessage(channel="C1", text="hi"))["error"] \
        == "not_authed"
    assert refused(lambda: WebClient(token="xoxb-wrong", base_url=fake.api_url).auth_test())["error"] == "invalid_auth"
    assert refused(lambda: WebClient(token="xapp-test", base_url=fake.api_url).auth_test())["error"] \
        == "not_allowed_token_type"
    assert refused(lambda: client.apps_connections_open(app_token=TOKEN))["error"] == "not_allowed_token_type"

    assert client.auth_test()["ok"] and client.apps_connections_open(app_token="xapp-test")["ok"]
    assert fake.calls("auth.test")[-1].headers["Authorization"] == f"Bearer {TOKEN}"
    assert [c.refusal for c in fake.refusals()] == ["not_authed", "invalid_auth", "not_allowed_token_type",
                                                    "not_allowed_token_type"]
    assert all(c.status == 200 for c in fake.refusals())  # Slack answers ok: false with HTTP 200


# -- Block Kit -----------------------------------------------------------------------------------

BAD_BLOCKS = [
    ([section("x")] * 51, "no more than 50 items allowed [json-pointer:/blocks]"),
    ([section("x" * 3001)], "must be less than 3001 characters [json-pointer:/blocks/0/text/text]"),
    ([section("")], "must be more than 0 characters [json-pointer:/blocks/0/text/text]"),
    ([{"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}] * 11}],
     "no more than 10 items allowed [json-pointer:/blocks/0/fields]"),
    ([{"type": "section", "fields": [{"type": "mrkdwn", "text": "f" * 2001}]}],
     "must be less than 2001 characters [json-pointer:/blocks/0/fields/0/text]"),
    ([{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}],
     "must be less than 151 characters [json-pointer:/blocks/0/text/text]"),
    ([{"type": "header", "text": {"type": "mrkdwn", "text": "*h*"}}],
     "must be plain_text [json-pointer:/blocks/0/text/type]"),
    ([{"type": "actions", "elements": [button("b" * 76)]}],
     "must be less than 76 characters [json-pointer:/blocks/0/elements/0/text/text]"),
    ([{"type": "actions", "elements": [button(value="v" * 2001)]}],
     "must be less than 2001 characters [json-pointer:/blocks/0/elements/0/value]"),
    ([{"type": "actions", "elements": [button(action_id=f"a{i}") for i in range(26)]}],
     "no more than 25 items allowed [json-pointer:/blocks/0/elements]"),
    ([{"type": "actions", "elements": [button(), button()]}],
     "action_id a is not unique in its block [json-pointer:/blocks/0/elements/1/action_id]"),
    ([{**section("a"), "block_id": "b"}, {**section("b"), "block_id": "b"}],
     "block_id b is used by another block [json-pointer:/blocks/1/block_id]"),
    ([{"type": "section", "text": {"type": "mrkdwn", "text": "x", "emoji": True}}],
     "invalid additional property: emoji [json-pointer:/blocks/0/text]"),
    ([{"type": "actions", "elements": [{**button(), "confirm": {"title": {"type": "plain_text", "text": "t"},
                                                                 "text": {"type": "mrkdwn", "text": "c" * 301},
                                                                 "confirm": {"type": "plain_text", "text": "ok"},
                                                                 "deny": {"type": "plain_text", "text": "no"}}}]}],
     "must be less than 301 characters [json-pointer:/blocks/0/elements/0/confirm/text/text]"),
    ([{"type": "carousel_of_dreams"}], "unsupported type: carousel_of_dreams [json-pointer:/blocks/0]"),
]


@pytest.mark.parametrize("blocks, error", BAD_BLOCKS, ids=[e.split(" [")[0] for _, e in BAD_BLOCKS])
def test_blocks_slack_refuses_are_answered_with_its_errors_list(fake, client, blocks, error):
    answer = refused(lambda: client.chat_postMessage(channel="C1", text="fallback", blocks=blocks))

    assert answer["error"] == "invalid_blocks" and error in answer["errors"]
    assert f"[ERROR] {error}" in answer["response_metadata"]["messages"]
    assert fake.refusals("invalid_blocks")[0].body["blocks"] == blocks  # recorded as sent


def test_a_block_seen_before_is_judged_the_same_wherever_it_comes(client):
    """slack_sdk's verdict on a block is remembered (a bot sends the same blocks again and again); the
    errors still point at where the block is in each message."""
    unknown, extra = {"type": "carousel_of_dreams"}, {**section("x"), "colour": "red"}
    for before in ([], [section("ok")], [section("ok"), {"type": "divider"}]):
        at = len(before)
        answer = refused(lambda: client.chat_postMessage(channel="C1", text="t", blocks=[*before, unknown, extra]))
        assert answer["errors"] == [f"unsupported type: carousel_of_dreams [json-pointer:/blocks/{at}]",
                                    f"invalid additional property: colour [json-pointer:/blocks/{at + 1}]"]
    assert client.chat_postMessage(channel="C1", text="t", blocks=[section("x")] * 3)["ok"]


def test_a_block_too_deep_to_write_as_json_is_still_judged(fake):
    """The verdict cache keys a block by its JSON; one nested deeper than json.dumps goes (an in-process ack)
    is judged without the cache, as before the cache, instead of raising RecursionError."""
    deep = inner = {"type": "divider"}
    for _ in range(3000):
        inner["x"] = {}
        inner = inner["x"]
    assert fake.acked({"text": "t", "blocks": [deep]}).answer["errors"] == [
        "invalid additional property: x [json-pointer:/blocks/0]"]


def test_slack_sdk_alone_misses_a_button_too_long_inside_an_actions_block():
    Block.parse({"type": "actions", "elements": [button("b" * 76)]}).validate_json()  # passes: not recursive


def test_blocks_at_the_limits_are_posted(fake, client):
    blocks = [section("é" * 3000), {"type": "header", "text": {"type": "plain_text", "text": "😀" * 150}},
              {"type": "actions", "elements": [button("b" * 75, "v" * 2000, f"a{i}") for i in range(25)]},
              *[{"type": "divider"}] * 47]
    assert client.chat_postMessage(channel="C1", text="t" * 40_000, blocks=blocks)["ok"]
    assert fake.refusals() == []


def test_blocks_inside_attachments_are_checked_too(client):
    attachments = [{"color": "#E01E5A", "blocks": [section("ok")]}, {"color": "#000", "blocks": [section("x" * 3001)]}]
    answer = refused(lambda: client.chat_postMessage(channel="C1", text="t", attachments=attachments))
    assert answer["errors"] == ["must be less than 3001 characters [json-pointer:/attachments/1/blocks/0/text/text]"]
    assert refused(lambda: client.chat_postMessage(channel="C1", text="t", attachments=[{}] * 101))["error"] \
        == "too_many_attachments"


def test_blocks_sent_form_encoded_must_be_json(fake, client):
    answer = refused(lambda: client.api_call("chat.postMessage", data={"channel": "C1", "text": "t", "blocks": "[{"}))
    assert answer["error"] == "invalid_blocks_format"


# -- text ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("message, error", [
    ({"blocks": [section("no fallback")]}, "no_text"),
    ({"text": "   ", "blocks": [section("blank fallback")]}, "no_text"),
    ({"text": "   "}, "no_text"),
    ({}, "no_text"),
    ({"text": "x" * 40_001}, "msg_too_long"),
])
def test_text_rules(client, message, error):
    assert refused(lambda: client.chat_postMessage(channel="C1", **message))["error"] == error


def test_ephemeral_messages_are_checked_and_need_a_user(client):
    assert refused(lambda: client.chat_postEphemeral(channel="C1", user="", text="t"))["error"] == "invalid_arguments"
    no_text = refused(lambda: client.chat_postEphemeral(channel="C1", user="U1", blocks=[section("x")]))
    assert no_text["error"] == "no_text"
    assert client.chat_postEphemeral(channel="C1", user="U1", text="t")["message_ts"]


# -- channels and updates ------------------------------------------------------------------------

def test_channels_the_bot_cannot_post_to(fake, client):
    fake.channel("#secret", private=True, member=False)
    fake.channel("G0PRIVATE", name="vault", private=True, member=False)
    fake.channel("#gone", exists=False)
    post = lambda channel: refused(lambda: client.chat_postMessage(channel=channel, text="t"))["error"]  # noqa: E731

    assert post("#secret") == "channel_not_found"  # a private channel is invisible by name to non-members
    assert post("G0PRIVATE") == "not_in_channel"
    assert post("#gone") == "channel_not_found" and post("incidents") == "channel_not_found" and post("") \
        == "channel_not_found"
    assert client.chat_postMessage(channel="#incidents", text="t")["channel"] == "C-INCIDENTS"
    assert client.chat_postMessage(channel="U123", text="dm")["ok"]

    fake.workspace.chat_write_public = False  # an app installed without chat:write.public
    fake.channel("#lobby", member=False)
    assert post("#lobby") == "not_in_channel"


def test_chat_update_needs_a_ts_of_a_message_the_bot_posted(fake, client):
    posted = client.chat_postMessage(channel="#incidents", text="v1", blocks=[section("v1")])

    answer = refused(lambda: client.api_call("chat.update", json={"channel": posted["channel"], "text": "v2"}))
    assert answer["error"] == "invalid_arguments"
    assert answer["response_metadata"]["messages"] == ["[ERROR] missing required field: ts"]
    assert refused(lambda: client.chat_update(channel=posted["channel"], ts="1.000001", text="v2"))["error"] \
        == "message_not_found"
    assert refused(lambda: client.chat_update(channel="#incidents", ts=posted["ts"], text="v2"))["error"] \
        == "channel_not_found"  # chat.update takes the id Slack answered with, not a name
    assert refused(lambda: client.chat_update(channel=posted["channel"], ts=posted["ts"],
                                              blocks=[section("x" * 3001)], text="v2"))["error"] == "invalid_blocks"
    fake.workspace.message("C1", "5.000005")  # someone else's message
    assert refused(lambda: client.chat_update(channel="C1", ts="5.000005", text="x"))["error"] == "cant_update_message"

    assert client.chat_update(channel=posted["channel"], ts=posted["ts"], text="v2")["ts"] == posted["ts"]
    assert fake.workspace.messages[(posted["channel"], posted["ts"])].edits[-1]["text"] == "v2"


# -- modals --------------------------------------------------------------------------------------

def test_views_are_checked_with_a_modals_limits(client):
    assert client.views_open(trigger_id="t1", view=form_view(NOTE_FORM, "INC-1"))["ok"]  # opsbot's own form

    def answer(view, trigger="t1"):
        return refused(lambda: client.views_open(trigger_id=trigger, view=view))

    modal = {"type": "modal", "title": {"type": "plain_text", "text": "Form"}, "blocks": [section("x")]}
    assert client.views_open(trigger_id="t1", view={**modal, "blocks": [section("x")] * 100})["ok"]
    too_many = answer({**modal, "blocks": [section("x")] * 101})
    assert too_many["error"] == "invalid_arguments"
    assert "[ERROR] no more than 100 items allowed [json-pointer:/view/blocks]" \
        in too_many["response_metadata"]["messages"]
    assert "[ERROR] must be less than 25 characters [json-pointer:/view/title/text]" in answer(
        {**modal, "title": {"type": "plain_text", "text": "t" * 25}})["response_metadata"]["messages"]
    no_submit = {**form_view(NOTE_FORM, "INC-1")}
    del no_submit["submit"]
    assert "submit" in answer(no_submit)["response_metadata"]["messages"][0]
    assert answer(modal, trigger="")["response_metadata"]["messages"] == ["[ERROR] missing required field: trigger_id"]


# -- response_url --------------------------------------------------------------------------------

def test_a_response_url_answers_errors_with_an_http_status_and_a_short_body(fake):
    hook = WebhookClient(fake.response_url("k1"))
    bad = hook.send_dict({"text": "t", "blocks": [section("x" * 3001)]})
    assert (bad.status_code, bad.body) == (400, "invalid_blocks")
    assert hook.send_dict({"blocks": [section("x")]}).status_code == 400
    assert fake.responses("k1")[-1].refusal == "no_text"
    assert hook.send_dict({"text": "x" * 40_001}).body == "msg_too_long"

    assert [hook.send_dict({"text": f"reply {n}"}).status_code for n in range(6)] == [200] * 5 + [404]
    assert fake.responses("k1")[-1].refusal == "used_url"  # five messages per response_url

    fake.expire("k2")
    expired = WebhookClient(fake.response_url("k2")).send_dict({"text": "late"})
    assert (expired.status_code, expired.body) == (404, "expired_url")


def test_a_response_url_takes_five_messages_even_when_they_arrive_at_once(fake, monkeypatch):
    """Slack takes 5 messages per response_url; posts racing each other must not all pass the count while
    each is being checked (the check is made slow here, as a long message's is)."""
    import threading
    import time

    import httpx

    from tests.support import fakeslack

    real = fakeslack.message_refusal
    monkeypatch.setattr(fakeslack, "message_refusal", lambda body: (time.sleep(0.05), real(body))[1])
    start, statuses = threading.Barrier(8), []

    def post():
        start.wait()
        statuses.append(httpx.post(fake.response_url("k4"), json={"text": "t"}).status_code)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 5 + [404] * 3
    assert len([c for c in fake.responses("k4") if c.ok]) == 5
    refused_post = httpx.post(fake.response_url("k5"), json={"text": "t", "blocks": [section("x" * 3001)]})
    assert refused_post.status_code == 400  # a refused post does not use up the URL
    assert [httpx.post(fake.response_url("k5"), json={"text": "t"}).status_code for _ in range(6)] == [200] * 5 + [404]
    stats = httpx.get(fake.base + "/_stats").json()
    assert stats["response/k5"] == 7
    summed = sum(n for method, n in stats.items() if method.startswith("response/k"))
    assert summed > 7 and httpx.get(fake.base + "/_stats", params={"prefix": "response/k"}).json() == {"calls": summed}


def test_a_response_url_refuses_a_body_that_is_not_json(fake):
    import httpx

    answer = httpx.post(fake.response_url("k3"), content=b"{not json", headers={"Content-Type": "application/json"})
    assert (answer.status_code, answer.text) == (400, "invalid_payload")


# -- files ---------------------------------------------------------------------------------------

def test_a_file_is_shared_only_after_its_bytes_arrived_and_only_where_the_bot_may_post(fake, client):
    import httpx

    fake.channel("G0PRIVATE", private=True, member=False)
    target = client.files_getUploadURLExternal(filename="x.txt", length=3)
    assert refused(lambda: client.files_completeUploadExternal(files=[{"id": target["file_id"]}],
                                                               channel_id="C1"))["error"] == "file_not_found"
    httpx.post(target["upload_url"], content=b"abc")
    assert refused(lambda: client.files_completeUploadExternal(files=[{"id": target["file_id"]}],
                                                               channel_id="G0PRIVATE"))["error"] == "not_in_channel"
    assert client.files_completeUploadExternal(files=[{"id": target["file_id"]}], channel_id="C1")["ok"]
    assert fake.uploads[target["file_id"]] == b"abc"


# -- scripting and bookkeeping -------------------------------------------------------------------

def test_a_retry_after_a_429_is_checked_like_any_call(fake):
    fake.fail("chat.postMessage", status=429, body={"ok": False, "error": "ratelimited"}, headers={"Retry-After": "0"})
    from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

    client = WebClient(token=TOKEN, base_url=fake.api_url,
                       retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)])
    assert refused(lambda: client.chat_postMessage(channel="C1", blocks=[section("x")]))["error"] == "no_text"
    first, retried = fake.calls("chat.postMessage")
    assert (first.status, first.refusal) == (429, None)  # scripted: not a refusal by Slack's rules
    assert retried.refusal == "no_text"


def test_refusals_a_test_provokes_on_purpose_are_allowed(fake, client):
    fake.channel("G0PRIVATE", private=True, member=False)
    refused(lambda: client.chat_postMessage(channel="G0PRIVATE", text="t"))
    refused(lambda: client.chat_postMessage(channel="C1"))

    fake.allow("not_in_channel")
    assert [c.refusal for c in fake.unexpected_refusals()] == ["no_text"]
    assert not fake.calls("chat.postMessage")[0].ok


def test_a_fake_for_a_long_benchmark_keeps_counts_and_refusals_but_no_accepted_call():
    """`--counts-only` (bench/ack.py): tens of thousands of replies must not grow the fake's memory; its refusals
    are as strict, kept and counted."""
    import httpx

    with FakeSlack(token="xoxb-test-token-0000", keep_calls=False) as fake:
        assert [httpx.post(fake.response_url(f"b{n}"), json={"text": "t"}).status_code for n in range(3)] == [200] * 3
        refused = httpx.post(fake.response_url("b9"), json={"text": "t", "blocks": [section("x" * 3001)]})
        assert refused.status_code == 400
        assert [c.method for c in fake.calls()] == ["response/b9"] and fake.refusals()[0].refusal == "invalid_blocks"
        assert httpx.get(fake.base + "/_stats", params={"prefix": "response/b"}).json() == {"calls": 4}
        assert httpx.get(fake.base + "/_stats").json()["_refused"] == 1
