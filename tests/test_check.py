"""``opsbot check``: every configured target reported ok, or failing with the reason."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bot.runtime.checks import run_checks
from tests.conftest import BOT_TOKEN, REDIS_URL, write_config
from tests.support.audit import AuditChain
from tests.support.http import send_json


@pytest.fixture
def service():
    """A service whose /health answers {"ok": true} and whose /ready answers 503."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            status, body = (200, {"ok": True}) if self.path == "/health" else (503, {"ok": False})
            send_json(self, status, body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def checks_by_target(result):
    return {c["target"]: c for c in result.data["checks"]}


def test_everything_reachable_is_ok(slack_env, runtime, redis_client, database_url):
    AuditChain(database_url).create().append("tenant-a", 3)  # the audit table the default scheme is checked on
    result = run_checks(runtime)
    found = checks_by_target(result)
    assert result.status == "ok", result.data
    assert found["state redis"]["ok"] and found["state postgres"]["ok"] and found["database main"]["ok"]
    assert "schema 'opsbot' up to date" in found["state postgres"]["detail"]
    assert found["queue jobs"]["detail"].startswith("ok, ready 'jobs': 0, dead 'jobs:dead': 0")
    assert "runbooks render" in found["runbooks"]["detail"]
    assert found["slack"]["detail"].startswith("ok, bot opsbot in team Test Team")
    assert found["audit scheme"]["detail"].startswith("ok, the first 3 rows of AuditLog verify")
    assert found["postmortem template"]["detail"].startswith("ok, postmortem.md.j2 parses")


def test_a_database_without_an_audit_table_is_a_warning(slack_env, runtime, redis_client, database_url):
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute('DROP TABLE IF EXISTS "AuditLog"')
    result = run_checks(runtime)
    assert result.status == "warn"
    assert "audit table 'AuditLog' does not exist" in checks_by_target(result)["audit scheme"]["detail"]


def test_failures_are_named_with_their_reason(tmp_path, database_url, make_runtime, redis_client, service):
    extra = f"""
services:
  api:
    liveness: {service}/health
    readiness: {service}/ready
    expect: {{ok: true}}
redis:
  main: {{url: "{REDIS_URL}"}}
  broken: {{url: "redis://127.0.0.1:1/0"}}
"""
    path = write_config(tmp_path / "app.yaml", database_url, extra="")
    text = path.read_text().replace(f'redis:\n  main: {{url: "{REDIS_URL}"}}\n', "")
    path.write_text(text + extra)
    redis_client.set("jobs:dead", "not a list")
    runtime = make_runtime(path)

    result = run_checks(runtime)
    found = checks_by_target(result)

    assert result.status == "fail"
    assert found["service api liveness"]["ok"]
    assert not found["service api readiness"]["ok"] and "HTTP 503" in found["service api readiness"]["detail"]
    assert not found["redis broken"]["ok"] and "Connection refused" in found["redis broken"]["detail"]
    assert not found["queue jobs"]["ok"]
    assert "dead key 'jobs:dead' is a Redis string, expected a list" in found["queue jobs"]["detail"]
    assert "service api readiness" in result.summary


def test_readyz_is_503_naming_the_dependency_that_is_down(tmp_path, database_url, make_runtime, fake_slack):
    from slack_sdk import WebClient

    from bot.runtime.http import readiness

    path = write_config(tmp_path / "app.yaml", database_url, redis_url="redis://127.0.0.1:1/0")
    runtime = make_runtime(path, slack=WebClient(token=BOT_TOKEN, base_url=fake_slack.api_url), migrate=False)
    checks = readiness(runtime)
    assert checks["postgres"] == "ok"
    assert checks["redis"].startswith("error:") and "Connection refused" in checks["redis"]


def test_levels_and_hosts_are_named_and_advice_is_not_redacted(tmp_path, database_url, make_runtime, redis_client):
    import json
    import subprocess
    import sys

    from tests.support.servers import free_port

    dead = free_port()
    path = write_config(tmp_path / "app.yaml", database_url)
    path.write_text(path.read_text().replace(f'  main: {{url: "{database_url}"}}',
                                             f'  main: {{url: "postgresql://127.0.0.1:{dead}/app"}}')
                    + 'permissions: {"dlq trim": anyone}\n')
    proc = subprocess.run([sys.executable, "-m", "bot", "--config", str(path), "check", "--json"],
                          capture_output=True, text=True, timeout=60)
    found = {c["target"]: c for c in json.loads(proc.stdout)["data"]["checks"]}
    assert proc.returncode == 1
    assert found["database main"]["level"] == "fail" and found["database main"]["ok"] is False
    assert f"127.0.0.1:{dead}/app is unreachable" in found["database main"]["detail"]
    assert found["slack"]["level"] == "warn" and found["slack"]["ok"] is False
    assert found["permissions"]["level"] == "warn" and "dlq trim" in found["permissions"]["detail"]
    assert found["state redis"]["level"] == "ok" and found["state redis"]["ok"] is True

    text = subprocess.run([sys.executable, "-m", "bot", "--config", str(path), "check"],
                          capture_output=True, text=True, timeout=60).stdout
    assert "SLACK_BOT_TOKEN is not set, so Slack is off (the CLI works)" in text
    assert "[redacted]" not in text
