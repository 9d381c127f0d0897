-- Queue leases: queue-wide concurrency, on a queue's home shard (migration 0012,
-- docs/queues.md#concurrency). Every statement takes `now` (None: the database clock).

-- name: lock_queue_leases
-- Serializes the takes of one queue's leases on its home shard, from every worker.
SELECT pg_advisory_xact_lock(hashtext('shardflow.queue_leases'), hashtext(%(queue)s))

-- name: take_queue_leases
-- Under lock_queue_leases: purge the queue's expired leases, then take up to `want` of
-- the `limit` minus the live ones. Returns the leases taken.
WITH purged AS (
    DELETE FROM shardflow.queue_leases
    WHERE queue = %(queue)s AND expires_at <= coalesce(%(now)s::timestamptz, now())
), live AS (
    SELECT count(*) AS n FROM shardflow.queue_leases
    WHERE queue = %(queue)s AND expires_at > coalesce(%(now)s::timestamptz, now())
)
INSERT INTO shardflow.queue_leases (lease_id, queue, owner, taken_at, expires_at)
SELECT gen_random_uuid(), %(queue)s, %(owner)s, coalesce(%(now)s::timestamptz, now()),
       coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(lease_seconds)s)
FROM live, generate_series(1, least(%(want)s::bigint, %(limit)s::bigint - live.n))
RETURNING lease_id::text

-- name: renew_queue_leases
-- One statement per home shard per heartbeat. A lease that expired is never renewed:
-- another claim may have counted it free. Leases missing from the result are lost.
UPDATE shardflow.queue_leases
SET expires_at = coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(lease_seconds)s)
WHERE lease_id = ANY(%(lease_ids)s::uuid[])
  AND expires_at > coalesce(%(now)s::timestamptz, now())
RETURNING lease_id::text

-- name: release_queue_leases
DELETE FROM shardflow.queue_leases WHERE lease_id = ANY(%(lease_ids)s::uuid[])

-- name: queue_leases_live
-- The live leases of each queue homed here (metrics, tests).
SELECT queue, count(*) AS n FROM shardflow.queue_leases
WHERE expires_at > coalesce(%(now)s::timestamptz, now())
GROUP BY queue
