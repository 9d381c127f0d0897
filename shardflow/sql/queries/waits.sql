-- Durable waits: suspend and wake, messages, events, timeouts, fork.

-- name: lock_run
-- Lock a run's status row; a second statement then sees everything committed before.
SELECT state, attempt FROM shardflow.workflow_status
WHERE workflow_id = %(workflow_id)s FOR UPDATE

-- name: suspend_workflow
-- Give up the thread and the lease for delay_seconds (or until woken), on this server's
-- clock: the one claim_wakeable fires it with. A message already waiting wakes it at once.
UPDATE shardflow.workflow_status
SET state = 'SUSPENDED', lease_owner = NULL, lease_expires_at = NULL,
    wait_for = %(wait_for)s, updated_at = now(),
    wake_at = CASE
        WHEN %(topic)s::text IS NOT NULL AND EXISTS (
            SELECT 1 FROM shardflow.messages m
            WHERE m.workflow_id = %(workflow_id)s AND m.topic = %(topic)s AND NOT m.consumed)
        THEN now()
        WHEN %(delay_seconds)s::float8 IS NULL THEN NULL
        ELSE now() + make_interval(secs => %(delay_seconds)s::float8) END
WHERE workflow_id = %(workflow_id)s AND attempt = %(attempt)s AND state = 'RUNNING'
RETURNING workflow_id

-- name: claim_wakeable
WITH picked AS (
    SELECT workflow_id FROM shardflow.workflow_status
    WHERE state = 'SUSPENDED' AND wake_at <= coalesce(%(now)s::timestamptz, now()) AND name = ANY(%(names)s)
      AND queue = ANY(%(queues)s)
    ORDER BY wake_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE shardflow.workflow_status AS w
SET state = 'RUNNING', attempt = w.attempt + 1, lease_owner = %(owner)s,
    lease_expires_at = coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(lease_seconds)s),
    wake_at = NULL, wait_for = NULL, updated_at = now(), app_version = %(app_version)s::text
FROM picked WHERE w.workflow_id = picked.workflow_id
RETURNING w.workflow_id, w.name, w.queue, w.inputs, w.attempt, w.recoveries,
          w.parent_id, w.state, extract(epoch FROM clock_timestamp()) AS db_epoch,
          w.slot, w.trace_context

-- name: wake_workflow
-- Wake a suspended workflow now (a message arrived, a child finished). The notification's
-- payload is the queue and ' due' (a space is not allowed in a queue name): a worker then
-- looks for due wake-ups, which it skips for plain new work (payload: the queue).
WITH woken AS (
    UPDATE shardflow.workflow_status
    SET wake_at = now(), updated_at = now()
    WHERE workflow_id = %(workflow_id)s AND state = 'SUSPENDED'
      AND (%(wait_for)s::text IS NULL OR wait_for = %(wait_for)s)
    RETURNING workflow_id, queue
)
SELECT workflow_id, pg_notify('shardflow_work', queue || ' due') FROM woken

-- name: wake_staged_copy
-- A message for a staged copy (between steps 3 and 4 of its move: the source holds the
-- tombstone, the copy is not active yet) that waits for it: the copy keeps this wake-up
-- when it is activated. Writing the row (not only locking it) also makes an activation
-- that was already waiting on the row re-read it (EvalPlanQual) and see wake_at.
UPDATE shardflow.workflow_status
SET wake_at = now(), updated_at = now()
WHERE workflow_id = %(workflow_id)s AND state = 'IMPORTING' AND import_state = 'SUSPENDED'
  AND wait_for = %(wait_for)s
RETURNING workflow_id

-- name: lock_target
-- Every write aimed at a workflow locks its row and checks its state first.
SELECT state, moved_to, queue FROM shardflow.workflow_status
WHERE workflow_id = %(workflow_id)s FOR UPDATE

-- name: insert_message
INSERT INTO shardflow.messages (workflow_id, topic, message_id, payload)
VALUES (%(workflow_id)s, %(topic)s, %(message_id)s, %(payload)s)
ON CONFLICT (workflow_id, message_id) DO NOTHING
RETURNING seq

