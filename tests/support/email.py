"""The sending service's tables (docs/conventions.md) with realistic data, made for each test."""

from __future__ import annotations

import random

import psycopg

SCHEMA = """
DROP TABLE IF EXISTS "Communication", "CaseEvent";
CREATE TABLE "Communication" (
    id text PRIMARY KEY, "tenantId" text NOT NULL, status text NOT NULL,
    "createdAt" timestamptz NOT NULL, "updatedAt" timestamptz NOT NULL,
    attempts int NOT NULL DEFAULT 0, "lastError" text
);
CREATE INDEX ON "Communication" (status, "updatedAt");
CREATE TABLE "CaseEvent" (
    id bigserial PRIMARY KEY, "caseId" text NOT NULL, "tenantId" text NOT NULL, type text NOT NULL,
    "createdAt" timestamptz NOT NULL, data jsonb
);
CREATE INDEX ON "CaseEvent" ("caseId", "createdAt");
"""

ERRORS = [
    "SMTP 421 4.7.0 Try again later, closing connection (conn {n})",
    "Connection timed out after 30000ms to smtp.example.com for message {uuid}",
    "535 5.7.8 Authentication credentials invalid",
]


def create(database_url: str, *, seed: int = 7, sent: int = 3000, failed: int = 900, stuck: int = 120,
           fresh_pending: int = 40) -> None:
    rng = random.Random(seed)
    rows = []
    for i in range(sent):
        rows.append((f"c-sent-{i}", f"tenant-{i % 5}", "sent", f"{rng.randint(1, 47)} hours", None))
    for i in range(failed):
        template = ERRORS[0] if i % 10 < 6 else ERRORS[1] if i % 10 < 9 else ERRORS[2]
        error = template.format(n=rng.randint(1, 99999), uuid=f"{rng.getrandbits(128):032x}"[:8] + "-aaaa-bbbb-cccc-"
                                + f"{rng.getrandbits(48):012x}")
        rows.append((f"c-failed-{i}", f"tenant-{i % 3}", "failed", f"{1 + i % 20} hours", error))
    for i in range(stuck):
        rows.append((f"c-stuck-{i}", "tenant-1" if i % 4 else "tenant-2", "pending" if i % 2 else "pending_auto",
                     f"{20 + i} minutes", None))
    for i in range(fresh_pending):
        rows.append((f"c-fresh-{i}", "tenant-0", "pending", "2 minutes", None))
    with psycopg.connect(database_url) as conn:
        conn.execute(SCHEMA)
        with conn.cursor() as cur:
            cur.executemany(
                'INSERT INTO "Communication" (id, "tenantId", status, "createdAt", "updatedAt", attempts, "lastError")'
                " VALUES (%s, %s, %s, now() - %s::interval, now() - %s::interval, 3, %s)",
                [(i, t, s, age, age, e) for i, t, s, age, e in rows],
            )


def case_events(database_url: str, events: list[tuple[str, str, str, str, dict | None]]) -> None:
    """(caseId, tenantId, type, age, data) rows."""
    with psycopg.connect(database_url) as conn, conn.cursor() as cur:
        cur.executemany(
            'INSERT INTO "CaseEvent" ("caseId", "tenantId", type, "createdAt", data)'
            " VALUES (%s, %s, %s, now() - %s::interval, %s::jsonb)",
            [(c, t, k, age, None if d is None else __import__("json").dumps(d)) for c, t, k, age, d in events],
        )
