-- shardflow: online
-- Runs outside a transaction, one statement at a time: indexes are built and dropped
-- CONCURRENTLY, so workers and clients keep running while it applies (no statement here
-- takes a lock that blocks reads or writes of workflow_status). Every statement is
-- idempotent and the migrator drops indexes a crashed CONCURRENTLY build left invalid,
-- so an interrupted run is simply run again.

-- Lease renewals become HOT updates. A heartbeat changes only lease_expires_at; an
-- update is HOT (no new index entries, far less WAL) only if no index covers a changed
-- column and the row's page has room. So: RUNNING rows are indexed by queue alone (the
-- expired-lease scan reads the few RUNNING rows of its queues and filters), and pages
-- keep free space for new row versions.
CREATE INDEX CONCURRENTLY IF NOT EXISTS workflow_status_running_queue
    ON shardflow.workflow_status (queue) WHERE state = 'RUNNING';

DROP INDEX CONCURRENTLY IF EXISTS shardflow.workflow_status_running;

-- Room on each page for HOT versions, and vacuum that keeps up with a hot table.
-- SET (storage parameters) takes a SHARE UPDATE EXCLUSIVE lock: reads and writes go on.
ALTER TABLE shardflow.workflow_status SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05);

-- Delayed workflows stay out of the claim path. The claim index holds only ENQUEUED
-- rows that are ready (wake_at IS NULL); a delayed one (wake_at in the future) sits in
-- its own index until a worker's promote_delayed clears its wake_at when it is due. A
-- backlog of delayed work no longer makes every claim walk past it.
CREATE INDEX CONCURRENTLY IF NOT EXISTS workflow_status_claim_ready
    ON shardflow.workflow_status (queue, priority DESC, created_at, workflow_id)
    WHERE state = 'ENQUEUED' AND wake_at IS NULL;

CREATE INDEX CONCURRENTLY IF NOT EXISTS workflow_status_delayed
    ON shardflow.workflow_status (wake_at)
    WHERE state = 'ENQUEUED' AND wake_at IS NOT NULL;

DROP INDEX CONCURRENTLY IF EXISTS shardflow.workflow_status_claim;
