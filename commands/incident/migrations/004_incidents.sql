-- Incidents (seed 003): one row each, its timeline events, and when reminders fall due.
CREATE SEQUENCE IF NOT EXISTS incident_number;

CREATE TABLE IF NOT EXISTS incidents (
    number integer PRIMARY KEY DEFAULT nextval('incident_number'),
    title text NOT NULL,
    severity text NOT NULL,
    phase text NOT NULL DEFAULT 'triage',
    status text NOT NULL DEFAULT 'open',          -- open | resolved
    commander text NOT NULL,
    channel text,                                  -- where the root message lives
    root_ts text UNIQUE,                           -- the root message; its thread is the incident's home
    summary text,
    declared_at timestamptz NOT NULL,
    last_update_at timestamptz NOT NULL,
    resolved_at timestamptz,
    next_reminder_at timestamptz,                  -- NULL: no reminder due (backlog severity, resolved)
    reminders_sent integer NOT NULL DEFAULT 0,
    postmortem_due_at timestamptz,
    postmortem_posted_at timestamptz,
    postmortem_reminded_at timestamptz
);
CREATE INDEX IF NOT EXISTS incidents_reminder_due ON incidents (next_reminder_at) WHERE status = 'open';
CREATE INDEX IF NOT EXISTS incidents_postmortem_due ON incidents (postmortem_due_at)
    WHERE postmortem_posted_at IS NULL AND postmortem_reminded_at IS NULL;

CREATE TABLE IF NOT EXISTS incident_events (
    id bigserial PRIMARY KEY,
    incident integer NOT NULL REFERENCES incidents (number),
    at timestamptz NOT NULL,
    actor text NOT NULL,
    kind text NOT NULL,                            -- declared | severity | phase | note | resolved | reminder | page | reposted
    text text NOT NULL,
    data jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS incident_events_incident ON incident_events (incident, at);
CREATE INDEX IF NOT EXISTS action_log_incident_idx ON action_log ((payload->>'incident')) WHERE payload ? 'incident';
