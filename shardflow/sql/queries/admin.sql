-- Filtered listing, bulk actions and the dashboard's read-only views of one shard
-- (shardflow/engine/store/admin.py). The filter parameters are those of
-- WorkflowFilter.sql_params() (shardflow/engine/filters.py); a NULL parameter means
-- "any". These statements run unprepared (a custom plan per call), so the planner sees
-- which filters are set and picks the index for them (migration 0007).

-- fragment: workflow_filter
-- The conditions of a WorkflowFilter (a NULL parameter: any), after a WHERE condition.
  AND (%(state)s::text IS NULL OR state = %(state)s)
  AND (%(name)s::text IS NULL OR name = %(name)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(id_like)s::text IS NULL OR workflow_id LIKE %(id_like)s)
  AND (%(created_after)s::timestamptz IS NULL OR created_at >= %(created_after)s)
  AND (%(created_before)s::timestamptz IS NULL OR created_at < %(created_before)s)
  AND (%(parent_id)s::text IS NULL OR parent_id = %(parent_id)s)
  AND (%(forked_from)s::text IS NULL OR forked_from = %(forked_from)s)
  AND (%(app_version)s::text IS NULL OR app_version = %(app_version)s)

-- name: admin_list_workflows
-- One page of one shard, newest first; the client merges the shards' pages.
SELECT workflow_id, name, queue, state, priority, attempt, recoveries, output, error,
       reason, created_at, updated_at, started_at, finished_at, parent_id, forked_from, dedup_key,
       moved_to, deadline, lease_owner, app_version
FROM shardflow.workflow_status
WHERE state NOT IN ('MOVED', 'IMPORTING')
  -- include: workflow_filter
  AND (%(after_created)s::timestamptz IS NULL
       OR (created_at, workflow_id) < (%(after_created)s, %(after_id)s::text))
ORDER BY created_at DESC, workflow_id DESC
LIMIT %(limit)s

-- name: admin_count_matching
-- How many workflows of this shard match the filter and are in one of %(states)s (the
-- states an action applies to): the dry run of a bulk action.
SELECT count(*) FROM shardflow.workflow_status
WHERE state = ANY(%(states)s::text[])
  -- include: workflow_filter

-- name: admin_cancel_matching
-- Cancel up to %(batch)s matching active workflows, as cancel_workflow does one: the
-- rows are locked in ID order (two bulk actions never deadlock), the update re-checks
-- the state on the locked row, and each workflow's worker hears the notification.
-- Returns, per workflow, whether it has a parent to wake and children to cancel.
WITH picked AS (
    SELECT workflow_id FROM shardflow.workflow_status
    WHERE state IN ('ENQUEUED', 'RUNNING', 'SUSPENDED')
      -- include: workflow_filter
    ORDER BY workflow_id
    LIMIT %(batch)s
    FOR UPDATE
), cancelled AS (
    UPDATE shardflow.workflow_status AS w
    SET state = 'CANCELLED', reason = %(reason)s, lease_owner = NULL, lease_expires_at = NULL,
        finished_at = now(), updated_at = now()
    FROM picked
    WHERE w.workflow_id = picked.workflow_id AND w.state IN ('ENQUEUED', 'RUNNING', 'SUSPENDED')
    RETURNING w.workflow_id, w.parent_id
)
SELECT c.workflow_id, c.parent_id,
       EXISTS (SELECT 1 FROM shardflow.step_outputs s
               WHERE s.workflow_id = c.workflow_id AND s.name = 'shardflow.start_child')
           AS has_children,
       pg_notify('shardflow_cancel', c.workflow_id) AS notified
FROM cancelled c

-- name: admin_resume_matching
-- Resume up to %(batch)s matching CANCELLED, ERROR or DEAD workflows, as
-- resume_workflow and drop_failed_last_step do one (the step whose error ended the
-- workflow runs again).
WITH picked AS (
    SELECT workflow_id FROM shardflow.workflow_status
    WHERE state IN ('CANCELLED', 'ERROR', 'DEAD')
      -- include: workflow_filter
    ORDER BY workflow_id
    LIMIT %(batch)s
    FOR UPDATE
), resumed AS (
    UPDATE shardflow.workflow_status AS w
    SET state = 'ENQUEUED', reason = NULL, error = NULL, output = NULL, recoveries = 0,
        lease_owner = NULL, lease_expires_at = NULL, wake_at = NULL, finished_at = NULL,
        deadline = NULL, debounce_key = NULL, updated_at = now()
    FROM picked
    WHERE w.workflow_id = picked.workflow_id AND w.state IN ('CANCELLED', 'ERROR', 'DEAD')
    RETURNING w.workflow_id, w.queue
), dropped AS (
    DELETE FROM shardflow.step_outputs s
    USING resumed r
    WHERE s.workflow_id = r.workflow_id AND s.error IS NOT NULL
      AND s.step_no = (SELECT max(step_no) FROM shardflow.step_outputs m
                       WHERE m.workflow_id = r.workflow_id)
)
SELECT workflow_id, pg_notify('shardflow_work', queue) AS notified FROM resumed