-- name: notify_message
SELECT pg_notify('shardflow_message', %(workflow_id)s)

-- name: next_message
SELECT seq, payload FROM shardflow.messages
WHERE workflow_id = %(workflow_id)s AND topic = %(topic)s AND NOT consumed
ORDER BY seq LIMIT 1
FOR UPDATE

-- name: consume_message
UPDATE shardflow.messages SET consumed = true
WHERE workflow_id = %(workflow_id)s AND seq = %(seq)s

-- name: upsert_event
INSERT INTO shardflow.events (workflow_id, key, value) VALUES (%(workflow_id)s, %(key)s, %(value)s)
ON CONFLICT (workflow_id, key) DO UPDATE SET value = excluded.value, updated_at = now()

-- name: notify_event
-- Wakes the clients waiting in get_event (sent at commit, after upsert_event).
SELECT pg_notify('shardflow_event', CASE WHEN octet_length(%(workflow_id)s::text) < 7900
                                         THEN %(workflow_id)s::text ELSE '' END)

-- name: get_event
SELECT value FROM shardflow.events WHERE workflow_id = %(workflow_id)s AND key = %(key)s

-- name: expire_deadlines
-- Timeouts: cancel active workflows past their deadline; their workers hear it.
WITH expired AS (
    UPDATE shardflow.workflow_status
    SET state = 'CANCELLED', reason = 'timeout', lease_owner = NULL, lease_expires_at = NULL,
        finished_at = now(), updated_at = now()
    WHERE workflow_id IN (
        SELECT workflow_id FROM shardflow.workflow_status
        WHERE deadline < coalesce(%(now)s::timestamptz, now()) AND state IN ('ENQUEUED', 'RUNNING', 'SUSPENDED')
        LIMIT 1000 FOR UPDATE SKIP LOCKED)
    RETURNING workflow_id
)
SELECT workflow_id, pg_notify('shardflow_cancel', workflow_id) FROM expired

-- name: child_ids
SELECT output FROM shardflow.step_outputs
WHERE workflow_id = %(workflow_id)s AND name = 'shardflow.start_child' AND output IS NOT NULL

-- name: insert_fork
-- A fork starts at attempt 1 so that its first claim (attempt 2) loads the copied steps.
-- Only in an OWNED slot: in a slot being imported the ID would have to be looked up on
-- the source first, so the client waits for the move to finish instead. The ownership
-- row is locked FOR SHARE until the fork's transaction (with its steps) commits, so a
-- slot transition waits for it; see insert_workflows for why.
WITH held AS MATERIALIZED (
    SELECT o.slot FROM shardflow.slot_ownership o
    WHERE o.slot = %(slot)s AND o.state = 'OWNED'
    FOR SHARE
)
INSERT INTO shardflow.workflow_status (
    workflow_id, slot, route_hash, name, queue, state, priority, inputs, attempt, parent_id,
    forked_from, trace_context)
SELECT %(workflow_id)s, %(slot)s, %(route_hash)s, %(name)s, %(queue)s, 'ENQUEUED',
       %(priority)s, %(inputs)s, 1, NULL, %(forked_from)s, %(trace_context)s::jsonb
FROM held
ON CONFLICT (workflow_id) DO NOTHING
RETURNING workflow_id

-- name: insert_steps
INSERT INTO shardflow.step_outputs (workflow_id, step_no, name, output, error)
SELECT %(workflow_id)s, s.step_no, s.name, s.output, s.error
FROM unnest(%(step_nos)s::integer[], %(names)s::text[], %(outputs)s::text[],
            %(errors)s::jsonb[]) AS s(step_no, name, output, error)
ON CONFLICT (workflow_id, step_no) DO NOTHING

-- name: fork_source
SELECT name, queue, priority, inputs FROM shardflow.workflow_status
WHERE workflow_id = %(workflow_id)s
