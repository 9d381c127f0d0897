-- The live-worker registry (shardflow/engine/registry.py, migration 0005).

-- name: worker_seen
-- One statement per shard per heartbeat: the worker's record, last_seen on the
-- database clock.
INSERT INTO shardflow.workers
    (worker_id, host, pid, version, app, workflows, queues, started_at, last_seen)
VALUES (%(worker_id)s, %(host)s, %(pid)s, %(version)s, %(app)s, %(workflows)s, %(queues)s,
        now(), now())
ON CONFLICT (worker_id) DO UPDATE
SET last_seen = now(), workflows = excluded.workflows, queues = excluded.queues

-- name: worker_gone
DELETE FROM shardflow.workers WHERE worker_id = %(worker_id)s

-- name: workers_purge_stale
DELETE FROM shardflow.workers
WHERE last_seen < coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(seconds)s)

-- name: workers_live
-- Workers seen within the window, newest first; age_seconds on the database clock.
SELECT worker_id, host, pid, version, app, workflows, queues,
       extract(epoch FROM coalesce(%(now)s::timestamptz, now()) - last_seen)::float8 AS age_seconds
FROM shardflow.workers
WHERE last_seen > coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(seconds)s)
ORDER BY last_seen DESC, worker_id

-- name: workers_table_exists
SELECT to_regclass('shardflow.workers') IS NOT NULL

-- name: enqueued_by_name
-- Ready ENQUEUED workflows per (name, queue), for flagging work no live worker can run.
SELECT name, queue, count(*) FROM shardflow.workflow_status
WHERE state = 'ENQUEUED'
GROUP BY name, queue
