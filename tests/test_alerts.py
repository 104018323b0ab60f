"""POST /alerts on a real `opsbot serve` (HTTP server + workers) with real Redis/PostgreSQL and the fake Slack."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading

import httpx
import pytest
from slack_sdk import WebClient

from bot.core.invocation import Actor, Where

from tests.conftest import ALICE, BOT_TOKEN, MALLORY, SIGNING_SECRET, write_config
from tests.support.alerts import ALERTS_CONFIG, ALERTS_TOKEN, alertmanager_body, grafana_legacy_body, post_alert, \
    threads
from tests.support.harness import Reply, SlackBot
from tests.support.servers import RedisServer, free_port, wait_for_port


@pytest.fixture
def alerts_env(monkeypatch, slack_env):
    monkeypatch.setenv("TEST_OPSBOT_ALERTS_TOKEN", ALERTS_TOKEN)
    monkeypatch.setenv("TEST_OPSBOT_ALERTS_PASSWORD", "basic-pass-0123456789")


@pytest.fixture
def alerts_config(tmp_path, database_url, redis_client, alerts_env):
    return write_config(tmp_path / "app.yaml", database_url, extra=ALERTS_CONFIG)


def _bot(make_runtime, fake_slack, path, with_worker=True) -> SlackBot:
    runtime = make_runtime(path, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))
    return SlackBot(runtime, fake_slack, SIGNING_SECRET, with_worker=with_worker)


@pytest.fixture
def bot(make_runtime, fake_slack, alerts_config):
    harness = _bot(make_runtime, fake_slack, alerts_config)
    yield harness
    harness.close()


def _queued(bot) -> int:
    return bot.runtime.state.redis.llen("opsbot:work:queue")


def test_an_alert_group_becomes_one_thread_with_its_runbook_buttons_and_diagnosis(bot):
    response = post_alert(bot.http, alertmanager_body("DeadLetterBacklog", labels={"queue": "jobs",
                                                                                   "severity": "warning"}))
    assert response.status_code == 200 and response.json() == {"ok": True}

    bot.slack.wait(lambda s: len([c for c in s.calls("chat.postMessage") if c.body.get("thread_ts")]) >= 3)
    roots = threads(bot.slack)
    assert len(roots) == 1
    (root_ts, replies), = roots.items()
    root = next(c for c in bot.slack.calls("chat.postMessage") if c.answer.get("ts") == root_ts)
    assert root.body["channel"] == "#incidents"
    attachment = root.body["attachments"][0]
    assert attachment["color"] == "#ECB22E"
    text = json.dumps(attachment["blocks"])
    assert "FIRING DeadLetterBacklog" in text and "dead-letter-backlog queue=jobs" in text
    assert "Silence in Alertmanager" in text and "http://prometheus.example:9090/graph" in text
    buttons = [e for b in attachment["blocks"] if b["type"] == "actions" for e in b["elements"]]
    values = [b["value"] for b in buttons]
    assert "dlq status" in values and "dlq requeue jobs" in values  # the guarded step is only a button
    assert any(v.startswith("alerts silence ") for v in values)
    summaries = [c.body["text"] for c in replies]
    assert any("Dead-letter backlog" in s for s in summaries)  # the runbook, in the thread
    assert any("Diagnosis, step 1" in s and "dlq status" in s for s in summaries)
    assert any("Diagnosis, step 2" in s and "dlq peek jobs" in s for s in summaries)
    assert not any("requeue" in s and "Diagnosis" in s for s in summaries)  # guarded: never run on its own
    kinds = [e.action for e in bot.runtime.state.action_log.entries()]
    assert "preview" not in kinds and "confirmed" not in kinds


def test_repeats_update_the_root_and_resolve_lands_in_the_same_thread(bot):
    body = alertmanager_body("WorkerDown", labels={"severity": "warning"})
    post_alert(bot.http, body)
    bot.slack.wait_for("chat.postMessage")
    body["alerts"][0]["startsAt"] = "2026-11-23T20:01:00Z"  # a repeat (not the identical body: that is a retry)
    post_alert(bot.http, body)
    updates = bot.slack.wait_for("chat.update")
    assert "2 · last" in json.dumps(updates[-1].body["attachments"], ensure_ascii=False)
    post_alert(bot.http, alertmanager_body("WorkerDown", labels={"severity": "warning"}, status="resolved"))
    bot.slack.wait(lambda s: any("Resolved: WorkerDown" in c.body.get("text", "")
                                 for c in s.calls("chat.postMessage")))
    roots = threads(bot.slack)
    assert len(roots) == 1
    last = bot.slack.calls("chat.update")[-1].body
    assert last["attachments"][0]["color"] == "#2EB67D" and "RESOLVED WorkerDown" in last["text"]
    resolved = [c for c in bot.slack.calls("chat.postMessage") if "Resolved: WorkerDown" in c.body["text"]]
    assert resolved[0].body["thread_ts"] == next(iter(roots))


def test_an_identical_retry_is_handled_once(bot):
    body = alertmanager_body("CronJobFailed")
    assert post_alert(bot.http, body).status_code == 200
    assert post_alert(bot.http, body).status_code == 200
    bot.slack.wait_for("chat.postMessage")
    post_alert(bot.http, alertmanager_body("Other"))  # a later body: once it is posted, the retry was handled
    bot.slack.wait(lambda s: len(threads(s)) == 2)
    assert bot.slack.calls("chat.update") == []


@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", "Bearer x", f"bearer {ALERTS_TOKEN}x",
                                  "Basic " + base64.b64encode(b"alertmanager:wrong").decode(), "Basic ###",
                                  f"Token {ALERTS_TOKEN}"])
def test_missing_or_forged_credentials_get_401_and_nothing_is_queued(make_runtime, fake_slack, alerts_config, auth):
    bot = _bot(make_runtime, fake_slack, alerts_config, with_worker=False)
    try:
        response = bot.http.post("/alerts", content=json.dumps(alertmanager_body("X")).encode(),
                                 headers={"Authorization": auth} if auth else {})
        assert response.status_code == 401
        assert _queued(bot) == 0
    finally:
        bot.close()


def test_basic_auth_and_a_grafana_legacy_webhook_are_taken(make_runtime, fake_slack, alerts_config):
    bot = _bot(make_runtime, fake_slack, alerts_config, with_worker=False)
    try:
        basic = "Basic " + base64.b64encode(b"alertmanager:basic-pass-0123456789").decode()
        response = bot.http.post("/alerts", content=json.dumps(grafana_legacy_body("DeadLetterBacklog")).encode(),
                                 headers={"Authorization": basic})
        assert response.status_code == 200
        assert _queued(bot) == 1
    finally:
        bot.close()


def test_bad_bodies_are_refused(make_runtime, fake_slack, alerts_config):
    bot = _bot(make_runtime, fake_slack, alerts_config, with_worker=False)
    try:
        assert post_alert(bot.http, b"{not json").status_code == 400
        assert post_alert(bot.http, b"[1, 2]").status_code == 400
        assert post_alert(bot.http, {"hello": "world"}).status_code == 400
        assert post_alert(bot.http, {"alerts": "nope"}).status_code == 400
        huge = json.dumps(alertmanager_body("X", annotations={"summary": "x" * 3_000_000})).encode()
        assert post_alert(bot.http, huge).status_code == 413
        assert bot.http.get("/alerts").status_code == 405
        assert _queued(bot) == 0
    finally:
        bot.close()


def test_no_matching_runbook_is_still_posted_with_a_hint(bot):
    post_alert(bot.http, alertmanager_body("SomethingNobodyWrote", labels={"team": "blue"}))
    root = bot.slack.wait_for("chat.postMessage")[0]
    text = json.dumps(root.body["attachments"])
    assert "No runbook answers" in text and "team=blue" in text


def test_a_critical_alert_declares_an_incident_linked_both_ways(bot):
    post_alert(bot.http, alertmanager_body("DeadLetterBacklog", labels={"queue": "jobs", "severity": "critical"}))
    bot.slack.wait(lambda s: any("declared (SEV2) from this alert" in c.body.get("text", "")
                                 for c in s.calls("chat.postMessage")))
    incident_root = next(c for c in bot.slack.calls("chat.postMessage") if "SEV2 · INC-" in c.body.get("text", ""))
    assert "DeadLetterBacklog" in incident_root.body["text"]
    update = bot.slack.wait(lambda s: next((c for c in s.calls("chat.update") if "INC-" in json.dumps(c.body)), None))
    assert "Incident" in json.dumps(update.body["attachments"])
    note = bot.slack.wait(lambda s: next((c for c in s.calls("chat.postMessage")
                                          if "alert DeadLetterBacklog firing" in c.body.get("text", "")), None))
    assert note.body["thread_ts"] == incident_root.answer["ts"]  # in the incident's thread
    timeline = bot.runtime.engine.handle("incident timeline --incident INC-1", Actor.local(), Where())
    assert any("alert DeadLetterBacklog firing" in e["what"] for e in timeline.result.data["entries"])


def test_two_replicas_receiving_the_same_group_at_once_make_one_thread(make_runtime, fake_slack, alerts_config):
    one = _bot(make_runtime, fake_slack, alerts_config)
    two = _bot(make_runtime, fake_slack, alerts_config)
    try:
        bodies = []
        for n in range(6):  # a burst of notifications of one group, not identical (repeats), to both replicas
            body = alertmanager_body("QueueDepthHigh", labels={"queue": "jobs"})
            body["alerts"][0]["startsAt"] = f"2026-11-23T20:0{n}:00Z"
            bodies.append(body)
        go = threading.Barrier(len(bodies))

        def send(n: int) -> None:
            with httpx.Client(base_url=str((one if n % 2 else two).http.base_url), timeout=10) as http:
                go.wait()
                assert post_alert(http, bodies[n]).status_code == 200

        senders = [threading.Thread(target=send, args=(n,)) for n in range(len(bodies))]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join()
        fake_slack.wait(lambda s: len(s.calls("chat.update")) >= len(bodies) - 1, timeout=30)
        assert len(threads(fake_slack)) == 1
        assert '"count": 6' in one.runtime.state.redis.get(
            next(iter(one.runtime.state.redis.scan_iter("opsbot:alerts:group:*")))).decode()
    finally:
        one.close()
        two.close()


def test_hostile_labels_and_annotations_stay_text_and_within_slack_limits(bot):
    hostile = {"queue": "<!here> *bold* <https://evil.example|click me> &amp;", "team": "x" * 5000,
               "<@U123>": "<#C123|general>", "severity": "warning"}
    notes = {"summary": "<!channel> `code` <https://evil.example|innocent link> " + "y" * 10_000,
             "description": "<@UADMIN> please approve"}
    body = alertmanager_body("DeadLetterBacklog", labels=hostile, annotations=notes, count=1000,
                             generator="https://evil.example/|<!here>", external="javascript:alert(1)")
    for alert in body["alerts"][1:]:  # 1000 alerts, the huge values on the first (the body stays under the limit)
        alert["labels"]["team"] = "<!here>"
        alert["annotations"] = {"summary": "<https://evil.example|x> <!subteam^S1>"}
    assert post_alert(bot.http, body).status_code == 200
    bot.slack.wait(lambda s: len([c for c in s.calls("chat.postMessage") if c.body.get("thread_ts")]) >= 2)
    root = next(c for c in bot.slack.calls("chat.postMessage") if not c.body.get("thread_ts"))
    assert root.ok  # the fake Slack checked Block Kit and its limits
    everything = json.dumps([c.body for c in bot.slack.calls() if c.method.startswith("chat.")])
    for live in ("<!here>", "<!channel>", "<!subteam", "<@U123>", "<@UADMIN>", "<#C123", "<https://evil.example",
                 "<javascript:"):
        assert live not in everything, live
    assert "&lt;!here&gt;" in everything
    text = json.dumps(root.body["attachments"], ensure_ascii=False)
    assert "and 990 more alerts in this group" in text and "firing of 1000" in text
    assert len(root.body["attachments"][0]["blocks"]) <= 50


def test_an_accepted_alert_survives_a_dead_worker_and_slack_being_down(make_runtime, fake_slack, alerts_config):
    receiving = _bot(make_runtime, fake_slack, alerts_config, with_worker=False)  # the HTTP side only: accepted
    assert post_alert(receiving.http, alertmanager_body("DeadLetterBacklog", labels={"queue": "jobs"})).status_code \
        == 200
    receiving.close()
    fake_slack.fail("chat.postMessage", status=500, times=4)  # Slack is down when a worker finally takes it
    working = _bot(make_runtime, fake_slack, alerts_config)
    try:
        fake_slack.wait(lambda s: any(c.ok and not c.body.get("thread_ts") for c in s.calls("chat.postMessage")),
                        timeout=40)
        assert len(threads(fake_slack)) == 1
    finally:
        working.close()


def test_label_matchers_pick_the_most_specific_runbook_and_labels_fill_its_parameters(bot):
    post_alert(bot.http, alertmanager_body("JobFailureSpike", labels={"queue": "step"}, key="a"))
    post_alert(bot.http, alertmanager_body("JobFailureSpike", labels={"queue": "step", "reason": "rate_limit"},
                                           key="b"))
    texts_now = lambda s: " ".join(c.body.get("text", "") for c in s.calls("chat.postMessage"))  # noqa: E731
    bot.slack.wait(lambda s: "Diagnosis, step 3" in texts_now(s) and 'step --error "rate limit"' in texts_now(s))
    roots = {json.dumps(c.body["attachments"]): c.answer["ts"] for c in bot.slack.calls("chat.postMessage")
             if not c.body.get("thread_ts")}
    assert len(roots) == 2
    plain_spike = next(ts for text, ts in roots.items() if "reason=rate_limit" not in text)
    rate_limited = next(ts for text, ts in roots.items() if "reason=rate_limit" in text)
    texts = {ts: [c.body["text"] for c in replies] for ts, replies in threads(bot.slack).items()}
    assert any("dlq peek step" in t for t in texts[plain_spike])  # dead-letter-backlog, rendered for `step`
    assert any("Provider rate limits" in t for t in texts[rate_limited])
    assert any("dlq peek step" in t and "rate limit" in t for t in texts[rate_limited])


def test_grafana_unified_and_legacy_webhooks_become_threads(bot):
    unified = alertmanager_body("DeadLetterBacklog", labels={"queue": "jobs"}, external="http://grafana.example/")
    unified.update(orgId=1, state="alerting", title="[FIRING:1] DeadLetterBacklog", message="fired")
    unified["alerts"][0].update(silenceURL="http://grafana.example/alerting/silence/new?matchers=x",
                                dashboardURL="", panelURL="", values={"B": 161})
    post_alert(bot.http, unified)
    basic = "Basic " + base64.b64encode(b"alertmanager:basic-pass-0123456789").decode()
    bot.http.post("/alerts", content=json.dumps(grafana_legacy_body("CronJobFailed")).encode(),
                  headers={"Authorization": basic})
    bot.slack.wait(lambda s: len(threads(s)) == 2)
    roots = [json.dumps(c.body["attachments"]) for c in bot.slack.calls("chat.postMessage")
             if not c.body.get("thread_ts")]
    assert any("Silence in Grafana" in r and "grafana.example/alerting/silence/new" in r for r in roots)
    assert any("CronJobFailed" in r and "scheduled-jobs" in r and "grafana.example/d/abc" in r for r in roots)
    post_alert(bot.http, grafana_legacy_body("CronJobFailed", state="ok"), token=None,
               headers={"Authorization": basic})
    bot.slack.wait(lambda s: any("Resolved: CronJobFailed" in c.body.get("text", "")
                                 for c in s.calls("chat.postMessage")))


def test_a_label_cannot_add_options_to_the_commands_it_fills(bot):
    post_alert(bot.http, alertmanager_body("DeadLetterBacklog", labels={"queue": "jobs --limit 100000"}))
    bot.slack.wait(lambda s: any("Diagnosis, step 2" in c.body.get("text", "") for c in s.calls("chat.postMessage")))
    texts = " ".join(c.body["text"] for c in bot.slack.calls("chat.postMessage"))
    assert "--limit 100000" not in texts.replace("queue=jobs --limit 100000", "")
    assert "Diagnosis, step 2 `dlq peek jobs`" in texts and "not one plain word" in texts


def test_a_guarded_step_button_runs_the_usual_guarded_flow_and_silence_needs_the_role(bot):
    bot.runtime.state.redis.lpush("jobs:dead", *[json.dumps({"id": f"j{n}", "type": "send_email", "attempts": 5,
                                                             "error": "SMTP timeout"}) for n in range(3)])
    post_alert(bot.http, alertmanager_body("DeadLetterBacklog", labels={"queue": "jobs"}))
    root = bot.slack.wait_for("chat.postMessage")[0]
    shown = Reply(http=None, key="root", body={"blocks": root.body["attachments"][0]["blocks"]})
    preview = bot.click(shown, "Run: dlq requeue jobs", user=ALICE, thread_ts=root.answer["ts"])
    assert "Preview" in preview.text and preview.button("Confirm")
    refused = bot.click(shown, "Silence 1h", user=MALLORY, thread_ts=root.answer["ts"])
    assert "does not have" in refused.text and "`oncall`" in refused.text
    pending = [bot.runtime.state.redis.get(key) for key in bot.runtime.state.redis.keys("opsbot:pending:*")]
    assert len(pending) == 1 and b"dlq requeue" in pending[0]  # the requeue's preview; no silence is pending


def test_redis_down_at_intake_answers_503_so_the_sender_retries(make_runtime, fake_slack, tmp_path, database_url,
                                                                 redis_client, alerts_env):
    with RedisServer() as own:
        path = write_config(tmp_path / "app.yaml", database_url, extra=ALERTS_CONFIG, redis_url=own.url)
        bot = _bot(make_runtime, fake_slack, path, with_worker=False)
        try:
            assert post_alert(bot.http, alertmanager_body("X")).status_code == 200
            own.kill()
            assert post_alert(bot.http, alertmanager_body("Y")).status_code == 503
        finally:
            bot.close()


def test_webhook_answers_are_counted_on_metrics(make_runtime, fake_slack, alerts_config):
    bot = _bot(make_runtime, fake_slack, alerts_config, with_worker=False)
    try:
        post_alert(bot.http, alertmanager_body("X"))
        post_alert(bot.http, alertmanager_body("X"), token="forged")
        metrics = bot.http.get("/metrics").text
        assert 'opsbot_webhooks_total{path="/alerts",status="200"} 1.0' in metrics
        assert 'opsbot_webhooks_total{path="/alerts",status="401"} 1.0' in metrics
    finally:
        bot.close()


def test_two_serve_processes_sent_the_same_group_at_once_post_one_thread(tmp_path, database_url, redis_client,
                                                                          fake_slack):
    """Real `opsbot serve` processes (an Alertmanager HA pair sends each notification to both)."""
    config = write_config(tmp_path / "app.yaml", database_url, extra=ALERTS_CONFIG, api_url=fake_slack.api_url)
    env = {**os.environ, "TEST_SLACK_BOT_TOKEN": BOT_TOKEN, "TEST_SLACK_SIGNING_SECRET": SIGNING_SECRET,
           "TEST_OPSBOT_ALERTS_TOKEN": ALERTS_TOKEN, "RUN_MIGRATIONS": "true"}
    ports = [free_port(), free_port()]
    procs = [subprocess.Popen([sys.executable, "-m", "bot", "--config", str(config), "serve", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "0"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for port in ports]
    try:
        for port in ports:
            wait_for_port(port, up=True)
        body = alertmanager_body("DeadLetterBacklog", labels={"queue": "jobs"})
        go = threading.Barrier(4)

        def send(port: int, payload: dict) -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                go.wait()
                assert post_alert(http, payload).status_code == 200

        repeat = json.loads(json.dumps(body))
        repeat["alerts"][0]["startsAt"] = "2026-11-23T20:01:00Z"
        senders = [threading.Thread(target=send, args=args) for args in
                   ((ports[0], body), (ports[1], body), (ports[0], repeat), (ports[1], repeat))]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join()
        fake_slack.wait(lambda s: "Diagnosis, step 2" in " ".join(c.body.get("text", "")
                                                                  for c in s.calls("chat.postMessage")), timeout=30)
        fake_slack.wait(lambda s: len(s.calls("chat.update")) >= 1, timeout=30)
        assert len(threads(fake_slack)) == 1
        record = json.loads(redis_client.get(next(iter(redis_client.scan_iter("opsbot:alerts:group:*")))))
        assert record["count"] == 2  # the identical copies were one notification, the repeat another
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
