"""``opsbot demo``: opsbot working within a minute, with nothing but Python.

Usage::

    opsbot demo            # in a terminal: a console where you type /ops commands as in Slack
    opsbot demo | cat      # without a terminal: a scripted tour that checks every step

It starts a real Redis and a real PostgreSQL from Python packages (:mod:`bot.demo.sandbox`)
and seeds a broken world: a dead-letter backlog with several kinds
of failure (including entries that are not JSON), email stuck behind an SMTP provider
that refuses connections, a case whose reminder was blocked by its cap, and two services
of which one is not ready. The world grows with every command group. Everything runs through the same engine as Slack and the
CLI; the processes and files are removed on exit, Ctrl-C included.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import redis

from bot.config.settings import load_settings
from bot.engine.dispatch import Outcome
from bot.core.invocation import Actor, Where
from bot.render.text import to_text
from bot.runtime.factory import Runtime
from bot.demo.sandbox import Sandbox, SandboxUnavailable
from bot.runtime.terminal import TerminalSession

__all__ = ["main", "seed_world", "TOUR"]

ROOT = Path(__file__).resolve().parents[2]  # the repository: runbooks/ is beside bot/
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
        now = time.time()
        # The API's deploys, newest first: the live one came an hour ago, after the last migration.
        self.deploys = [
            {"id": "dep-104", "version": "9f2c1e7a", "status": "live", "message": "bulk export v2",
             "created_at": _iso(now - 3600), "finished_at": _iso(now - 3500)},
            {"id": "dep-103", "version": "4b7d0c21", "status": "succeeded", "message": "fix tenant caps",
             "created_at": _iso(now - 86400), "finished_at": _iso(now - 86300)},
            {"id": "dep-102", "version": "e81a9f55", "status": "succeeded", "message": "audit log paging",
             "created_at": _iso(now - 3 * 86400), "finished_at": _iso(now - 3 * 86400 + 100)},
        ]

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(*demo.answer(self.path))

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                self._send(*demo.rollback(json.loads(self.rfile.read(length) or b"{}")))

            def _send(self, status: int, body: str, kind: str) -> None:
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
        if path.startswith("/deploy/deploys"):
            wanted = path.split("?")[0].removeprefix("/deploy/deploys").strip("/")
            found = [d for d in self.deploys if not wanted or d["id"] == wanted]
            body = found if not wanted else (found[0] if found else {})
            return (200 if found else 404), json.dumps(body), "application/json"
        return 404, "{}", "application/json"

    def rollback(self, body: dict) -> tuple[int, str, str]:
        """POST /deploy/rollback: the new deploy is live at once (the demo's platform is fast)."""
        target = next((d for d in self.deploys if d["id"] == body.get("deploy_id")), None)
        if target is None:
            return 404, json.dumps({"message": "no such deploy"}), "application/json"
        for deploy in self.deploys:
            if deploy["status"] == "live":
                deploy["status"] = "succeeded"
        new = {**target, "id": f"dep-{100 + len(self.deploys) + 2}", "status": "live",
               "message": f"rollback to {target['id']}", "created_at": _iso(time.time()),
               "finished_at": _iso(time.time())}
        self.deploys.insert(0, new)
        return 201, json.dumps(new), "application/json"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "DemoServices":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _iso(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


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
  log_secret: ${{OPSBOT_DEMO_LOG_SECRET}}
roles:
  oncall: {{users: [{ONCALL}]}}
redis:
  main: {{url: "{sandbox.redis_url}"}}
databases:
  main: {{url: "{sandbox.database_url}", migrations: {{tool: prisma, source: "{folder / 'prisma' / 'migrations'}"}}}}
queues:
  - {{name: jobs, redis: main, ready: jobs, dead: "jobs:dead", keep: 100}}
  - {{name: step, redis: main, ready: step.ready, dead: step.dead, keep: 10}}
services:
  api: {{liveness: "{services.base}/api/health", readiness: "{services.base}/api/readyz", expect: {{ok: true}},
        deploy: {{provider: http, url: "{services.base}/deploy"}},
        rollback: {{database: main, verify_window: 1s, verify_interval: 0.5s}}}}
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
audit:
  snapshot_secret: ${{OPSBOT_DEMO_SNAPSHOT_SECRET}}
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


def _jsonb_text(document: dict) -> str:
    """PostgreSQL's jsonb::text of a flat object: keys by length, then bytes; ", " and ": " separators."""
    ordered = dict(sorted(document.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode())))
    return json.dumps(ordered, ensure_ascii=False)


def seed_audit(conn: psycopg.Connection, rows_per_tenant: int = 400) -> int:
    """Two tenants' AuditLog chains (v1), then one manual edit in tenant-b: returns the edited row's id."""
    from bot.store.chain import v1_hash

    conn.execute('CREATE TABLE "AuditLog" (id bigint PRIMARY KEY, "tenantId" text NOT NULL,'
                 ' "createdAt" timestamp(3) NOT NULL, actor text, action text NOT NULL, payload jsonb NOT NULL,'
                 ' "prevHash" text, hash text NOT NULL)')
    conn.execute('CREATE INDEX ON "AuditLog" ("tenantId", "createdAt", id)')
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=2)
    number = 0
    with conn.cursor().copy('COPY "AuditLog" FROM STDIN') as copy:
        for tenant in ("tenant-a", "tenant-b"):
            prev = None
            for n in range(rows_per_tenant):
                number += 1
                created = start + timedelta(minutes=5 * n, milliseconds=number)
                payload = _jsonb_text({"caseId": f"case-{n % 37}", "field": "status", "to": "review"})
                actor = f"user-{n % 7}@example.com"
                digest = v1_hash(prev, str(number), tenant, created, actor, "case.update", payload)
                copy.write_row((number, tenant, created.replace(tzinfo=None), actor, "case.update", payload, prev,
                                digest))
                prev = digest
    edited = rows_per_tenant + 250
    conn.execute("""UPDATE "AuditLog" SET payload = '{"to": "approved", "field": "status", "caseId": "case-27"}'"""
                 " WHERE id = %s", (edited,))
    return edited


