"""The demo's broken world: what is broken, and how it is put in place.

Usage::

    from bot.demo.world import demo_config, describe, migrations_dir, seed_database, seed_world

    settings = load_settings(demo_config(sandbox, folder, services), env=env)  # app.yaml in ``folder``
    counts = seed_world(runtime.state.redis)                     # dead letters in Redis
    seed_database(sandbox.database_url, migrations_dir(folder))  # mail, reminders, AuditLog, migrations
    print(describe(counts))                                      # what was just broken, in one paragraph

The world: a dead-letter backlog with several kinds of failure (including entries that
are not JSON), email stuck behind an SMTP provider that refuses connections, a case whose
reminder was blocked by its cap, an AuditLog with one row edited by hand, Prisma
migrations of which one was edited after it ran and one is pending. The services it
points at are :class:`bot.demo.services.DemoServices`; ``ONCALL`` and ``WHERE`` are who
the demo acts as and where.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import redis

from bot.core.invocation import Where

if TYPE_CHECKING:
    from bot.demo.sandbox import Sandbox
    from bot.demo.services import DemoServices

__all__ = ["ROOT", "ONCALL", "WHERE", "closed_port", "demo_config", "describe", "migrations_dir",
           "seed_audit", "seed_database", "seed_migrations", "seed_rq", "seed_world"]

ROOT = Path(__file__).resolve().parents[2]  # the repository: runbooks/ is beside bot/
ONCALL = "U0DEMOONCALL"
WHERE = Where("C0DEMO", channel_name="ops-demo")

FAILURES = [
    ("send_email", "SMTP timeout after 30s talking to smtp.mailgun.org:587"),
    ("send_email", "535 5.7.8 Authentication credentials invalid"),
    ("render_pdf", "429 rate limit exceeded (OpenAI), retry after 20s"),
    ("sync_crm", "KeyError: 'tenantId'"),
]


def closed_port() -> int:
    """A loopback port nothing listens on: the demo's SMTP provider is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def migrations_dir(folder: Path) -> Path:
    """Where the world's Prisma migrations are, in the demo's ``folder`` (app.yaml points there)."""
    return folder / "prisma" / "migrations"


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
  main: {{url: "{sandbox.database_url}", migrations: {{tool: prisma, source: "{migrations_dir(folder)}"}}}}
queues:
  - {{name: jobs, redis: main, ready: jobs, dead: "jobs:dead", keep: 100}}
  - {{name: step, redis: main, ready: step.ready, dead: step.dead, keep: 10}}
  - {{name: mail, backend: rq, redis: main, queue: mail}}
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
alerts:
  token: ${{OPSBOT_DEMO_ALERTS_TOKEN}}
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


def seed_rq(redis_url: str) -> dict[str, int]:
    """An RQ queue ``mail`` whose jobs failed for real: enqueued with RQ, run by ``rq worker --burst``."""
    import subprocess
    import sys

    from rq import Queue

    from bot.demo import jobs

    client = redis.Redis.from_url(redis_url)
    try:
        queue = Queue("mail", connection=client)
        for index in range(12):
            if index % 3 == 2:
                queue.enqueue(jobs.sync_ledger, f"customer-{index}")
            else:
                queue.enqueue(jobs.send_invoice, f"customer-{index}", 1000 + index)
        subprocess.run([sys.executable, "-m", "rq.cli", "worker", "--burst", "-w", "rq.worker.SimpleWorker",
                        "--url", redis_url, "mail"], check=True, capture_output=True, cwd=ROOT, timeout=120)
        return {"rq_failed": client.zcard("rq:failed:mail")}
    finally:
        client.close()


def describe(counts: dict[str, int]) -> str:
    """The broken world in one paragraph, for the demo to print once it is seeded."""
    return (f"Seeded a broken world: {counts['jobs:dead']} dead jobs in jobs:dead "
            f"(SMTP timeouts, auth failures, rate limits, a KeyError, bytes that are not JSON), "
            f"{counts['step.dead']} in step.dead; {counts.get('rq_failed', 0)} RQ jobs failed in rq:failed:mail "
            "(the billing API is down); 45 emails stuck behind an SMTP provider that refuses "
            "connections and 100 failed; case-42's reminder blocked by its daily cap; a worker that "
            "is not ready; an AuditLog row edited by hand; a migration edited after it ran and one "
            "pending; an API with three deploys to roll back between.")
