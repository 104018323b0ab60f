"""An ``"AuditLog"`` whose chain is written by PostgreSQL itself: a trigger implementing v1 (docs/conventions.md).

The trigger is an appender independent of the bot's code: it links each new row to
the tenant's newest row by id (insertion order) and hashes it in SQL. Tests then
tamper with the table the way people and bugs do, and check what ``audit`` says.

Usage::

    chain = AuditChain(database_url).create()
    chain.append("tenant-a", 5)                         # five rows, one second apart
    chain.append("tenant-a", 1, writer="node-b", skew=-3.0)
    chain.rows("tenant-a")                              # [(id, createdAt, prevHash, hash), ...] in (createdAt, id) order
    chain.forge("tenant-a", 999, created, prev=rows[2][3])   # behind the appender's back, hashed correctly
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

DDL = """
DROP TABLE IF EXISTS "AuditLog";
DROP FUNCTION IF EXISTS audit_v1_append() CASCADE;
DROP FUNCTION IF EXISTS audit_v1_hash(text, bigint, text, timestamptz, text, text, jsonb);
DROP FUNCTION IF EXISTS audit_f(text);

CREATE TABLE "AuditLog" (
    id bigserial PRIMARY KEY,
    "tenantId" text NOT NULL,
    "createdAt" timestamptz(3) NOT NULL DEFAULT now(),
    actor text,
    action text NOT NULL,
    payload jsonb NOT NULL DEFAULT '{}',
    "prevHash" text,
    hash text NOT NULL DEFAULT '',
    writer text
);
CREATE INDEX ON "AuditLog" ("tenantId", "createdAt", id);

-- F(NULL) = '-1:', F(v) = <UTF-8 byte length> ':' v
CREATE FUNCTION audit_f(v text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN v IS NULL THEN '-1:' ELSE octet_length(v)::text || ':' || v END
$$;

CREATE FUNCTION audit_v1_hash(prev text, id bigint, tenant text, created timestamptz, actor text,
                              action text, payload jsonb) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT encode(sha256(convert_to(
        audit_f(prev) || audit_f(id::text) || audit_f(tenant)
        || audit_f(to_char(created AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
        || audit_f(actor) || audit_f(action) || audit_f(payload::text), 'UTF8')), 'hex')
$$;

CREATE FUNCTION audit_v1_append() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT hash INTO NEW."prevHash" FROM "AuditLog" WHERE "tenantId" = NEW."tenantId" ORDER BY id DESC LIMIT 1;
    NEW.hash := audit_v1_hash(NEW."prevHash", NEW.id, NEW."tenantId", NEW."createdAt", NEW.actor, NEW.action,
                              NEW.payload);
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_v1_append BEFORE INSERT ON "AuditLog" FOR EACH ROW EXECUTE FUNCTION audit_v1_append();
"""

# A later release that hashes createdAt without milliseconds: the "scheme changed" case.
V2_TRIGGER = """
CREATE OR REPLACE FUNCTION audit_v1_append() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT hash INTO NEW."prevHash" FROM "AuditLog" WHERE "tenantId" = NEW."tenantId" ORDER BY id DESC LIMIT 1;
    NEW.hash := encode(sha256(convert_to(
        audit_f(NEW."prevHash") || audit_f(NEW.id::text) || audit_f(NEW."tenantId")
        || audit_f(to_char(NEW."createdAt" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
        || audit_f(NEW.actor) || audit_f(NEW.action) || audit_f(NEW.payload::text), 'UTF8')), 'hex');
    RETURN NEW;
END
$$;
"""

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


class AuditChain:
    def __init__(self, url: str):
        self.url = url
        self.clock = START

    def create(self) -> AuditChain:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(DDL)
        return self

    def sql(self, query: str, params: tuple | dict | None = None) -> list[tuple]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def append(self, tenant: str, count: int = 1, *, writer: str = "node-a", skew: float = 0.0,
               step: float = 1.0, payload: str = '{"case": "c-1", "status": "open", "note": "ok"}') -> list[int]:
        """``count`` rows, ``step`` seconds apart; ``skew`` shifts this writer's clock (createdAt only)."""
        ids = []
        with psycopg.connect(self.url, autocommit=True) as conn:
            for _ in range(count):
                self.clock += timedelta(seconds=step)
                created = self.clock + timedelta(seconds=skew)
                ids.append(conn.execute(
                    'INSERT INTO "AuditLog" ("tenantId", "createdAt", actor, action, payload, writer)'
                    " VALUES (%s, %s, %s, 'case.update', %s, %s) RETURNING id",
                    (tenant, created, f"{writer}@example.com", payload, writer)).fetchone()[0])
        return ids

    def rows(self, tenant: str) -> list[tuple]:
        return self.sql('SELECT id, "createdAt", "prevHash", hash FROM "AuditLog" WHERE "tenantId" = %s'
                        ' ORDER BY "createdAt", id', (tenant,))

    def rehash_from(self, tenant: str, first_id: int) -> None:
        """Re-hash every row from ``first_id`` on, consistently: what someone covering an edit would do."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("""
                DO $$
                DECLARE r record; prev text;
                BEGIN
                    SELECT hash INTO prev FROM "AuditLog" WHERE "tenantId" = %(t)s AND id < %(first)s
                        ORDER BY id DESC LIMIT 1;
                    FOR r IN SELECT * FROM "AuditLog" WHERE "tenantId" = %(t)s AND id >= %(first)s ORDER BY id LOOP
                        UPDATE "AuditLog" SET "prevHash" = prev,
                            hash = audit_v1_hash(prev, r.id, r."tenantId", r."createdAt", r.actor, r.action, r.payload)
                            WHERE id = r.id RETURNING hash INTO prev;
                    END LOOP;
                END $$
            """.replace("%(t)s", psycopg.sql.quote(tenant)).replace("%(first)s", str(int(first_id))))

    def forge(self, tenant: str, row_id: int, created: datetime, prev: str | None, digest: str | None = None, *,
              actor: str | None = "mallory@example.com",
              payload: str = '{"case": "c-1", "status": "approved"}') -> None:
        """Insert a row behind the appender's back; ``digest`` None: hashed correctly (v1) with ``prev``."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")
            conn.execute("""
                INSERT INTO "AuditLog" (id, "tenantId", "createdAt", actor, action, payload, "prevHash", hash)
                VALUES (%(id)s, %(t)s, %(created)s, %(actor)s, 'case.update', %(payload)s, %(prev)s,
                        coalesce(%(digest)s, audit_v1_hash(%(prev)s, %(id)s, %(t)s, %(created)s, %(actor)s,
                                                           'case.update', %(payload)s)))""",
                         {"id": row_id, "t": tenant, "created": created, "actor": actor, "payload": payload,
                          "prev": prev, "digest": digest})
