-- The action log's anchors (bot/loganchor.py): its signed head, the signed start of each segment,
-- and the signed checkpoint of the last verification. Signatures are HMAC-SHA256 under
-- state.log_secret (NULL when no secret is configured); key_id names the key that signed.

-- One row: the newest entry the bot appended. Updated in the same transaction as each append.
CREATE TABLE IF NOT EXISTS action_log_head (
    one         boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq         bigint      NOT NULL,   -- entries appended since the head was first written; never goes back
    segment     integer     NOT NULL,   -- 0: no segment started yet
    first_id    bigint,                 -- the segment's first row
    head_id     bigint,                 -- the segment's newest row
    head_hash   text,
    row_count   bigint      NOT NULL,   -- rows in the segment
    key_id      text,
    signature   text,
    restart     jsonb,                  -- breaks `log verify` found: the next append starts a new segment
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A segment is a chain whose first row has prev_hash NULL. The bot starts one on the first append
-- and whenever the chain it would extend is broken; the reason and what it found are signed here.
CREATE TABLE IF NOT EXISTS action_log_segments (
    segment     integer PRIMARY KEY,
    first_id    bigint      NOT NULL,
    first_hash  text        NOT NULL,
    started_at  timestamptz NOT NULL,
    reason      text        NOT NULL,   -- first | adopted | truncated | rewritten | ... (bot/logverify.py)
    detail      jsonb       NOT NULL,   -- the previous segment's head as signed, and the breaks found in it
    key_id      text,
    signature   text
);

-- One row: how far the last verification got (head id, hash, row count), signed.
CREATE TABLE IF NOT EXISTS action_log_checkpoint (
    one         boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq         bigint      NOT NULL,
    segment     integer     NOT NULL,
    head_id     bigint      NOT NULL,
    head_hash   text        NOT NULL,
    row_count   bigint      NOT NULL,   -- rows in the segment up to head_id
    total       bigint      NOT NULL,   -- rows in the whole log up to head_id
    verified_at timestamptz NOT NULL,
    full_at     timestamptz,            -- the last verification that walked every row
    key_id      text,
    signature   text
);

-- Entries kept in Redis while PostgreSQL was down carry a spool_id: appended exactly once.
CREATE INDEX IF NOT EXISTS action_log_spool_idx ON action_log ((payload->>'spool_id')) WHERE payload ? 'spool_id';

-- An existing log keeps its rows: the head starts where the table ends (unsigned; the first
-- append with state.log_secret set signs it and records the segment as adopted).
INSERT INTO action_log_head (seq, segment, first_id, head_id, head_hash, row_count)
SELECT count(*), CASE WHEN count(*) > 0 THEN 1 ELSE 0 END, min(id),
       max(id), (SELECT hash FROM action_log ORDER BY id DESC LIMIT 1), count(*)
FROM action_log
ON CONFLICT (one) DO NOTHING;
