-- shardflow: online
-- Fork lineage: the workflow a fork was made from (`cluster.fork`), shown by
-- `workflows get`, `list_workflows(forked_from=...)` and the dashboard. NULL for every
-- workflow that is not a fork, and for forks made before this migration.
-- ADD COLUMN without a default only changes the catalog (no rewrite); the partial index
-- holds forks only, so it costs nothing per ordinary workflow. Online (see 0004): one
-- idempotent statement at a time, the index built CONCURRENTLY.
ALTER TABLE shardflow.workflow_status ADD COLUMN IF NOT EXISTS forked_from text;

CREATE INDEX CONCURRENTLY IF NOT EXISTS workflow_status_forked_from
    ON shardflow.workflow_status (forked_from, created_at, workflow_id)
    WHERE forked_from IS NOT NULL;
