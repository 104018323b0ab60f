"""health and status against real HTTP services on loopback (slow, failing, flapping) and the real stores."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bot.core.invocation import Actor, Where
from bot.render.text import to_text
from tests.conftest import ALICE, write_config
from tests.support import email as email_data
from tests.support.dlq import dead_letter, kill
from tests.support.http import PROMETHEUS_TEXT, send_json, send_text

OPS = Where("C-ops", channel_name="ops")

METRICS = """# HELP queue_depth Jobs waiting
# TYPE queue_depth gauge
queue_depth{queue="jobs"} 1500
queue_depth{queue="step"} 20
# TYPE job_retries_total counter
job_retries_total 42
# TYPE http_requests_total counter
http_requests_total{code="200"} 900
http_requests_total{code="500"} 100
# TYPE http_requests_errors_total counter
http_requests_errors_total 100
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.1"} 500
http_request_duration_seconds_bucket{le="0.5"} 950
http_request_duration_seconds_bucket{le="1.0"} 1000
http_request_duration_seconds_bucket{le="+Inf"} 1000
http_request_duration_seconds_sum 200
http_request_duration_seconds_count 1000
"""


class Services:
    """One loopback server playing several services: healthy, not ready, hanging, flapping."""

    def __init__(self):
        self.flaps = 0
        services = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/api/health":
                    send_json(self, 200, {"ok": True})
                elif self.path == "/api/ready":
                    send_json(self, 503, {"ok": False, "db": "down", "dsn": "postgresql://app:hunter2@db/app"})
                elif self.path == "/slow/health":
                    time.sleep(3)
                    send_json(self, 200, {"ok": True})
                elif self.path == "/flappy/health":
                    services.flaps += 1
                    send_json(self, 200 if services.flaps % 2 else 500, {"ok": services.flaps % 2 == 1})
                elif self.path == "/worker/health":
                    send_json(self, 200, {"ok": True})
                elif self.path == "/worker/metrics":
                    send_text(self, 200, METRICS, PROMETHEUS_TEXT)
                else:
                    send_json(self, 404, {"error": "no"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def services():
    svc = Services()
    yield svc
    svc.server.shutdown()


def runtime_with(tmp_path, database_url, make_runtime, base, only=("api", "slow", "flappy", "worker")):
    blocks = {
        "api": f"  api: {{liveness: {base}/api/health, readiness: {base}/api/ready, expect: {{ok: true}}}}",
        "slow": f"  slow: {{liveness: {base}/slow/health, timeout: 1s}}",
        "flappy": f"  flappy: {{liveness: {base}/flappy/health}}",
        "worker": f"  worker: {{liveness: {base}/worker/health, metrics: {base}/worker/metrics}}",
    }
    extra = "services:\n" + "\n".join(blocks[name] for name in only) + "\n"
    return make_runtime(write_config(tmp_path / "app.yaml", database_url, extra=extra))


def run(runtime, text):
    return runtime.engine.handle(text, Actor(ALICE), OPS).result


def test_one_hanging_service_does_not_delay_the_others(tmp_path, database_url, make_runtime, services):
    runtime = runtime_with(tmp_path, database_url, make_runtime, services.base)
    started = time.monotonic()
    result = run(runtime, "health")
    elapsed = time.monotonic() - started

    checks = {(c["service"], c["kind"]): c for c in result.data["checks"]}
    assert elapsed < 2.5  # bounded by the slow service's 1 s timeout, not the sum
    assert checks[("slow", "liveness")]["detail"] == "no answer within 1s"
    assert checks[("api", "liveness")]["ok"] and checks[("api", "liveness")]["ms"] < 500
    assert checks[("worker", "liveness")]["ok"]
    assert result.status == "fail"


def test_a_failing_readiness_shows_the_redacted_body(tmp_path, database_url, make_runtime, services):
    runtime = runtime_with(tmp_path, database_url, make_runtime, services.base, only=("api",))
    result = run(runtime, "health api")
    ready = [c for c in result.data["checks"] if c["kind"] == "readiness"][0]
    assert not ready["ok"] and ready["status"] == 503 and '"db": "down"' in ready["body"]  # twice: retried once
    text = to_text(result)
    assert "hunter2" not in text and '"db": "down"' in text
    assert result.summary == "1 of 2 checks failing: api readiness"


def test_a_5xx_is_retried_once_and_a_flapping_service_shows_it(tmp_path, database_url, make_runtime, services):
    runtime = runtime_with(tmp_path, database_url, make_runtime, services.base, only=("flappy",))
    assert run(runtime, "health").status == "ok"  # answered 200 at once
    second = run(runtime, "health")  # 500, then 200 on the retry
    check = second.data["checks"][0]
    assert check["ok"] and check["retried"] == "HTTP 500" and check["detail"] == "ok on a retry (first: HTTP 500)"
    assert second.status == "warn" and "passed only on a retry: flappy liveness" in second.summary
    assert services.flaps == 3


def test_metrics_are_read_with_a_prometheus_parser(tmp_path, database_url, make_runtime, services):
    runtime = runtime_with(tmp_path, database_url, make_runtime, services.base, only=("worker",))
    values = run(runtime, "health worker").data["metrics"]["worker"]["values"]
    assert values["queue_depth"] == 1520 and values["retries"] == 42
    assert values["requests"] == 1000 and values["errors"] == 100
    assert values["latency_p95_seconds"] == 0.5  # 950 of 1000 at or under 0.5 s


def test_unknown_service_is_refused(tmp_path, database_url, make_runtime, services):
    runtime = runtime_with(tmp_path, database_url, make_runtime, services.base, only=("api",))
    result = run(runtime, "health nope")
    assert result.status == "error" and "unknown service 'nope'; configured: api" in result.summary


def test_status_colours_every_line_with_its_threshold(tmp_path, database_url, make_runtime, services, redis_client):
    email_data.create(database_url, sent=10, failed=5, stuck=7, fresh_pending=2)
    kill(redis_client, [dead_letter(i) for i in range(3)])
    runtime = runtime_with(tmp_path, database_url, make_runtime, services.base, only=("api", "worker"))

    result = run(runtime, "status")

    lines = {line["what"]: line for line in result.data["lines"]}
    assert lines["service api"]["color"] == "red" and "HTTP 503" in lines["service api"]["detail"]
    assert lines["service worker"]["color"] == "green"
    assert lines["error rate worker"]["color"] == "red" and lines["error rate worker"]["detail"].startswith("10.0%")
    assert lines["worker queue worker"]["color"] == "amber"
    assert lines["dead letters jobs"]["color"] == "red" and lines["dead letters jobs"]["dead"] == 3
    assert lines["queue jobs"]["color"] == "green"
    assert lines["stuck email"]["color"] == "red" and lines["stuck email"]["stuck"] == 7
    assert lines["audit verification"]["color"] == "amber" and "never run" in lines["audit verification"]["detail"]
    assert lines["migration drift"]["color"] == "unknown"  # no migrations configured
    assert result.status == "fail" and result.summary.startswith("4 red:")
