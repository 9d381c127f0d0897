-- The rebalancer: slot transitions, the map copy, the recorded plan, and the per-workflow
-- move protocol (lock -> stage -> tombstone -> activate). Run only by
-- shardflow.rebalance.mover; docs/rebalancing.md explains each step and its crash cases.

-- name: rebalance_try_lock
-- One rebalancer per cluster: a session lock on every shard, released when the process
-- dies (its connections close), so a killed run never blocks the next one for long.
SELECT pg_try_advisory_lock(hashtext('shardflow.rebalance'))

-- name: put_slot_map_full
-- Keep the newer copy: a map with a lower epoch never replaces a higher one.
INSERT INTO shardflow.slot_map (epoch, ranges, migrating)
VALUES (%(epoch)s, %(ranges)s, %(migrating)s)
ON CONFLICT (singleton) DO UPDATE
    SET epoch = excluded.epoch, ranges = excluded.ranges, migrating = excluded.migrating,
        updated_at = now()
    WHERE shardflow.slot_map.epoch < excluded.epoch

-- Slot transitions and inserts (docs/rebalancing.md, "Inserts and slot transitions"):
-- every insert of a workflow holds its slot_ownership row FOR SHARE until it commits
-- (insert_workflows, insert_fork); every transition below writes those rows, so it waits
-- for the inserts in flight, and inserts that come later see the new state. Both sides
-- take the rows in slot order, so an insert of many slots and a transition of many slots
-- cannot each hold a row the other waits for.

-- name: mark_importing
-- Step 0, on the target first. Idempotent: a slot already IMPORTING from the same peer
-- is left as it is.
INSERT INTO shardflow.slot_ownership (slot, state, peer, epoch)
SELECT s, 'IMPORTING', %(peer)s, %(epoch)s FROM unnest(%(slots)s::integer[]) AS s
ORDER BY s
ON CONFLICT (slot) DO UPDATE SET updated_at = now()
    WHERE shardflow.slot_ownership.state = 'IMPORTING'
      AND shardflow.slot_ownership.peer = excluded.peer
RETURNING slot

-- name: mark_migrating_out
-- Step 0, on the source second: from this commit on it refuses new IDs for these slots.
-- Waits for the inserts that hold these rows (they committed their workflows as OWNED
-- ones, and the moves that follow see them); inserts after it find MIGRATING_OUT.
WITH locked AS MATERIALIZED (
    SELECT slot FROM shardflow.slot_ownership WHERE slot = ANY(%(slots)s)
    ORDER BY slot FOR UPDATE
)
UPDATE shardflow.slot_ownership AS o
SET state = 'MIGRATING_OUT', peer = %(peer)s, epoch = %(epoch)s, updated_at = now()
FROM locked
WHERE o.slot = locked.slot
  AND (o.state = 'OWNED' OR (o.state = 'MIGRATING_OUT' AND o.peer = %(peer)s))
RETURNING o.slot

-- name: mark_owned
-- Finalize, on the target first (in slot order, like every transition).
WITH locked AS MATERIALIZED (
    SELECT slot FROM shardflow.slot_ownership WHERE slot = ANY(%(slots)s)
    ORDER BY slot FOR UPDATE
)
UPDATE shardflow.slot_ownership AS o
SET state = 'OWNED', peer = NULL, epoch = %(epoch)s, updated_at = now()
FROM locked
WHERE o.slot = locked.slot AND o.state = 'IMPORTING'
RETURNING o.slot

-- name: drop_migrated_slots
-- Finalize, on the source second: only tombstones are left there (checked after
-- MIGRATING_OUT committed, which no insert relying on OWNED outlives).
WITH locked AS MATERIALIZED (
    SELECT slot FROM shardflow.slot_ownership WHERE slot = ANY(%(slots)s)
    ORDER BY slot FOR UPDATE
)
DELETE FROM shardflow.slot_ownership AS o
USING locked
WHERE o.slot = locked.slot AND o.state = 'MIGRATING_OUT'
RETURNING o.slot

-- name: record_plan
INSERT INTO shardflow.rebalance_plans (plan_id, base_epoch, target, moves, created_at)
VALUES (%(plan_id)s, %(base_epoch)s, %(target)s, %(moves)s, %(created_at)s)
ON CONFLICT (plan_id) DO NOTHING

-- name: list_plans
SELECT plan_id, base_epoch, target, moves, created_at, finished_at, outcome
FROM shardflow.rebalance_plans ORDER BY created_at DESC LIMIT %(limit)s

