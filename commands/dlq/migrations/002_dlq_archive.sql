-- Dead letters dropped by `dlq trim`, archived before they are removed from Redis.
-- (task_id, ordinal) makes a re-run after a crash insert nothing twice.
CREATE TABLE IF NOT EXISTS dlq_archive (
    task_id      text        NOT NULL,
    ordinal      bigint      NOT NULL,
    queue        text        NOT NULL,
    dead_key     text        NOT NULL,
    entry        bytea       NOT NULL,
    archived_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, ordinal)
);
CREATE INDEX IF NOT EXISTS dlq_archive_queue_idx ON dlq_archive (queue, archived_at);
