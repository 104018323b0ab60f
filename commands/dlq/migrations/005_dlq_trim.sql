-- `dlq trim` tasks, for fencing: `epoch` rises each time a trimmer takes the queue's lease
-- (commands/dlq/archive.py). Every archive transaction first checks that its epoch is still
-- the task's newest, so a trimmer that lost its lease can never archive or delete anything
-- after the new holder took over. Redis's `dropped` counter says which archive rows stand
-- for removed entries (ordinal < dropped); rows at or past it are deleted, never trusted.
CREATE TABLE IF NOT EXISTS dlq_trim_tasks (
    task_id     text        PRIMARY KEY,
    queue       text        NOT NULL,
    epoch       bigint      NOT NULL,
    keep        bigint,
    to_drop     bigint,
    status      text        NOT NULL DEFAULT 'running',   -- running | done | abandoned
    taken_at    timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
