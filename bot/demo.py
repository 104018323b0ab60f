"""``opsbot demo``: opsbot working within a minute, with nothing but Python.

Usage::

    opsbot demo            # in a terminal: a console where you type /ops commands as in Slack
    opsbot demo | cat      # without a terminal: a scripted tour that checks every step

It starts a real Redis and a real PostgreSQL from Python packages (:mod:`bot.sandbox`)
and seeds a broken world drawn from the seeds: a dead-letter backlog with several kinds
of failure (including entries that are not JSON), email stuck behind an SMTP provider
that refuses connections, a case whose reminder was blocked by its cap, and two services
of which one is not ready. The world grows with every command group. Everything runs through the same engine as Slack and the
CLI; the processes and files are removed on exit, Ctrl-C included.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import redis

from bot.config import load_settings
from bot.engine import Outcome
from bot.invocation import Actor, Where
from bot.render.text import to_text
from bot.runtime import Runtime
from bot.sandbox import Sandbox, SandboxUnavailable

__all__ = ["main", "seed_world", "TOUR"]

ROOT = Path(__file__).resolve().parent.parent
ONCALL = "U0DEMOONCALL"
WHERE = Where("C0DEMO", channel_name="ops-demo")

FAILURES = [
    ("send_email", "SMTP timeout after 30s talking to smtp.mailgun.org:587"),
    ("send_email", "535 5.7.8 Authentication credentials invalid"),
    ("render_pdf", "429 rate limit exceeded (OpenAI), retry after 20s"),
    ("sync_crm", "KeyError: 'tenantId'"),
]


class DemoServices:
    """The demo's own services on loopback: an API that is healthy and a worker that is not ready."""

    METRICS = ("# TYPE queue_depth gauge\nqueue_depth 1380\n"
               "# TYPE http_requests_total counter\nhttp_requests_total 2000\n"
               "# TYPE http_requests_errors_total counter\nhttp_requests_errors_total 160\n")

    def __init__(self) -> None:
        demo = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                status, body, kind = demo.answer(self.path)
                payload = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, path: str) -> tuple[int, str, str]:
        if path == "/worker/readyz":
            return 503, json.dumps({"ok": False, "redis": "reconnecting", "heartbeat_age_s": 412}), "application/json"
        if path == "/worker/metrics":
            return 200, self.METRICS, "text/plain; version=0.0.4"
        if path in ("/api/health", "/api/readyz", "/worker/health"):
            return 200, json.dumps({"ok": True}), "application/json"
        return 404, "{}", "application/json"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "DemoServices":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on: the demo's SMTP provider is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def demo_config(sandbox: Sandbox, folder: Path, services: DemoServices) -> Path:
    path = folder / "app.yaml"
    path.write_text(f"""
slack:
  incident_channel: "#incidents"
state:
  redis_url: "{sandbox.redis_url}"
  database_url: "{sandbox.database_url}"
  run_migrations: true
roles:
  oncall: {{users: [{ONCALL}]}}
redis:
  main: {{url: "{sandbox.redis_url}"}}
databases:
  main: {{url: "{sandbox.database_url}"}}
queues:
  - {{name: jobs, redis: main, ready: jobs, dead: "jobs:dead", keep: 100}}
  - {{name: step, redis: main, ready: step.ready, dead: step.dead, keep: 10}}
services:
  api: {{liveness: "{services.base}/api/health", readiness: "{services.base}/api/readyz", expect: {{ok: true}}}}
  worker: {{liveness: "{services.base}/worker/health", readiness: "{services.base}/worker/readyz",
           metrics: "{services.base}/worker/metrics"}}
email:
  database: main
  environment: production
  dry_run: {{env: OPSBOT_DEMO_DRY_RUN_EMAILS}}
  smtp: {{host: 127.0.0.1, port: {closed_port()}, timeout: 2s}}
  daily_cap: 500
  auto_reminders_cap: 20
  reminder_recipient: deadlines@example.com
runbooks_dir: "{ROOT / 'runbooks'}"
""")
    return path


