-- shardflow: online
-- Indexes for the filters of `list_workflows(...)`, `shardflow workflows list` and the
-- dashboard (docs/dashboard.md). Built CONCURRENTLY, outside a transaction, one statement
-- at a time (see 0004): workers and clients keep running while it applies, and an
-- interrupted run is simply run again.
--
-- A listing is a keyset page, newest first, on (created_at, workflow_id). Filtering by
-- state or by workflow name through the plain created_at index reads every row that does
-- not match before it finds a page of rows that do (all of a large table when few
-- match); with the filter's column first, the page is read straight from the index.
-- Queue filters use the created_at index: a cluster has few queues, so matches are dense.
-- The price: a state change writes one more entry per index (documented in dashboard.md).
CREATE INDEX CONCURRENTLY IF NOT EXISTS workflow_status_state_created
    ON shardflow.workflow_status (state, created_at, workflow_id);

CREATE INDEX CONCURRENTLY IF NOT EXISTS workflow_status_name_created
    ON shardflow.workflow_status (name, created_at, workflow_id);

-- Workflow-ID prefix filters (`LIKE 'prefix%'`, e.g. a hash tag `{tenant-7}`) under any
-- collation: the primary key's ordering follows the database collation, which LIKE
-- cannot use unless it is C.
CREATE INDEX CONCURRENTLY IF NOT EXISTS workflow_status_id_prefix
    ON shardflow.workflow_status (workflow_id text_pattern_ops);
