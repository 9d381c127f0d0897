-- shardflow: online
-- Flow control. Per-key limits (docs/queues.md#flow-control): the key a workflow was
-- submitted with (`submit(..., partition_key=...)`), NULL without one. A move copies
-- whole rows, so the key travels with the workflow. ADD COLUMN without a default only
-- changes the catalog (no rewrite).
ALTER TABLE shardflow.workflow_status ADD COLUMN IF NOT EXISTS partition_key text;

-- The keyed claim (claim_enqueued_keyed) walks the keys that have ready work (a skip
-- scan: one probe per key) and reads the first rows of each key in claim order. NULL
-- keys are in the index too, so the unkeyed rows of a keyed queue are one more probe.
-- Claims of queues without `key_concurrency` keep using workflow_status_claim_ready.
CREATE INDEX CONCURRENTLY IF NOT EXISTS workflow_status_claim_keyed
    ON shardflow.workflow_status (queue, partition_key, priority DESC, created_at, workflow_id)
    WHERE state = 'ENQUEUED' AND wake_at IS NULL;

-- Counting a key's RUNNING workflows. A lease renewal changes none of these columns,
-- so renewals stay HOT updates (see 0004).
CREATE INDEX CONCURRENTLY IF NOT EXISTS workflow_status_running_key
    ON shardflow.workflow_status (queue, partition_key)
    WHERE state = 'RUNNING' AND partition_key IS NOT NULL;

-- Debounce (docs/queues.md#debounce): `submit(..., debounce_key=, debounce_seconds=)`
-- keeps one pending run per (workflow name, key). A pending run is ENQUEUED and was
-- never started; a submit of the same key replaces its inputs (an upsert on this
-- index), and its first claim takes it out of the index, so the next submit creates
-- a new pending run.
ALTER TABLE shardflow.workflow_status ADD COLUMN IF NOT EXISTS debounce_key text;

CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS workflow_status_debounce_pending
    ON shardflow.workflow_status (name, debounce_key)
    WHERE state = 'ENQUEUED' AND started_at IS NULL AND debounce_key IS NOT NULL;
