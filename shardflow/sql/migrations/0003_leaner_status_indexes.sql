-- Fewer index entries per workflow state change. A status update that changes `state`
-- cannot be HOT, so every index whose predicate the new row matches gets an entry and
-- WAL: each index removed here saves that on every claim, renewal and finish.

-- Slot scans (the rebalancer) only ever look at live rows or staged copies, which
-- workflow_status_slot_live and workflow_status_importing (0002) serve.
DROP INDEX shardflow.workflow_status_slot;

-- One index for RUNNING rows serves both the per-queue RUNNING count of queue limits and
-- the scan for expired leases (which filters by queue too).
DROP INDEX shardflow.workflow_status_running_queue;
DROP INDEX shardflow.workflow_status_lease;
CREATE INDEX workflow_status_running ON shardflow.workflow_status (queue, lease_expires_at)
    WHERE state = 'RUNNING';