-- name: admin_shard_info
-- The server's version, this shard's copy of the map epoch, the slots it owns and the
-- workflows that ended in the last %(seconds)s seconds (the finished_at index).
SELECT current_setting('server_version') AS server_version,
       (SELECT epoch FROM shardflow.slot_map) AS map_epoch,
       (SELECT count(*) FROM shardflow.slot_ownership WHERE state = 'OWNED') AS owned_slots,
       (SELECT count(*) FROM shardflow.workflow_status
        WHERE finished_at > now() - make_interval(secs => %(seconds)s)
          AND state IN ('SUCCESS', 'ERROR', 'CANCELLED', 'DEAD')) AS finished_recently

-- name: admin_state_counts
-- Exact counts of the given states, each read from the (state, created_at, workflow_id)
-- index (0007), index-only where pages are all-visible. SUCCESS, usually most of the
-- table, is left to admin_row_estimate: counting it exactly reads every row.
SELECT s.state,
       (SELECT count(*) FROM shardflow.workflow_status w WHERE w.state = s.state) AS workflows
FROM unnest(%(states)s::text[]) AS s(state)

-- name: admin_success_bounded
-- SUCCESS workflows counted exactly up to %(cap)s (index-only on the state index where
-- pages are all-visible): exact on a small shard, a bounded read on a large one, which
-- then shows the estimate instead.
SELECT count(*) FROM (
    SELECT 1 FROM shardflow.workflow_status WHERE state = 'SUCCESS' LIMIT %(cap)s
) AS bounded

-- name: admin_row_estimate
-- The planner's row count of workflow_status (kept by autovacuum and ANALYZE).
SELECT greatest(reltuples, 0)::bigint AS rows FROM pg_class
WHERE oid = to_regclass('shardflow.workflow_status')

-- name: admin_queue_ready
-- Per queue: ENQUEUED workflows that are ready to run and the age of the oldest, from
-- the claim index (index-only); delayed ones are counted apart (admin_delayed).
SELECT queue, count(*) AS ready,
       extract(epoch FROM now() - min(created_at))::float8 AS oldest_ready_seconds
FROM shardflow.workflow_status
WHERE state = 'ENQUEUED' AND wake_at IS NULL
GROUP BY queue

-- name: admin_delayed
SELECT count(*) AS delayed FROM shardflow.workflow_status
WHERE state = 'ENQUEUED' AND wake_at IS NOT NULL

-- name: admin_queue_running
SELECT queue, count(*) AS running,
       count(*) FILTER (WHERE lease_expires_at < now()) AS expired_leases
FROM shardflow.workflow_status WHERE state = 'RUNNING'
GROUP BY queue

-- name: admin_latest_plan
SELECT plan_id, target, moves, created_at, finished_at, outcome
FROM shardflow.rebalance_plans ORDER BY created_at DESC LIMIT 1

-- name: admin_failures
-- Recent ERROR and DEAD workflows by workflow name and error type, with the newest one
-- of each group.
SELECT name, state, coalesce(error->>'type', CASE WHEN state = 'DEAD' THEN 'DeadLettered'
                                             ELSE 'Error' END) AS error_type,
       count(*) AS count, max(finished_at) AS last_at,
       (array_agg(workflow_id ORDER BY finished_at DESC, workflow_id DESC))[1] AS example_id,
       (array_agg(coalesce(error->>'message', reason, '')
                  ORDER BY finished_at DESC, workflow_id DESC))[1] AS example_message
FROM shardflow.workflow_status
WHERE finished_at > now() - make_interval(secs => %(seconds)s)
  AND state IN ('ERROR', 'DEAD')
GROUP BY name, state, error_type
ORDER BY count(*) DESC, name
LIMIT %(limit)s

-- name: admin_workflow_extra
-- What the workflow page shows beyond WorkflowStatus: the stored (raw) inputs and
-- output, so a claim-check reference is shown as such and not fetched, and the waits.
SELECT inputs, output, wait_for, wake_at, lease_expires_at, slot
FROM shardflow.workflow_status WHERE workflow_id = %(workflow_id)s

-- name: admin_messages
SELECT seq, topic, message_id, left(payload, %(max_chars)s) AS payload,
       length(payload) AS size, consumed, created_at
FROM shardflow.messages WHERE workflow_id = %(workflow_id)s
ORDER BY seq LIMIT %(limit)s

-- name: admin_events
SELECT key, left(value, %(max_chars)s) AS value, length(value) AS size, updated_at
FROM shardflow.events WHERE workflow_id = %(workflow_id)s
ORDER BY key LIMIT %(limit)s

-- name: admin_steps
-- A workflow's steps with their stored output text (a claim-check reference stays one).
SELECT step_no, name, left(output, %(max_chars)s) AS output,
       coalesce(length(output), 0) AS size, error, started_at, duration_ms, attempt
FROM shardflow.step_outputs WHERE workflow_id = %(workflow_id)s
ORDER BY step_no LIMIT %(limit)s
