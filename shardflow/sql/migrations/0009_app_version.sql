-- shardflow: online
-- Code version per workflow: the version of the app that ran the workflow's latest
-- attempt, set by every claim (`App(version=...)`, else the app's package version or a
-- hash of its workflow code; see docs/upgrades.md). Listed and filtered by
-- `list_workflows(app_version=...)` and `shardflow workflows list --app-version`. NULL
-- for workflows never claimed, and for those last claimed before this migration.
-- ADD COLUMN without a default only changes the catalog (no rewrite). No index: nearly
-- every row has a version, so an index would cost every claim a write; a filtered
-- listing walks the (created_at, workflow_id) index as it does for the other filters.
ALTER TABLE shardflow.workflow_status ADD COLUMN IF NOT EXISTS app_version text;
