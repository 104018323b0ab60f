"""Incidents end to end: signed Slack requests in, the exact Web API calls out, reminders on a controlled clock."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from slack_sdk import WebClient

from commands.incident.desk import IncidentDesk
from tests.conftest import ALICE, BOB, BOT_TOKEN, REPO, SIGNING_SECRET, write_config
from tests.support.actionlog import TABLE, sql
from tests.support.harness import Reply, SlackBot

INCIDENTS = """
    incidents:
      severities:
        sev1: {description: "Full outage / data loss risk", response: 15m, page: true, notify: [SONCALL], color: "#E01E5A"}
        sev2: {description: "Major functionality degraded", response: 30m, notify: [SONCALL], color: "#ECB22E"}
        sev3: {description: "Minor feature degraded / work-around", response: 4h, color: "#36C5F0"}
        sev4: {description: "Cosmetic / low impact", color: "#888888"}
"""


@pytest.fixture
def config(tmp_path, database_url, redis_client, fake_slack):
    return write_config(tmp_path / "app.yaml", database_url, extra=INCIDENTS, api_url=fake_slack.api_url)


@pytest.fixture
def slack(make_runtime, fake_slack, config, slack_env):
    runtime = make_runtime(config, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))
    harness = SlackBot(runtime, fake_slack, SIGNING_SECRET)
    yield harness
    harness.close()


def posts(fake_slack, thread_ts=None):
    """chat.postMessage bodies, in order; with ``thread_ts`` only those in that thread."""
    calls = [c.body for c in fake_slack.calls("chat.postMessage")]
    return [b for b in calls if thread_ts is None or b.get("thread_ts") == thread_ts]


def declare(slack, fake_slack, text="incident declare sev2 Exports failing for all tenants"):
    reply = slack.command(text)
    root = fake_slack.wait_for("chat.postMessage")[-1].body
    return reply, root


def _ts_of(fake_slack, call) -> str:
    position = fake_slack.calls().index(call)  # the fake numbers ts by call order
    return f"{1700000000 + position + 1}.{position + 1:06d}"


# -- the whole flow ----------------------------------------------------------------------------------

def test_declare_work_escalate_resolve_postmortem(slack, fake_slack):
    reply, root = declare(slack, fake_slack)

    # The root message: severity colour and tag, title, commander, phase, target, buttons.
    assert root["channel"] == "#incidents"
    attachment = root["attachments"][0]
    assert attachment["color"] == "#ECB22E"
    text = str(attachment["blocks"])
    assert "SEV2 · INC-1 · Exports failing for all tenants" in text
    assert f"<@{ALICE}>" in text and "Triage" in text and "an update every 30m" in text
    labels = [e["text"]["text"] for b in attachment["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert labels == ["Escalate to SEV1", "Lower to SEV3", "Add note", "Resolve"]
    assert reply.body["text"] == "OK: INC-1 declared: SEV2 Exports failing for all tenants (<#C-INCIDENTS>)"
    ts = _ts_of(fake_slack, fake_slack.calls("chat.postMessage")[0])

    # A command with --incident posts its result into the thread; the requester gets a copy.
    status = slack.command("dlq status --incident INC-1")
    in_thread = fake_slack.wait(lambda s: posts(s, ts))
    assert in_thread[0]["channel"] == "C-INCIDENTS" and "queue" in in_thread[0]["text"].lower()
    assert status.body["response_type"] == "ephemeral" and "Posted in the INC-1 thread" in status.body["text"]

    # A guarded command in the incident: the request and the outcome land in the thread.
    preview = slack.command("test bump --by 3 --incident INC-1")
    assert "Preview" in preview.text
    slack.click(preview, "Confirm")
    thread = fake_slack.wait(lambda s: (lambda p: p if len(p) >= 3 else None)(posts(s, ts)))
    assert "requested `test bump --by 3`" in thread[1]["text"]
    assert thread[2]["text"] == "OK: counter is now 3"

    # Severity up: the root message is edited in place and SEV1 pages the on-call group.
    slack.command("incident sev sev1 --incident INC-1")
    update = fake_slack.wait_for("chat.update")[-1].body
    assert (update["channel"], update["ts"]) == ("C-INCIDENTS", ts)
    assert update["attachments"][0]["color"] == "#E01E5A" and "SEV1 · INC-1" in str(update["attachments"])
    page = fake_slack.wait(lambda s: [p for p in posts(s, ts) if "Paging" in p["text"]])[0]
    assert "<!subteam^SONCALL>" in page["text"]

    slack.command("incident note restarted the export worker --incident INC-1", user=BOB)
    slack.command("incident note follow-up: alert on export failures --incident INC-1")
    slack.command("incident phase mitigate --incident INC-1")
    slack.command("incident resolve rolled back the export service --incident INC-1")
    resolved = fake_slack.wait_for("chat.update", 3)[-1].body
    assert "Resolved" in str(resolved["attachments"]) and "rolled back the export service" in str(resolved)
    assert not [b for b in resolved["attachments"][0]["blocks"] if b["type"] == "actions"]  # no buttons left

    timeline = slack.command("incident timeline --incident INC-1")
    entries = [e["what"] for e in slack.runtime.engine.handle("incident timeline --incident INC-1",
                                                              _actor(), _where()).result.data["entries"]]
    assert entries[0].startswith("declared SEV2") and "restarted the export worker" in entries
    assert any("test bump" in e for e in entries) and entries.index("SEV2 → SEV1") < entries.index(
        "restarted the export worker")
    assert "Posted in the INC-1 thread" in timeline.body["text"]

    slack.command("incident postmortem --incident INC-1")
    complete = fake_slack.wait_for("files.completeUploadExternal")[0].body
    assert complete["channel_id"] == "C-INCIDENTS" and complete["thread_ts"] == ts
    draft = next(iter(fake_slack.uploads.values())).decode()
    assert draft.startswith("# Postmortem: INC-1 — Exports failing for all tenants")
    assert "rolled back the export service" in draft and "- [ ] follow-up: alert on export failures" in draft
    assert "`test bump`" in draft.split("## Actions taken through opsbot")[1].split("##")[0]


def test_a_confirm_the_action_log_refused_is_on_the_timeline_as_not_run(slack, fake_slack, database_url):
    """The confirm's row is refused by PostgreSQL (here a trigger): nothing runs and the Confirm is given back. The
    postmortem's timeline says so, rather than showing nothing, or (had the row gone in) a confirm that never ran."""
    declare(slack, fake_slack)
    preview = slack.command("test bump --by 3 --incident INC-1")
    sql(database_url, """
        CREATE FUNCTION opsbot.refuse_confirm() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.action = 'confirm' THEN
                RAISE EXCEPTION 'disk full' USING ERRCODE = 'invalid_parameter_value';
            END IF;
            RETURN NEW;
        END $$""")
    sql(database_url, f"CREATE TRIGGER refuse_confirm BEFORE INSERT ON {TABLE} FOR EACH ROW"
                      " EXECUTE FUNCTION opsbot.refuse_confirm()")

    refused = slack.click(preview, "Confirm")

    assert "was not executed" in refused.body["text"] and "confirm again" in refused.body["text"]
    sql(database_url, f"DROP TRIGGER refuse_confirm ON {TABLE}")
    assert slack.click(preview, "Confirm").body["text"] == "OK: counter is now 3"  # the same button, once it works

    timeline = slack.runtime.engine.handle("incident timeline --incident INC-1", _actor(), _where())
    entries = timeline.result.data["entries"]
    lines = [(e["what"], e["result"]) for e in entries if "test bump" in e["what"]]
    assert lines[0][0] == "requested `test bump --by 3`"
    assert lines[1][0] == "confirmed `test bump`: not run, the action log could not be written"
    assert "disk full" in lines[1][1]
    assert [what for what, _ in lines[2:]] == ["confirmed `test bump`", "`test bump`"]


