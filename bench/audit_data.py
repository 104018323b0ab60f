"""Fill an ``"AuditLog"`` table with valid v1 chains, fast (shared by the audit benchmark).

The hashes are computed here with hashlib directly, independently of the bot's code, and
the rows are loaded with ``COPY FROM STDIN``. Layout as Prisma creates it: ``id`` bigint,
``"createdAt"`` ``timestamp(3)``, ``payload`` jsonb, plus the (tenant, createdAt, id) index
the application's own verification needs.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import psycopg

DDL = """
DROP TABLE IF EXISTS "AuditLog";
CREATE TABLE "AuditLog" (
    id bigint PRIMARY KEY,
    "tenantId" text NOT NULL,
    "createdAt" timestamp(3) NOT NULL,
    actor text,
    action text NOT NULL,
    payload jsonb NOT NULL,
    "prevHash" text,
    hash text NOT NULL
);
"""
INDEX = 'CREATE INDEX "AuditLog_tenant_created_id" ON "AuditLog" ("tenantId", "createdAt", id)'
ACTIONS = ["case.update", "case.create", "communication.send", "user.login", "document.upload"]


def _f(value: bytes | None) -> bytes:
    return b"-1:" if value is None else b"%d:%b" % (len(value), value)


def fill(url: str, rows: int, tenants: int = 4, payload_pad: int = 60) -> None:
    """Replace the table with ``rows`` rows spread round-robin over ``tenants`` chains."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    heads: dict[int, bytes | None] = {t: None for t in range(tenants)}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(DDL)
        payloads: dict[int, bytes] = {}
        with conn.cursor() as cur, cur.copy('COPY "AuditLog" FROM STDIN') as copy:
            batch: list[bytes] = []
            for n in range(1, rows + 1):
                tenant_no = n % tenants
                tenant = b"tenant-%d" % tenant_no
                created = (start + timedelta(milliseconds=37 * n)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
                created_z = created.encode() + b"Z"
                payload = payloads.get(n % 5000)
                if payload is None:
                    # PostgreSQL's jsonb::text of this object: keys sorted by length then bytes, ", " and ": ".
                    payload = payloads[n % 5000] = _jsonb_text(json.dumps(
                        {"caseId": f"case-{n % 5000}", "field": "status", "from": "open", "to": "pending",
                         "note": "x" * payload_pad}).encode())
                actor, action = b"user-%d@example.com" % (n % 97), ACTIONS[n % 5].encode()
                prev = heads[tenant_no]
                digest = hashlib.sha256(b"".join(_f(v) for v in (prev, b"%d" % n, tenant, created_z, actor,
                                                                 action, payload))).hexdigest().encode()
                heads[tenant_no] = digest
                batch.append(b"\t".join((b"%d" % n, tenant, created.encode(), actor, action, payload,
                                         prev if prev is not None else b"\\N", digest)) + b"\n")
                if len(batch) == 5000:
                    copy.write(b"".join(batch))
                    batch.clear()
            copy.write(b"".join(batch))
        conn.execute(INDEX)
        conn.execute('ANALYZE "AuditLog"')


def _jsonb_text(raw: bytes) -> bytes:
    data = json.loads(raw)
    ordered = dict(sorted(data.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode())))
    return json.dumps(ordered, ensure_ascii=False).encode()