WORLD_SQL = """
CREATE TABLE "Communication" (
    id text PRIMARY KEY, "tenantId" text NOT NULL, status text NOT NULL,
    "createdAt" timestamptz NOT NULL, "updatedAt" timestamptz NOT NULL, attempts int NOT NULL, "lastError" text);
CREATE TABLE "CaseEvent" (
    id bigserial PRIMARY KEY, "caseId" text NOT NULL, "tenantId" text NOT NULL, type text NOT NULL,
    "createdAt" timestamptz NOT NULL, data jsonb);
INSERT INTO "Communication"
SELECT 'comm-' || n, 'tenant-' || (n % 3),
       CASE WHEN n <= 900 THEN 'sent' WHEN n <= 1000 THEN 'failed' WHEN n <= 1030 THEN 'pending' ELSE 'pending_auto' END,
       now() - make_interval(mins => CASE WHEN n > 1000 THEN 20 + n % 90 ELSE n % 600 END),
       now() - make_interval(mins => CASE WHEN n > 1000 THEN 20 + n % 90 ELSE n % 600 END), 3,
       CASE WHEN n BETWEEN 901 AND 1000 THEN
            'Connection timed out after 30000ms to smtp.mailgun.org (attempt ' || (n % 5) || ')' END
FROM generate_series(1, 1045) AS n;
INSERT INTO "CaseEvent" ("caseId", "tenantId", type, "createdAt", data)
SELECT 'case-' || n, 'tenant-1', 'DEADLINE_REMINDER_SCHEDULED', now() - make_interval(mins => n), '{}'::jsonb
FROM generate_series(1, 20) AS n;
INSERT INTO "CaseEvent" ("caseId", "tenantId", type, "createdAt", data) VALUES
    ('case-42', 'tenant-1', 'CASE_OPENED', now() - interval '3 days', '{}'),
    ('case-42', 'tenant-1', 'REMINDER_BLOCKED_CAP', now() - interval '5 minutes', '{"cap": 20}');
"""


def seed_database(database_url: str) -> None:
    """The sending service's tables: mail stuck behind a failing provider, a reminder blocked by its cap."""
    with psycopg.connect(database_url) as conn:
        conn.execute(WORLD_SQL)


def seed_world(client: redis.Redis, now: float | None = None) -> dict[str, int]:
    """A dead-letter backlog as the seeds describe it (`jobs` / `jobs:dead`, `step.ready` / `step.dead`)."""
    now = now or time.time()
    entries = []
    for index in range(160):
        kind, error = FAILURES[index % len(FAILURES)]
        failed = now - 6 * 3600 + index * 120
        entries.append(json.dumps({
            "id": f"job-{1000 + index}", "type": kind, "attempts": 5, "error": error,
            "failedAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(failed)),
            "payload": {"tenantId": f"tenant-{index % 3}", "to": f"client{index}@example.com",
                        "apiKey": "sk-demo-should-never-show"},
        }))
    client.lpush("jobs:dead", *entries, b"\x8b\x00\xffgzip-bytes-from-an-old-producer")
    client.lpush("jobs", *[json.dumps({"id": f"job-{n}", "type": "send_email"}) for n in range(3)])
    client.lpush("step.dead", *[json.dumps({"id": f"step-{n}", "type": "step.run", "error": "step timeout",
                                            "failedAt": now - 600 + n}) for n in range(25)])
    return {"jobs:dead": 161, "step.dead": 25, "rate_limited": 40}


# -- the scripted tour ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    text: str
    expect: Callable[[Outcome], bool]
    what: str


TOUR = [
    Step("help", lambda o: o.result.status == "ok" and "dlq requeue" in str(o.result.data), "every command"),
    Step("runbook", lambda o: len(o.result.data["runbooks"]) >= 17, "the runbooks"),
    Step("runbook dead-letter-backlog queue=jobs", lambda o: o.result.data["steps"][1]["run"] == "dlq peek jobs",
         "a runbook with Run buttons"),
    Step("dlq status", lambda o: o.result.status == "warn" and o.result.data["queues"][0]["dead"] == 161,
         "the dead-letter backlog"),
    Step('dlq peek --error "rate limit" --limit 2',
         lambda o: o.result.data["matching"] == 40 and len(o.result.data["entries"]) == 2, "what failed, grouped"),
    Step('dlq requeue --error "rate limit"', lambda o: o.result.status == "ok" and o.result.data["moved"] == 40,
         "a guarded requeue, previewed and confirmed"),
    Step("dlq status jobs", lambda o: o.result.data["queues"][0]["dead"] == 121
         and o.result.data["queues"][0]["ready"] == 43, "after the requeue"),
    Step("dlq trim step --keep 10", lambda o: o.result.status == "ok" and o.result.data["dropped"] == 15,
         "a guarded trim, archived to PostgreSQL first"),
    Step("health", lambda o: [c["ok"] for c in o.result.data["checks"]] == [True, True, True, False],
         "every service at once; the worker is not ready"),
    Step("status", lambda o: o.result.status == "fail" and {"service worker", "error rate worker", "stuck email",
         "dead letters jobs"} <= {line["what"] for line in o.result.data["lines"] if line["color"] == "red"},
         "one glance, with thresholds"),
    Step("email triage", lambda o: "fails at connect" in o.result.data["verdict"]
         and sum(s["count"] for s in o.result.data["stuck"]) == 45, "why mail is not going out"),
    Step("reminders case-42", lambda o: "TENANT_DAILY_AUTO_REMINDERS_CAP (20/20" in o.result.summary,
         "why a reminder was not scheduled"),
    Step('email retry --error "timed out"', lambda o: o.result.data["changed"] == 100,
         "a guarded retry of failed mail"),
]


