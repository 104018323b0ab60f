"""Prometheus → Alertmanager → `opsbot serve` → the fake Slack, with the real Prometheus and Alertmanager.

Prometheus evaluates a rule every second; Alertmanager (group_wait 1s) delivers its webhook,
with a bearer token, to opsbot's POST /alerts; the test reads the thread from the fake Slack,
presses the Silence button and its Confirm as a signed Slack user would, and asks
Alertmanager's API for the silence.

The resolve is checked before the silence: Alertmanager sends nothing, not even the resolve,
for a silenced alert.

The rule fires while a scrape target is down (``up{job="dead-letters"} == 0``) and resolves
when the test brings it up: it needs nothing but Prometheus itself. Once the dead-letter gauge
is on opsbot's /metrics, the rule becomes the one in deploy/prometheus-alerts.yml.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from slack_sdk import WebClient

from tests.conftest import ALICE, BOT_TOKEN, SIGNING_SECRET, write_config
from tests.support.alerts import ALERTS_CONFIG, ALERTS_TOKEN, threads
from tests.support.harness import Reply, SlackBot
from tests.support.monitoring import Alertmanager, Prometheus
from tests.support.servers import free_port

RULES = """
groups:
  - name: e2e
    rules:
      - alert: DeadLetterBacklog
        expr: up{job="dead-letters"} == 0
        labels: {queue: jobs, severity: warning}
        annotations:
          summary: "dead letters are piling up (target {{ $labels.instance }} is down)"
"""


class _Target:
    """A scrape target that answers once started: what makes the rule resolve."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = b"# HELP dead_letters_seen a scrape that answers\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def target():
    found = _Target()
    yield found
    found.stop()


def test_a_prometheus_alert_becomes_one_thread_resolves_in_it_and_its_silence_is_real(
        make_runtime, fake_slack, tmp_path, database_url, redis_client, slack_env, monkeypatch, target):
    monkeypatch.setenv("TEST_OPSBOT_ALERTS_TOKEN", ALERTS_TOKEN)
    monkeypatch.setenv("TEST_OPSBOT_ALERTS_PASSWORD", "basic-pass-0123456789")
    am = Alertmanager(token=ALERTS_TOKEN)
    monkeypatch.setenv("TEST_ALERTMANAGER_URL", am.url)
    path = write_config(tmp_path / "app.yaml", database_url, extra=ALERTS_CONFIG)
    runtime = make_runtime(path, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url))
    bot = SlackBot(runtime, fake_slack, SIGNING_SECRET)
    am.webhook = f"{bot.http.base_url}/alerts"
    try:
        with am, Prometheus(RULES, am.address, {"dead-letters": f"127.0.0.1:{target.port}",
                                                "opsbot": f"127.0.0.1:{bot.server.port}"}) as prom:
            # fires: one thread, with the runbook's Run buttons and its diagnosis
            fake_slack.wait(lambda s: sum(1 for c in s.calls("chat.postMessage")
                                          if "Diagnosis, step 2" in c.body.get("text", "")), timeout=60)
            roots = threads(fake_slack)
            assert len(roots) == 1
            root_ts = next(iter(roots))
            root = next(c for c in fake_slack.calls("chat.postMessage") if c.answer.get("ts") == root_ts)
            blocks = root.body["attachments"][0]["blocks"]
            shown = json.dumps(blocks)
            assert "FIRING DeadLetterBacklog" in shown and "dead letters are piling up (target 127.0.0.1:" in shown
            assert f"{prom.url}/graph" in shown and f"{am.url}/#/silences/new" in shown
            values = [e["value"] for b in blocks if b["type"] == "actions" for e in b["elements"]]
            assert {"dlq status", "dlq peek jobs", "dlq requeue jobs", "dlq trim jobs"} <= set(values)
            replies = [c.body["text"] for c in roots[root_ts]]
            assert any("Diagnosis, step 1" in t and "dlq status" in t for t in replies)

            # resolves: the scrape target answers, the rule stops firing, the resolve lands in the same thread
            target.start()
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
            assert matchers == {"alertname": "DeadLetterBacklog", "queue": "jobs", "severity": "warning",
                                "job": "dead-letters", "instance": f"127.0.0.1:{target.port}"}  # the group's labels
            assert silences[0]["id"] in done.text
            kinds = [e.action for e in runtime.state.action_log.entries()]
            assert "confirmed" in kinds or "confirm" in kinds

    finally:
        bot.close()