def _actor():
    from bot.core.invocation import Actor

    return Actor(ALICE)


def _where():
    from bot.core.invocation import Where

    return Where("C-ops", channel_name="ops")


def test_a_run_button_clicked_inside_the_thread_belongs_to_the_incident(slack, fake_slack):
    declare(slack, fake_slack)
    ts = _ts_of(fake_slack, fake_slack.calls("chat.postMessage")[0])
    book = slack.command("runbook incident-response --incident INC-1")
    posted = fake_slack.wait(lambda s: posts(s, ts))[0]

    reply = slack.click(Reply(None, "thread", posted), "Run", value="health", channel="C-INCIDENTS", thread_ts=ts)

    assert book.body["response_type"] == "ephemeral"
    assert reply.body["response_type"] == "in_channel"  # answered in the thread through its response_url
    assert len(posts(fake_slack, ts)) == 1  # and not posted a second time
    actions = slack.runtime.services.get(IncidentDesk).store.actions(
        slack.runtime.services.get(IncidentDesk).store.find("INC-1"))
    assert any(payload.get("command") == "health" for _, _, _, payload in actions)


def test_several_incidents_keep_their_own_threads(slack, fake_slack):
    declare(slack, fake_slack, "incident declare sev3 Slow search")
    declare(slack, fake_slack, "incident declare sev2 Email not sending")
    first = _ts_of(fake_slack, fake_slack.calls("chat.postMessage")[0])
    second = _ts_of(fake_slack, fake_slack.calls("chat.postMessage")[1])

    slack.command("incident note reindexing --incident INC-1")
    slack.command("incident note SMTP 535 from the provider --incident inc-2")

    assert [p["text"] for p in posts(fake_slack, first)] == [f"OK: INC-1 update from <@{ALICE}>: reindexing"]
    assert "SMTP 535" in posts(fake_slack, second)[0]["text"]
    listing = slack.command("incident list")
    assert "2 open incidents" in listing.text