MIGRATIONS = [
    ("20260101090000_init", 'CREATE TABLE "Case" (id text PRIMARY KEY);\n'),
    ("20260215120000_audit_log", 'CREATE INDEX "AuditLog_tenant" ON "AuditLog" ("tenantId");\n'),
    ("20260402080000_caps", 'ALTER TABLE "Case" ADD COLUMN cap int;\n'),
]


def seed_migrations(conn: psycopg.Connection, folder: Path) -> None:
    """prisma/migrations with three applied migrations, one of them edited since, and one pending."""
    conn.execute("""CREATE TABLE "_prisma_migrations" (
        id VARCHAR(36) PRIMARY KEY NOT NULL, checksum VARCHAR(64) NOT NULL, finished_at TIMESTAMPTZ,
        migration_name VARCHAR(255) NOT NULL, logs TEXT, rolled_back_at TIMESTAMPTZ,
        started_at TIMESTAMPTZ NOT NULL DEFAULT now(), applied_steps_count INTEGER NOT NULL DEFAULT 0)""")
    applied_at = datetime.now(timezone.utc) - timedelta(days=5)
    for index, (name, script) in enumerate(MIGRATIONS):
        (folder / name).mkdir(parents=True)
        (folder / name / "migration.sql").write_text(script)
        conn.execute("INSERT INTO _prisma_migrations (id, checksum, finished_at, migration_name, started_at,"
                     " applied_steps_count) VALUES (%s, %s, %s, %s, %s, 1)",
                     (f"00000000-0000-0000-0000-00000000000{index}", hashlib.sha256(script.encode()).hexdigest(),
                      applied_at + timedelta(hours=index), name, applied_at + timedelta(hours=index)))
    edited = folder / MIGRATIONS[1][0] / "migration.sql"
    edited.write_text(edited.read_text() + "-- tidied up after it ran in production\n")
    (folder / "20261120100000_export_jobs").mkdir()
    (folder / "20261120100000_export_jobs" / "migration.sql").write_text('CREATE TABLE "ExportJob" (id text);\n')


def seed_database(database_url: str, migrations: Path) -> None:
    """The application's tables: mail stuck behind a failing provider, a reminder blocked by its cap, an
    AuditLog with one manual edit, and migration history that drifted from the code."""
    with psycopg.connect(database_url) as conn:
        conn.execute(WORLD_SQL)
        seed_audit(conn)
        seed_migrations(conn, migrations)


