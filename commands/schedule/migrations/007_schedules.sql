-- Scheduled checks: when each is next due (claimed once across replicas), and every run with its result.
CREATE TABLE IF NOT EXISTS schedules (
    name text PRIMARY KEY,                         -- the schedule's name (or its command)
    spec text NOT NULL,                            -- its timing and command; a change recomputes next_due_at
    next_due_at timestamptz NOT NULL,
    last_status text,                              -- status of the last finished run: ok | warn | fail | error
    last_summary text,
    last_finished_at timestamptz,
    last_ok_at timestamptz
);

CREATE TABLE IF NOT EXISTS schedule_runs (
    id bigserial PRIMARY KEY,
    schedule text NOT NULL,
    due_at timestamptz NOT NULL,                   -- the slot it runs for: one run per (schedule, slot)
    command text NOT NULL,
    status text NOT NULL DEFAULT 'running',        -- running | ok | warn | fail | error | interrupted
    attempt integer NOT NULL DEFAULT 1,            -- fences a late finish by an executor that lost the run
    owner text NOT NULL,                           -- the process running it
    claimed_at timestamptz NOT NULL,
    lease_until timestamptz NOT NULL,              -- heartbeat: past it, another sweeper takes the run over
    finished_at timestamptz,
    summary text,
    posted boolean NOT NULL DEFAULT false,
    UNIQUE (schedule, due_at)
);
CREATE INDEX IF NOT EXISTS schedule_runs_running ON schedule_runs (lease_until) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS schedule_runs_latest ON schedule_runs (schedule, id DESC);