@pytest.mark.parametrize("text, message", [
    ("incident note hello", "run it in the incident's thread or add `--incident INC-n`"),
    ("dlq status --incident INC-99", "unknown incident INC-99; open incidents: INC-1"),
    ("dlq status --incident nope", "'nope' is not an incident id"),
    ("incident declare sev9 Something", "unknown severity 'sev9'"),
])
def test_wrong_place_or_unknown_ids_get_a_clear_message(slack, fake_slack, text, message):
    declare(slack, fake_slack)
    reply = slack.command(text)
    assert message in reply.text


# -- response targets --------------------------------------------------------------------------------

def test_a_quiet_incident_is_reminded_once_per_target(slack, fake_slack):
    declare(slack, fake_slack)
    desk = slack.runtime.services.get(IncidentDesk)
    ts = _ts_of(fake_slack, fake_slack.calls("chat.postMessage")[0])
    start = desk.store.find("INC-1").declared_at

    assert desk.sweep(start + timedelta(minutes=29)) == 0
    assert desk.sweep(start + timedelta(minutes=31)) == 1
    assert desk.sweep(start + timedelta(minutes=31)) == 0  # claimed: not again
    reminder = posts(fake_slack, ts)[-1]["text"]
    assert "INC-1 (SEV2) has had no update for 31m" in reminder and "<!subteam^SONCALL>" in reminder
    assert desk.sweep(start + timedelta(minutes=62)) == 1  # the next target


def test_an_update_restarts_the_response_clock(slack, fake_slack):
    declare(slack, fake_slack)
    desk = slack.runtime.services.get(IncidentDesk)
    with desk.store.pool.connection() as conn:  # declared 25 minutes ago: its first reminder is 5 minutes away
        conn.execute("UPDATE opsbot.incidents SET declared_at = declared_at - interval '25 minutes',"
                     " last_update_at = last_update_at - interval '25 minutes',"
                     " next_reminder_at = next_reminder_at - interval '25 minutes'")
    slack.command("incident note still digging --incident INC-1")
    noted = desk.store.find("INC-1").last_update_at

    assert desk.sweep(noted + timedelta(minutes=10)) == 0  # the old deadline passed, but there was an update
    assert desk.sweep(noted + timedelta(minutes=31)) == 1


