"""Prometheus → Alertmanager → `opsbot serve` → the fake Slack, with the real Prometheus and Alertmanager.

Prometheus evaluates a rule every second; Alertmanager (group_wait 1s) delivers its webhook,
with a bearer token, to opsbot's POST /alerts; the test reads the thread from the fake Slack,
presses the Silence button and its Confirm as a signed Slack user would, and asks
Alertmanager's API for the silence.

The resolve is checked before the silence: Alertmanager sends nothing, not even the resolve,
for a silenced alert.

The loop is closed: the rule is deploy/prometheus-alerts.yml's own (without its ``for: 5m``) on the
dead-letter gauge that Prometheus scrapes from opsbot's /metrics. It fires once `dlq status` has seen
dead letters in ``jobs:dead``, and resolves once they are gone and `dlq status` has seen that too.
"""

from __future__ import annotations

import json

from slack_sdk import WebClient

from bot.core.invocation import Actor, Where
from tests.conftest import ALICE, BOT_TOKEN, SIGNING_SECRET, write_config
from tests.support.alerts import ALERTS_CONFIG, ALERTS_TOKEN, threads
from tests.support.harness import Reply, SlackBot
from tests.support.monitoring import Alertmanager, Prometheus

RULES = """
groups:
  - name: e2e
    rules:
      - alert: DeadLetterBacklog
        expr: max by (queue) (opsbot_dead_letters) > 0
        labels: {severity: warning}
        annotations:
          summary: "{{ $value }} dead letters in {{ $labels.queue }}"
"""


def test_a_prometheus_alert_becomes_one_thread_resolves_in_it_and_its_silence_is_real(
        make_runtime, fake_slack, tmp_path, database_url, redis_client, slack_env, monkeypatch):
    monkeypatch.setenv("TEST_OPSBOT_ALERTS_TOKEN", ALERTS_TOKEN)
    monkeypatch.setenv("TEST_OPSBOT_ALERTS_PASSWORD", "basic-pass-0123456789")
    am = Alertmanager(token=ALERTS_TOKEN)
    monkeypatch.setenv("TEST_ALERTMANAGER_URL", am.url)
    path = write_config(tmp_path / "app.yaml", database_url, extra=ALERTS_CONFIG)
    runtime = make_runtime(path, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))
    bot = SlackBot(runtime, fake_slack, SIGNING_SECRET)
    am.webhook = f"{bot.http.base_url}/alerts"
    redis_client.rpush("jobs:dead", *[json.dumps({"id": n, "type": "send_email", "error": "timeout"}) for n in range(7)])
    assert runtime.engine.handle("dlq status", Actor(ALICE), Where("C-ops")).result.data["queues"][0]["dead"] == 7
    try:
        with am, Prometheus(RULES, am.address, {"opsbot": f"127.0.0.1:{bot.server.port}"}) as prom:
            # fires: one thread, with the runbook's Run buttons and its diagnosis
            fake_slack.wait(lambda s: sum(1 for c in s.calls("chat.postMessage")
                                          if "Diagnosis, step 2" in c.body.get("text", "")), timeout=60)
            roots = threads(fake_slack)
            assert len(roots) == 1
            root_ts = next(iter(roots))
            root = next(c for c in fake_slack.calls("chat.postMessage") if c.answer.get("ts") == root_ts)
            blocks = root.body["attachments"][0]["blocks"]
            shown = json.dumps(blocks)
            assert "FIRING DeadLetterBacklog" in shown and "7 dead letters in jobs" in shown
            assert f"{prom.url}/graph" in shown and f"{am.url}/#/silences/new" in shown
            values = [e["value"] for b in blocks if b["type"] == "actions" for e in b["elements"]]
            assert {"dlq status", "dlq peek jobs", "dlq requeue jobs", "dlq trim jobs"} <= set(values)
            replies = [c.body["text"] for c in roots[root_ts]]
            assert any("Diagnosis, step 1" in t and "dlq status" in t for t in replies)

            # resolves: the dead letters are gone, `dlq status` sees it, the gauge drops, the rule stops firing,
            # and the resolve lands in the same thread
            redis_client.delete("jobs:dead")
            runtime.engine.handle("dlq status", Actor(ALICE), Where("C-ops"))
            fake_slack.wait(lambda s: any("Resolved: DeadLetterBacklog" in c.body.get("text", "")
                                          for c in s.calls("chat.postMessage")), timeout=90)
            resolved = next(c for c in fake_slack.calls("chat.postMessage")
                            if "Resolved: DeadLetterBacklog" in c.body.get("text", ""))
            assert resolved.body["thread_ts"] == root_ts
            assert len(threads(fake_slack)) == 1
            assert "RESOLVED DeadLetterBacklog" in fake_slack.calls("chat.update")[-1].body["text"]

            # the Silence button (pressed on the root as it was while firing): guarded, previewed, confirmed by an on-call user; a real silence in Alertmanager
            preview = bot.click(Reply(http=None, key="root", body={"blocks": blocks}), "Silence 1h", user=ALICE,
                                thread_ts=root_ts)
            assert "Preview" in preview.text and "silence DeadLetterBacklog for 1h" in preview.text
            done = bot.click(preview, "Confirm", user=ALICE)
            assert "Silenced DeadLetterBacklog until" in done.text
            silences = [s for s in am.silences() if s["status"]["state"] == "active"]
            assert len(silences) == 1
            matchers = {m["name"]: m["value"] for m in silences[0]["matchers"]}
            assert matchers == {"alertname": "DeadLetterBacklog", "queue": "jobs", "severity": "warning"}  # its labels
            assert silences[0]["id"] in done.text
            kinds = [e.action for e in runtime.state.action_log.entries()]
            assert "confirmed" in kinds or "confirm" in kinds

    finally:
        bot.close()
