-- Retention: finished workflows older than `retention.keep_finished_days` are deleted by
-- one leader per shard, a small batch per transaction (see shardflow/engine/retention.py).

-- name: retention_try_lead
-- Session-level: held for as long as the leader's connection lives. A leader that dies
-- or loses its connection frees the shard for another worker's leader.
SELECT pg_try_advisory_lock(hashtext('shardflow.retention')) AS leading

-- name: retention_resign
-- Give the shard up now, so that another worker's leader can take it at its next try
-- (closing the connection frees the lock too, but only once the server notices).
SELECT pg_advisory_unlock(hashtext('shardflow.retention'))

-- name: retention_delete_batch
-- One batch: the oldest finished workflows past the cutoff, with their steps, messages
-- and events, in one transaction. Rows another transaction holds (the rebalancer moving
-- one, a resume) are skipped, never waited for; tombstones (MOVED) and staged copies
-- (IMPORTING) are the rebalancer's and never match. Returns the number of workflows
-- deleted and the deleted values that were blob references (claim checks), which the
-- leader removes from the blob store after this commits.
WITH doomed AS (
    SELECT workflow_id FROM shardflow.workflow_status
    WHERE finished_at < coalesce(%(now)s::timestamptz, now())
                        - make_interval(secs => %(keep_seconds)s)
      AND state IN ('SUCCESS', 'ERROR', 'CANCELLED', 'DEAD')
    ORDER BY finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), steps AS (
    DELETE FROM shardflow.step_outputs s USING doomed d
    WHERE s.workflow_id = d.workflow_id
    RETURNING s.output AS value
), inbox AS (
    DELETE FROM shardflow.messages m USING doomed d
    WHERE m.workflow_id = d.workflow_id
    RETURNING m.payload AS value
), published AS (
    DELETE FROM shardflow.events e USING doomed d
    WHERE e.workflow_id = d.workflow_id
    RETURNING e.value
), deleted AS (
    DELETE FROM shardflow.workflow_status w USING doomed d
    WHERE w.workflow_id = d.workflow_id
    RETURNING w.inputs, w.output
)
SELECT (SELECT count(*) FROM deleted) AS workflows,
       ARRAY(
           SELECT v FROM (
               SELECT inputs FROM deleted
               UNION ALL SELECT output FROM deleted
               UNION ALL SELECT value FROM steps
               UNION ALL SELECT value FROM inbox
               UNION ALL SELECT value FROM published) AS t(v)
           WHERE starts_with(v, chr(30))
       ) AS blob_refs