def test_sev1_pages_at_once(slack, fake_slack):
    declare(slack, fake_slack, "incident declare sev1 Everything is down")
    ts = _ts_of(fake_slack, fake_slack.calls("chat.postMessage")[0])
    page = fake_slack.wait(lambda s: posts(s, ts))[0]
    assert page["text"].startswith("FAIL: Paging <!subteam^SONCALL>: SEV1 declared")


def test_an_overdue_postmortem_is_reminded_once(slack, fake_slack):
    declare(slack, fake_slack)
    slack.command("incident resolve fixed --incident INC-1")
    desk = slack.runtime.services.get(IncidentDesk)
    due = desk.store.find("INC-1").postmortem_due_at
    assert due - desk.store.find("INC-1").resolved_at == timedelta(hours=48)
    assert desk.sweep(due - timedelta(minutes=1)) == 0
    assert desk.sweep(due + timedelta(minutes=5)) == 1
    assert desk.sweep(due + timedelta(hours=5)) == 0
    assert "postmortem of INC-1 was due 5m ago" in posts(fake_slack)[-1]["text"]


def test_two_bot_processes_send_each_reminder_once(slack, fake_slack, config):
    declare(slack, fake_slack)
    desk = slack.runtime.services.get(IncidentDesk)
    at = (desk.store.find("INC-1").declared_at + timedelta(minutes=31)).isoformat()
    env = {**os.environ, "TEST_SLACK_BOT_TOKEN": BOT_TOKEN}
    command = [sys.executable, "-m", "tests.support.sweep", str(config), at, "5"]
    procs = [subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    sent = [int(proc.communicate(timeout=60)[0].strip() or 0) for proc in procs]

    assert sorted(sent) == [0, 1]  # five sweeps each, at the same moment: one reminder in all
    assert len([p for p in posts(fake_slack) if "has had no update" in p["text"]]) == 1


def test_without_slack_the_incident_is_recorded_and_works_by_id(make_runtime, tmp_path, database_url):
    from bot.core.invocation import Actor, Where

    runtime = make_runtime(write_config(tmp_path / "cli.yaml", database_url, extra=INCIDENTS))
    where = Where("cli")
    declared = runtime.engine.handle("incident declare sev3 Slow search", Actor.local("ops"), where).result
    assert declared.status == "ok" and "no thread was opened" in str(declared.data["notes"])
    noted = runtime.engine.handle("incident note reindexing --incident INC-1", Actor.local("ops"), where)
    assert noted.result.status == "ok" and noted.in_thread is None
    paged = runtime.engine.handle("incident declare sev1 Checkout down", Actor.local("ops"), where).result
    target = dict(paged.sections[0].fields)["Target response"]
    assert target.startswith("immediate (not paged: no notify groups, pager URL or Slack)")  # nothing could page
    assert datetime.now(UTC) - runtime.services.get(IncidentDesk).store.find("INC-1").declared_at < timedelta(1)


def test_status_counts_open_incidents(slack, fake_slack):
    declare(slack, fake_slack, "incident declare sev3 Slow search")
    line = next(line for line in slack.runtime.engine.handle("status", _actor(), _where()).result.data["lines"]
                if line["what"] == "incidents")
    assert line["color"] == "amber" and line["detail"] == "1 open: INC-1 SEV3 Slow search"


def test_add_note_opens_a_form_and_its_text_lands_on_the_timeline(slack, fake_slack):
    import json
    from urllib.parse import urlencode

    _, root = declare(slack, fake_slack)
    ts = _ts_of(fake_slack, fake_slack.calls("chat.postMessage")[0])
    root_message = Reply(None, "root", {"blocks": root["attachments"][0]["blocks"]})

    clicked = slack.click(root_message, "Add note", channel="C-INCIDENTS", wait=False, user=BOB)
    assert clicked.http.status_code == 200
    form = fake_slack.wait_for("views.open")[0].body
    view = form["view"] if isinstance(form["view"], dict) else json.loads(form["view"])
    assert view["private_metadata"] == "INC-1" and view["callback_id"] == "opsbot_incident_note"

    submission = {"type": "view_submission", "team": {"id": "T1"}, "user": {"id": BOB, "team_id": "T1"},
                  "api_app_id": "A1", "trigger_id": "trig-view",
                  "view": {**view, "id": "V1", "hash": "h1", "state": {"values": {
                      "note": {"text": {"type": "plain_text_input", "value": "DB failover done --really"}}}}}}
    answer = slack.post(urlencode({"payload": json.dumps(submission)}))

    assert answer.status_code == 200 and answer.text in ("", "null")  # the form closes
    note = fake_slack.wait(lambda s: [p for p in posts(s, ts) if "DB failover" in p["text"]])[0]
    assert note["text"] == f"OK: INC-1 update from <@{BOB}>: DB failover done --really"
    events = slack.runtime.services.get(IncidentDesk).store.events(
        slack.runtime.services.get(IncidentDesk).store.find("INC-1"))
    assert [(e.actor, e.text) for e in events if e.kind == "note"] == [(BOB, "DB failover done --really")]


def test_a_root_message_slack_refused_can_be_posted_again(slack, fake_slack):
    fake_slack.fail("chat.postMessage", status=200, body={"ok": False, "error": "channel_not_found"})
    reply = slack.command("incident declare sev3 Slow search")
    assert "the root message could not be posted" in str(reply.body)
    assert slack.runtime.services.get(IncidentDesk).store.find("INC-1").root_ts is None

    again = slack.command("incident repost --incident INC-1")
    assert "root message posted again" in again.text
    incident = slack.runtime.services.get(IncidentDesk).store.find("INC-1")
    assert incident.root_ts and incident.channel == "C-INCIDENTS"
    slack.command("incident note back on track --incident INC-1")
    note = fake_slack.wait(lambda s: [p for p in posts(s, incident.root_ts) if "back on track" in p["text"]])[0]
    assert note["text"] == f"OK: INC-1 update from <@{ALICE}>: back on track"


HOSTILE_TITLE = "Payments slow <!here> & co <https://evil.example|click here> <@U0BOSS>"
LIVE = ("<!here>", "<!channel>", "<https://evil", "<@U0BOSS>")


def _every_text(fake_slack) -> list[str]:
    """Every string Slack would parse as mrkdwn in everything the bot sent: Web API calls and response_url posts."""
    import json

    found = []

    def walk(value):
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "text" and isinstance(item, str):
                    found.append(item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and value.startswith(("[", "{")):
            try:
                walk(json.loads(value))  # form-encoded calls carry blocks as a JSON string
            except ValueError:
                pass

    for call in fake_slack.calls():
        walk(call.body)
    return found


def test_what_someone_typed_is_never_live_markup_anywhere_in_slack(slack, fake_slack):
    """`/ops incident declare sev3 Payments slow <!here> & co ...`: no live @here, link or mention in any message."""
    slack.command(f"incident declare sev3 {HOSTILE_TITLE}")
    slack.command(f"incident note checked {HOSTILE_TITLE} --incident INC-1")
    slack.command("incident list")
    slack.command("incident timeline --incident INC-1")
    slack.command(f"incident resolve fixed {HOSTILE_TITLE} --incident INC-1")
    slack.command(f"dlq peek --type {HOSTILE_TITLE.split()[2]!r}")

    texts = _every_text(fake_slack)
    assert sum("Payments slow" in text for text in texts) >= 10
    for text in texts:
        for live in LIVE:
            assert live not in text, text


def test_the_bots_own_pages_and_mentions_are_live(slack, fake_slack):
    """`/ops incident declare sev1 x`: the page mentions the on-call group for real, and the commander is mentioned."""
    slack.command("incident declare sev1 x", user=ALICE)
    fake_slack.wait(lambda s: any("Paging" in b.get("text", "") for b in posts(s)))
    page = next(b for b in posts(fake_slack) if "Paging" in b.get("text", ""))
    assert "Paging <!subteam^SONCALL>" in page["text"]
    assert "&lt;!subteam" not in str(page)
    root = posts(fake_slack)[0]
    assert f"<@{ALICE}>" in str(root["attachments"]) and f"&lt;@{ALICE}&gt;" not in str(root)