def run_tour(runtime: Runtime, out=sys.stdout) -> bool:
    actor = Actor(ONCALL, team="TDEMO")
    passed = 0
    for number, step in enumerate(TOUR, 1):
        print(f"\n── {number}/{len(TOUR)} /ops {step.text}   ({step.what})", file=out)
        outcome = runtime.engine.handle(step.text, actor, WHERE)
        if outcome.kind == "preview":
            print(to_text(outcome.result, runtime.redactor), file=out)
            print("   → Confirm (as the on-call who asked)", file=out)
            outcome = runtime.engine.confirm(outcome.pending.id, actor, WHERE)
        print(to_text(outcome.result, runtime.redactor), file=out)
        try:
            ok = step.expect(outcome)
        except (KeyError, IndexError, TypeError):
            ok = False
        print(f"   {'✔ as expected' if ok else '✘ NOT as expected'}", file=out)
        passed += ok
    chain = runtime.state.action_log.verify()
    print(f"\nAction log: {chain.rows} entries, hash chain {'intact' if chain.ok else 'BROKEN'}", file=out)
    print(f"Tour: {passed}/{len(TOUR)} steps as expected", file=out)
    return passed == len(TOUR) and chain.ok


# -- the console ----------------------------------------------------------------------------------

def console(runtime: Runtime) -> None:
    actor = Actor(ONCALL, team="TDEMO")
    print("Type /ops commands as in Slack (`/ops help`, `/ops dlq status`, ...). Ctrl-D or `exit` leaves.")
    while True:
        try:
            line = input("\n/ops ").strip()
        except EOFError:
            print()
            return
        text = line.removeprefix("/ops").strip()
        if text in ("exit", "quit"):
            return
        outcome = runtime.engine.handle(text, actor, WHERE)
        print(to_text(outcome.result, runtime.redactor))
        if outcome.kind == "preview":
            answer = input("Confirm? [y/N] ").strip().lower()
            if answer in ("y", "yes"):
                outcome = runtime.engine.confirm(outcome.pending.id, actor, WHERE)
            else:
                outcome = runtime.engine.cancel(outcome.pending.id, actor, WHERE)
            print(to_text(outcome.result, runtime.redactor))


def main(interactive: bool | None = None) -> int:
    if interactive is None:
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(143)))
    print("Starting an embedded Redis and PostgreSQL ...", flush=True)
    try:
        with Sandbox() as sandbox, DemoServices() as services, \
                tempfile.TemporaryDirectory(prefix="opsbot-demo-") as folder:
            settings = load_settings(demo_config(sandbox, Path(folder), services))
            runtime = Runtime.build(settings)
            try:
                runtime.state.migrate()
                counts = seed_world(runtime.state.redis)
                seed_database(sandbox.database_url)
                print(f"Seeded a broken world: {counts['jobs:dead']} dead jobs in jobs:dead "
                      f"(SMTP timeouts, auth failures, rate limits, a KeyError, bytes that are not JSON), "
                      f"{counts['step.dead']} in step.dead; 45 emails stuck behind an SMTP provider that refuses "
                      "connections and 100 failed; case-42's reminder blocked by its daily cap; a worker that "
                      "is not ready.", flush=True)
                if interactive:
                    console(runtime)
                    return 0
                return 0 if run_tour(runtime) else 1
            finally:
                runtime.close()
    except SandboxUnavailable as exc:
        print(f"opsbot demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nStopped; the embedded servers are gone.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