def seed_world(client: redis.Redis, now: float | None = None) -> dict[str, int]:
    """A dead-letter backlog (`jobs` / `jobs:dead`, `step.ready` / `step.dead`)."""
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
    Step("audit verify --all", lambda o: o.result.status == "fail" and _earliest(o) == ("content_mismatch", "650"),
         "the AuditLog hash chain: one row edited by hand"),
    Step("drift", lambda o: _drift(o) == (["20260215120000_audit_log"], ["20261120100000_export_jobs"]),
         "migrations: one edited after it ran, one pending"),
    Step("incident declare sev2 Exports failing for tenant-b", lambda o: o.result.data["incident"]["id"] == "INC-1",
         "an incident (in Slack: a thread in #incidents)"),
    Step("rollback api --incident INC-1", lambda o: o.result.status == "ok" and o.result.data["verified"],
         "a guarded rollback to the previous deploy, verified, on the incident's timeline"),
    Step("incident note export worker back to normal --incident INC-1", lambda o: o.result.status == "ok",
         "an update"),
    Step("incident resolve rolled back api to dep-103 --incident INC-1",
         lambda o: o.result.data["incident"]["status"] == "resolved", "resolved; the postmortem is due in 48 h"),
    Step("incident timeline --incident INC-1", lambda o: _timeline_has(o, "`rollback`", "export worker"),
         "who did what, when"),
    Step("incident postmortem --incident INC-1",
         lambda o: "## Actions taken through opsbot" in o.result.data["markdown"], "a postmortem draft"),
    Step("log verify", lambda o: o.result.status == "ok" and o.result.data["anchored"],
         "the bot's own action log: every entry of this tour, against its signed head"),
]


def _earliest(outcome: Outcome) -> tuple[str, str]:
    bad = [t for t in outcome.result.data["tenants"] if not t["valid"]]
    return bad[0]["findings"][0]["kind"], bad[0]["findings"][0]["id"]


def _drift(outcome: Outcome) -> tuple[list[str], list[str]]:
    report = outcome.result.data["databases"][0]
    return [m["name"] for m in report["edited"]], [m["name"] for m in report["pending"]]


def _timeline_has(outcome: Outcome, *texts: str) -> bool:
    whole = " ".join(f"{e['what']} {e['result']}" for e in outcome.result.data["entries"])
    return all(text in whole for text in texts)


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
    """Type /ops commands as in Slack; previews are confirmed at the same prompt as `opsbot run` (yes or y)."""
    session = TerminalSession(runtime, Actor(ONCALL, team="TDEMO"), WHERE, output=".", interactive=True,
                              show_drafts=True)
    print("Type /ops commands as in Slack (`/ops help`, `/ops dlq status`, ...). Ctrl-D or `exit` leaves."
          " Files commands produce (audit export, postmortem drafts) are written to the current folder.")
    while True:
        try:
            line = input("\n/ops ").strip()
        except EOFError:
            print()
            return
        text = line.removeprefix("/ops").strip()
        if text in ("exit", "quit"):
            return
        print(session.render(session.run(text)))


def main(interactive: bool | None = None) -> int:
    if interactive is None:
        interactive = sys.stdin.isatty() and sys.stdout.isatty()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(143)))
    print("Starting an embedded Redis and PostgreSQL ...", flush=True)
    try:
        with Sandbox() as sandbox, DemoServices() as services, \
                tempfile.TemporaryDirectory(prefix="opsbot-demo-") as folder:
            # Throwaway secrets, from the environment as app.yaml requires (a literal default is refused).
            env = {**os.environ, **{name: os.environ.get(name) or secrets.token_hex(16)
                                    for name in ("OPSBOT_DEMO_SNAPSHOT_SECRET", "OPSBOT_DEMO_LOG_SECRET")}}
            settings = load_settings(demo_config(sandbox, Path(folder), services), env=env)
            runtime = Runtime.build(settings)
            try:
                runtime.state.migrate()
                counts = seed_world(runtime.state.redis)
                seed_database(sandbox.database_url, Path(folder) / "prisma" / "migrations")
                print(f"Seeded a broken world: {counts['jobs:dead']} dead jobs in jobs:dead "
                      f"(SMTP timeouts, auth failures, rate limits, a KeyError, bytes that are not JSON), "
                      f"{counts['step.dead']} in step.dead; 45 emails stuck behind an SMTP provider that refuses "
                      "connections and 100 failed; case-42's reminder blocked by its daily cap; a worker that "
                      "is not ready; an AuditLog row edited by hand; a migration edited after it ran and one "
                      "pending; an API with three deploys to roll back between.", flush=True)
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
