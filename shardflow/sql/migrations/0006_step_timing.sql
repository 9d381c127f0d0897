-- When each step started (database clock), how long it ran and which attempt ran it,
-- for `shardflow workflows steps`. Written with the checkpoint by the group commit
-- (commit_batch) and record_step; NULL for rows written before this migration and for
-- records without a meaningful duration (sleep, recv, send, events, children).
-- ADD COLUMN without a default only changes the catalog: no rewrite, no long lock.
ALTER TABLE shardflow.step_outputs
    ADD COLUMN started_at  timestamptz,
    ADD COLUMN duration_ms double precision,
    ADD COLUMN attempt     integer;
