"""Answer time of ``POST /alerts`` against a bare endpoint that reads the same body and answers 200.

    REDIS_URL=redis://127.0.0.1:6379/14 DATABASE_URL=postgresql://127.0.0.1:5432/postgres \\
        .venv/bin/python bench/alerts_intake.py [--requests 300] [--alerts 50]

Both endpoints are served by the same waitress server in this process (8 threads) on loopback.
The baseline reads the body and answers; the intake checks the bearer token (constant time),
the size, parses the JSON, checks its shape and pushes it onto the durable Redis work queue
(no worker runs: only the answer is measured, as Alertmanager waits for it). Prints p50/p99
per endpoint, in interleaved rounds, and the median p50/p99 ratios. The Redis database named by
$REDIS_URL is flushed: point it at one meant for it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOKEN = "bench-alerts-token-0123456789"


def _body(alerts: int) -> bytes:
    labels = {"alertname": "DeadLetterBacklog", "queue": "jobs", "severity": "warning"}
    return json.dumps({
        "version": "4", "groupKey": '{}:{alertname="DeadLetterBacklog"}', "status": "firing", "receiver": "opsbot",
        "groupLabels": {"alertname": "DeadLetterBacklog"}, "commonLabels": labels,
        "commonAnnotations": {"summary": "dead letters"}, "externalURL": "http://am:9093",
        "alerts": [{"status": "firing", "labels": {**labels, "instance": f"host-{n}"},
                    "annotations": {"summary": "dead letters"}, "startsAt": "2026-11-23T20:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prom:9090/graph",
                    "fingerprint": f"{n:016x}"} for n in range(alerts)]}).encode()


def _timings(client: httpx.Client, path: str, body: bytes, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        response = client.post(path, content=body, headers={"Authorization": f"Bearer {TOKEN}"})
        out.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--alerts", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from waitress.server import create_server

    from bot.config.settings import load_settings
    from bot.runtime.factory import Runtime
    from bot.runtime.hooks import WebhookIntake
    from bot.store.workqueue import WorkQueue

    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")
    redis.Redis.from_url(redis_url).flushdb()
    with tempfile.TemporaryDirectory(prefix="opsbot-bench-") as folder:
        config = Path(folder) / "app.yaml"
        config.write_text(f"""
state:
  redis_url: "{redis_url}"
  database_url: "{os.environ.get('DATABASE_URL', 'postgresql://127.0.0.1:5432/postgres')}"
  run_migrations: false
alerts:
  token: ${{BENCH_ALERTS_TOKEN}}
runbooks_dir: "{ROOT / 'runbooks'}"
""")
        runtime = Runtime.build(load_settings(config, env={**os.environ, "BENCH_ALERTS_TOKEN": TOKEN}))
        intake = WebhookIntake(runtime, WorkQueue(runtime.state.redis, runtime.settings.state.prefix))

        def app(environ, start_response):
            if intake.serves(environ):
                return intake(environ, start_response)
            environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))  # the baseline: read, answer
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "11")])
            return [b'{"ok":true}']

        server = create_server(app, host="127.0.0.1", port=0, threads=8)
        threading.Thread(target=server.run, daemon=True).start()
        body = _body(args.alerts)
        p50s, p99s = [], []
        with httpx.Client(base_url=f"http://127.0.0.1:{server.effective_port}", timeout=10) as client:
            _timings(client, "/alerts", body, 20), _timings(client, "/bare", body, 20)  # warm-up
            for round_ in range(1, args.rounds + 1):
                bare = _timings(client, "/bare", body, args.requests)
                ours = _timings(client, "/alerts", body, args.requests)
                p50s.append(_pct(ours, 0.5) / _pct(bare, 0.5))
                p99s.append(_pct(ours, 0.99) / _pct(bare, 0.99))
                print(f"round {round_}: body {len(body) / 1024:.0f} KiB ({args.alerts} alerts); "
                      f"bare p50 {_pct(bare, .5):.2f} ms p99 {_pct(bare, .99):.2f} ms; "
                      f"/alerts p50 {_pct(ours, .5):.2f} ms p99 {_pct(ours, .99):.2f} ms")
        queued = runtime.state.redis.llen(f"{runtime.settings.state.prefix}work:queue")
        print(f"median ratio /alerts vs bare: p50 {statistics.median(p50s):.2f}x, p99 {statistics.median(p99s):.2f}x;"
              f" {queued} bodies queued")
        server.close()
        runtime.state.redis.flushdb()
        runtime.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
