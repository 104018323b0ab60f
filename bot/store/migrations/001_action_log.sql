-- The bot's action log: every request, confirmation, cancellation, denial and outcome.
-- Hash-chained in id order with the SPEC §7 v1 scheme (tenant = Slack team or "cli").
CREATE TABLE IF NOT EXISTS action_log (
    id          bigint PRIMARY KEY,
    tenant      text        NOT NULL,
    created_at  timestamptz NOT NULL,
    actor       text        NOT NULL,
    action      text        NOT NULL,
    payload     jsonb       NOT NULL,
    prev_hash   text,
    hash        text        NOT NULL
);
CREATE INDEX IF NOT EXISTS action_log_pending_idx ON action_log ((payload->>'pending_id'))
    WHERE payload ? 'pending_id';
