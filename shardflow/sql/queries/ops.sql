-- Read-only views of one shard for metrics and `shardflow status`
-- (shardflow/engine/metrics.py). Each runs under a short statement timeout.

-- name: ops_queue_depth
-- Active workflows per queue and state. One arm per state so that each is answered
-- from that state's partial index (a single `state IN (...)` would scan the table).
-- ``now`` (NULL: the database's now()) lets tests move the clock.
SELECT queue, 'ENQUEUED' AS state, count(*) AS workflows,
       coalesce(extract(epoch FROM
           coalesce(%(now)s::timestamptz, now()) - min(created_at)), 0)::float8 AS oldest_seconds,
       count(*) FILTER (WHERE wake_at IS NULL OR wake_at <= coalesce(%(now)s::timestamptz, now())) AS due,
       0::bigint AS expired_leases
FROM shardflow.workflow_status WHERE state = 'ENQUEUED' GROUP BY queue
UNION ALL
SELECT queue, 'RUNNING', count(*),
       coalesce(extract(epoch FROM
           coalesce(%(now)s::timestamptz, now()) - min(started_at)), 0)::float8,
       0::bigint,
       count(*) FILTER (WHERE lease_expires_at < coalesce(%(now)s::timestamptz, now()))
FROM shardflow.workflow_status WHERE state = 'RUNNING' GROUP BY queue
UNION ALL
SELECT queue, 'SUSPENDED', count(*),
       coalesce(extract(epoch FROM
           coalesce(%(now)s::timestamptz, now()) - min(updated_at)), 0)::float8,
       count(*) FILTER (WHERE wake_at <= coalesce(%(now)s::timestamptz, now())),
       0::bigint
FROM shardflow.workflow_status WHERE state = 'SUSPENDED' GROUP BY queue
UNION ALL
SELECT queue, 'IMPORTING', count(*), 0::float8, 0::bigint, 0::bigint
FROM shardflow.workflow_status WHERE state = 'IMPORTING' GROUP BY queue

-- name: ops_slot_states
SELECT state, count(*) FROM shardflow.slot_ownership GROUP BY state

-- name: ops_recently_finished
SELECT state, count(*) FROM shardflow.workflow_status
WHERE finished_at > coalesce(%(now)s::timestamptz, now())
                    - make_interval(secs => %(seconds)s)
  AND state IN ('SUCCESS', 'ERROR', 'CANCELLED', 'DEAD')
GROUP BY state

-- name: ops_statement_timeout
SELECT set_config('statement_timeout', %(timeout)s, true)
