-- shardflow: online
-- Per-key rate limits (`key_rate_limit` in a queue's YAML, docs/queues.md#flow-control):
-- a keyed claim counts each key's first starts in the last period. Only workflows with a
-- partition key that have started are in this index.
CREATE INDEX CONCURRENTLY IF NOT EXISTS workflow_status_started_key
    ON shardflow.workflow_status (queue, partition_key, started_at)
    WHERE partition_key IS NOT NULL AND started_at IS NOT NULL;
