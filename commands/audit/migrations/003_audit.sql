-- Signed last-known-good heads of the application's audit chains, and the record of each verification.
CREATE TABLE IF NOT EXISTS audit_snapshots (
    id bigserial PRIMARY KEY,
    tenant text NOT NULL,
    last_id text NOT NULL,
    last_created text NOT NULL,
    hash text NOT NULL,
    row_count bigint NOT NULL,
    taken_at timestamptz NOT NULL,
    taken_by text NOT NULL,
    signature text NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_snapshots_tenant ON audit_snapshots (tenant, taken_at DESC);

CREATE TABLE IF NOT EXISTS audit_runs (
    id bigserial PRIMARY KEY,
    scope text NOT NULL,          -- a tenant, or '*' for --all
    mode text NOT NULL,           -- full | incremental
    valid boolean NOT NULL,
    tenants integer NOT NULL,
    row_count bigint NOT NULL,
    counts jsonb NOT NULL,        -- findings per kind
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_runs_finished ON audit_runs (finished_at DESC);