-- name: finish_plan
INSERT INTO shardflow.rebalance_plans
    (plan_id, base_epoch, target, moves, created_at, finished_at, outcome)
VALUES (%(plan_id)s, %(base_epoch)s, %(target)s, %(moves)s, %(created_at)s, now(),
        %(outcome)s)
ON CONFLICT (plan_id) DO UPDATE SET finished_at = now(), outcome = excluded.outcome
    WHERE shardflow.rebalance_plans.finished_at IS NULL

-- name: workflows_in_slots
-- What a plan touches on its source: live rows of the slots, by state.
SELECT state, count(*) FROM shardflow.workflow_status
WHERE slot = ANY(%(slots)s) AND state <> 'MOVED'
GROUP BY state

-- name: rebalance_row_counts
SELECT
    count(*) FILTER (WHERE state = 'IMPORTING') AS staged,
    count(*) FILTER (WHERE state = 'MOVED') AS tombstones,
    count(*) FILTER (WHERE state = 'MOVED'
                     AND updated_at < now() - make_interval(secs => %(grace_seconds)s))
        AS purgeable
FROM shardflow.workflow_status
WHERE state IN ('IMPORTING', 'MOVED')

-- name: live_rows_by_slot
-- Per slot still holding live rows on the source: how many, and how many are RUNNING
-- (those wait; the slot stays split until they are idle).
SELECT slot, count(*), count(*) FILTER (WHERE state = 'RUNNING')
FROM shardflow.workflow_status
WHERE slot = ANY(%(slots)s) AND state <> 'MOVED'
GROUP BY slot

-- name: staged_slots
SELECT DISTINCT slot FROM shardflow.workflow_status
WHERE slot = ANY(%(slots)s) AND state = 'IMPORTING'

