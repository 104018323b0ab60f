"""Alert webhooks as Alertmanager and Grafana send them, and a config that takes them.

Usage::

    body = alertmanager_body("DeadLetterBacklog", labels={"queue": "jobs"}, status="firing")
    response = post_alert(http, body, token=ALERTS_TOKEN)
"""

from __future__ import annotations

import json

import httpx

__all__ = ["ALERTS_TOKEN", "ALERTS_CONFIG", "alertmanager_body", "grafana_legacy_body", "post_alert", "threads"]

ALERTS_TOKEN = "test-alerts-token-0123456789"

ALERTS_CONFIG = """
alerts:
  token: ${TEST_OPSBOT_ALERTS_TOKEN:-}
  username: alertmanager
  password: ${TEST_OPSBOT_ALERTS_PASSWORD:-}
  declare: {critical: sev2}
  alertmanager_url: ${TEST_ALERTMANAGER_URL:-http://127.0.0.1:9}
"""


def alertmanager_body(name: str, *, labels: dict | None = None, status: str = "firing", key: str | None = None,
                      count: int = 1, annotations: dict | None = None, external: str = "http://am.example:9093",
                      generator: str = "http://prometheus.example:9090/graph?g0.expr=up") -> dict:
    common = {"alertname": name, **(labels or {})}
    notes = annotations if annotations is not None else {"summary": f"{name} is happening"}
    alerts = [{"status": status, "labels": {**common, **({"instance": f"host-{n}"} if count > 1 else {})},
               "annotations": notes, "startsAt": "2026-11-23T20:00:00Z",
               "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-23T20:05:00Z",
               "generatorURL": generator, "fingerprint": f"{n:016x}"} for n in range(count)]
    return {"version": "4", "groupKey": key or f'{{}}:{{alertname="{name}"}}', "truncatedAlerts": 0,
            "status": status, "receiver": "opsbot", "groupLabels": {"alertname": name}, "commonLabels": common,
            "commonAnnotations": notes, "externalURL": external, "alerts": alerts}


def grafana_legacy_body(name: str, state: str = "alerting") -> dict:
    return {"dashboardId": 1, "evalMatches": [{"value": 100, "metric": "High value", "tags": None}],
            "message": "Someone is testing the alert notification within Grafana.", "orgId": 0, "panelId": 1,
            "ruleId": 7, "ruleName": name, "ruleUrl": "http://grafana.example/d/abc?panelId=1", "state": state,
            "tags": {"queue": "jobs"}, "title": f"[Alerting] {name}"}


def post_alert(http: httpx.Client, body: dict | bytes, *, token: str | None = ALERTS_TOKEN,
               headers: dict | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    auth = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return http.post("/alerts", content=content, headers={"Content-Type": "application/json", **auth,
                                                           **(headers or {})})


def threads(slack, channel_ts: str | None = None) -> dict[str, list]:
    """Root posts (no thread_ts) of the fake Slack, each with the posts in its thread."""
    posts = [c for c in slack.calls("chat.postMessage") if c.ok]
    roots = {c.answer["ts"]: [] for c in posts if not c.body.get("thread_ts")}
    for call in posts:
        if call.body.get("thread_ts") in roots:
            roots[call.body["thread_ts"]].append(call)
    return roots