-- name: lock_idle_workflows
-- Step 1, on the source, in the transaction that step 3 commits: lock idle workflows of
-- the slots. SKIP LOCKED is the batched form of NOWAIT: a row someone holds (a claim, a
-- send, a cancel) is skipped now and tried in a later batch. With each ID, about how
-- many bytes the workflow is as JSON (its status row, steps, messages and events), so
-- the mover can bound a batch by size as well as by count. octet_length() of a text
-- column reads its TOAST header, not the value; pg_column_size() of jsonb is its stored
-- size (errors are small).
WITH locked AS (
    SELECT w.workflow_id,
           512 + octet_length(w.inputs) + coalesce(octet_length(w.output), 0)
               + coalesce(pg_column_size(w.error), 0) AS bytes
    FROM shardflow.workflow_status w
    WHERE w.slot = ANY(%(slots)s) AND w.state NOT IN ('RUNNING', 'MOVED', 'IMPORTING')
      AND NOT (w.workflow_id = ANY(%(exclude)s::text[]))
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
SELECT l.workflow_id,
       l.bytes
       + coalesce((SELECT sum(128 + coalesce(octet_length(s.output), 0)
                              + coalesce(pg_column_size(s.error), 0))
                   FROM shardflow.step_outputs s WHERE s.workflow_id = l.workflow_id), 0)
       + coalesce((SELECT sum(128 + octet_length(m.payload))
                   FROM shardflow.messages m WHERE m.workflow_id = l.workflow_id), 0)
       + coalesce((SELECT sum(128 + octet_length(e.value))
                   FROM shardflow.events e WHERE e.workflow_id = l.workflow_id), 0)
FROM locked l

-- Steps 1-2 copy rows as JSON text (to_json, so a column added by a later migration
-- moves without changes here), one row per result row, through a server-side cursor:
-- the mover groups them into pages of bounded size, one staging statement per page.
-- Nothing is aggregated into one value, so no batch and no workflow is too large to
-- move (a jsonb value holds at most 256 MB; a json/text value up to 1 GB, and every row
-- here is far below that). Nobody can add child rows to the locked workflows meanwhile:
-- every write aimed at a workflow locks its status row first.

-- name: status_rows
SELECT to_json(w)::text FROM shardflow.workflow_status w WHERE w.workflow_id = ANY(%(ids)s)

-- name: step_rows
SELECT to_json(s)::text FROM shardflow.step_outputs s WHERE s.workflow_id = ANY(%(ids)s)

-- name: message_rows
-- In the source's order: the target hands out fresh sequence numbers in this order.
SELECT to_json(m)::text FROM shardflow.messages m WHERE m.workflow_id = ANY(%(ids)s)
ORDER BY m.workflow_id, m.seq

-- name: event_rows
SELECT to_json(e)::text FROM shardflow.events e WHERE e.workflow_id = ANY(%(ids)s)

-- name: clear_tombstones_for_staging
-- A workflow moving back to a shard it once left meets its own old tombstone there; the
-- staged copy replaces it (same transaction, so no insert can slip in between).
DELETE FROM shardflow.workflow_status
WHERE workflow_id = ANY(%(ids)s) AND state = 'MOVED'

-- name: stage_workflows
-- Step 2, on the target, one page of status rows at a time: non-runnable copies
-- (IMPORTING) carrying their real state in import_state. The copied record is the base;
-- the few fields the move sets override it.
INSERT INTO shardflow.workflow_status
SELECT r.* FROM json_array_elements(%(rows)s::json) AS e(value),
    LATERAL jsonb_populate_record(
        json_populate_record(NULL::shardflow.workflow_status, e.value),
        jsonb_build_object(
            'state', 'IMPORTING', 'import_state', e.value ->> 'state',
            'move_id', %(move_id)s::text, 'moved_from', %(source)s::text, 'moved_to', NULL,
            'lease_owner', NULL, 'lease_expires_at', NULL)) AS r
ON CONFLICT (workflow_id) DO NOTHING
RETURNING workflow_id

-- name: stage_steps
INSERT INTO shardflow.step_outputs
SELECT r.* FROM json_populate_recordset(NULL::shardflow.step_outputs, %(rows)s::json) AS r
WHERE r.workflow_id = ANY(%(ids)s)
ON CONFLICT DO NOTHING

-- name: stage_messages
-- Messages get fresh sequence numbers from the target, handed out in the source's order
-- (pages come in that order too), so per-topic order holds and later messages sort
-- after them.
WITH src AS (
    SELECT r AS msg, row_number() OVER (ORDER BY r.workflow_id, r.seq) AS rn
    FROM json_populate_recordset(NULL::shardflow.messages, %(rows)s::json) AS r
    WHERE r.workflow_id = ANY(%(ids)s)
), fresh AS (
    SELECT v, row_number() OVER (ORDER BY v) AS rn
    FROM (SELECT nextval(pg_get_serial_sequence('shardflow.messages', 'seq')) AS v
          FROM src) AS drawn
)
INSERT INTO shardflow.messages OVERRIDING SYSTEM VALUE
SELECT m.* FROM src JOIN fresh USING (rn),
    LATERAL jsonb_populate_record(src.msg, jsonb_build_object('seq', fresh.v)) AS m
ON CONFLICT DO NOTHING

-- name: stage_events
INSERT INTO shardflow.events
SELECT r.* FROM json_populate_recordset(NULL::shardflow.events, %(rows)s::json) AS r
WHERE r.workflow_id = ANY(%(ids)s)
ON CONFLICT DO NOTHING

-- name: tombstone_workflows
-- Step 3, on the source, in the transaction that locked the rows: the decision point.
-- The row stays (as a tombstone) so that a concurrent INSERT ... ON CONFLICT of the
-- same ID finds it and does nothing.
UPDATE shardflow.workflow_status
SET state = 'MOVED', moved_to = %(target)s, move_id = %(move_id)s, import_state = NULL,
    lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
WHERE workflow_id = ANY(%(ids)s) AND state NOT IN ('RUNNING', 'MOVED', 'IMPORTING')
RETURNING workflow_id

-- name: delete_child_rows
WITH steps AS (
    DELETE FROM shardflow.step_outputs WHERE workflow_id = ANY(%(ids)s)
), messages AS (
    DELETE FROM shardflow.messages WHERE workflow_id = ANY(%(ids)s)
)
DELETE FROM shardflow.events WHERE workflow_id = ANY(%(ids)s)

-- name: lock_staged_copies
-- Step 4 begins by locking the copies (in ID order) and waiting for the writes aimed at
-- them that are in flight: a send locks the copy's row before it inserts a message.
-- activate_copies then runs as the next statement of the same transaction, so its
-- snapshot (READ COMMITTED: one per statement) holds every message sent so far, and no
-- send can add one before it commits. In one statement, the check for waiting messages
-- would use a snapshot taken before the wait for the row lock: a message committed
-- meanwhile was missed and a recv() without a timeout slept for ever.
SELECT workflow_id FROM shardflow.workflow_status
WHERE workflow_id = ANY(%(ids)s) AND state = 'IMPORTING'
ORDER BY workflow_id
FOR UPDATE

-- name: activate_copies
-- Step 4, on the target, after lock_staged_copies in the same transaction: the copies
-- take their real state. Idempotent (only IMPORTING rows of the given move change). A
-- suspended workflow whose wake-up may have been missed while it was in transit (a
-- message arrived, a child finished) is woken; a spurious wake-up only costs a replay.
-- A send that reached the copy itself set its wake_at (wake_staged_copy), kept here.
WITH activated AS (
    UPDATE shardflow.workflow_status AS w
    SET state = w.import_state, import_state = NULL, updated_at = now(),
        dedup_key = CASE WHEN %(clear_dedup)s THEN NULL ELSE w.dedup_key END,
        wake_at = CASE
            WHEN w.import_state = 'SUSPENDED' AND (
                w.wait_for = 'child'
                OR (w.wait_for LIKE 'message:%%' AND EXISTS (
                    SELECT 1 FROM shardflow.messages m
                    WHERE m.workflow_id = w.workflow_id AND NOT m.consumed
                      AND m.topic = substr(w.wait_for, 9))))
            THEN now() ELSE w.wake_at END
    FROM unnest(%(ids)s::text[], %(move_ids)s::uuid[]) AS t(workflow_id, move_id)
    WHERE w.workflow_id = t.workflow_id AND w.move_id = t.move_id AND w.state = 'IMPORTING'
    RETURNING w.workflow_id, w.queue
)
-- ' due': an activated copy may be a suspended workflow whose wake-up is due.
SELECT workflow_id, pg_notify('shardflow_work', queue || ' due') FROM activated

-- name: discard_copies
-- Recovery: a staged copy whose move was never decided goes, with its child rows.
WITH gone AS (
    DELETE FROM shardflow.workflow_status AS w
    USING unnest(%(ids)s::text[], %(move_ids)s::uuid[]) AS t(workflow_id, move_id)
    WHERE w.workflow_id = t.workflow_id AND w.move_id = t.move_id AND w.state = 'IMPORTING'
    RETURNING w.workflow_id
), steps AS (
    DELETE FROM shardflow.step_outputs WHERE workflow_id IN (SELECT workflow_id FROM gone)
), messages AS (
    DELETE FROM shardflow.messages WHERE workflow_id IN (SELECT workflow_id FROM gone)
), events AS (
    DELETE FROM shardflow.events WHERE workflow_id IN (SELECT workflow_id FROM gone)
)
SELECT workflow_id FROM gone

-- name: staged_copies
-- Staged copies of some slots (NULL: all), with the move and the source to ask.
SELECT workflow_id, move_id, moved_from FROM shardflow.workflow_status
WHERE state = 'IMPORTING' AND (%(slots)s::integer[] IS NULL OR slot = ANY(%(slots)s))
LIMIT %(limit)s

-- name: source_rows_for_recovery
-- The source's verdict on staged copies. The share lock makes it final (no transaction
-- is writing the row meanwhile). SKIP LOCKED, never wait: a row someone holds (a worker
-- renewing leases, a send) gets its verdict on a later pass. Waiting here could close a
-- cycle with a multi-row UPDATE of a worker (a deadlock).
SELECT workflow_id, state, move_id FROM shardflow.workflow_status
WHERE workflow_id = ANY(%(ids)s)
FOR SHARE SKIP LOCKED

-- name: workflow_states_among
SELECT workflow_id, state FROM shardflow.workflow_status WHERE workflow_id = ANY(%(ids)s)

-- name: purge_tombstones
-- Tombstones older than the grace period, of slots this shard no longer has any part in
-- (so no insert of their IDs can land here, and no staged copy still needs the verdict).
WITH doomed AS (
    SELECT w.workflow_id FROM shardflow.workflow_status w
    WHERE w.state = 'MOVED'
      AND w.updated_at < now() - make_interval(secs => %(grace_seconds)s)
      AND NOT EXISTS (SELECT 1 FROM shardflow.slot_ownership o WHERE o.slot = w.slot)
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM shardflow.workflow_status AS w USING doomed
WHERE w.workflow_id = doomed.workflow_id AND w.state = 'MOVED'
RETURNING w.workflow_id

-- ---------------------------------------------------------------------------------------
-- Read by the client (the engine's store) to follow slots in motion.

-- name: slot_states_among
-- How this shard holds some slots: the redirect a client follows when refused.
SELECT slot, state, peer FROM shardflow.slot_ownership WHERE slot = ANY(%(slots)s)

-- name: get_slot_map_full
SELECT epoch, ranges, migrating FROM shardflow.slot_map
