-- Workflow lifecycle on one shard: submit, claim, lease, checkpoint, finish, control.

-- name: insert_workflows
-- Batched submit. A row is created only if this shard owns its slot, or imports it and
-- the client has looked the ID up on the slot's source first (``source_checked``): that
-- lookup is what keeps an ID unique across a slot in motion. An ID that exists already
-- is left alone (submit is idempotent on workflow_id). Workers listening on the shard
-- are woken (PostgreSQL folds identical notifications into one).
--
-- The ownership check locks what it reads: the slot_ownership rows of the batch are
-- taken FOR SHARE (in slot order, as every slot transition takes them, so the two never
-- deadlock) and held until this statement's transaction ends. A slot transition (an
-- UPDATE or DELETE of those rows) therefore waits for an insert that relied on the old
-- state to commit, and the rebalancer's later reads (the rows to move, "only tombstones
-- left") see its rows. An insert that arrives while a transition holds the row waits for
-- it; READ COMMITTED then re-reads the row's newest version for the locking clause
-- (EvalPlanQual) and re-checks `state` on it, so the insert sees MIGRATING_OUT (refused,
-- redirected) or no row at all (dropped), never the state its snapshot had. Without the
-- lock, a long insert whose snapshot predates MIGRATING_OUT committed its rows after the
-- slot had been moved and dropped: live workflows on a shard that owns no slot.
-- FOR SHARE, not FOR KEY SHARE: a transition's UPDATE changes no key, so it takes FOR NO
-- KEY UPDATE, which FOR KEY SHARE would not stop.
WITH batch AS MATERIALIZED (
    -- The rows travel as one JSON document: encoding it is one C call on the client,
    -- where eleven Python-built arrays cost more than the insert itself.
    SELECT * FROM json_to_recordset(%(rows)s::json)
        AS t(workflow_id text, slot integer, route_hash bigint, name text, queue text,
             priority integer, inputs text, delay_seconds float8, timeout_seconds float8,
             dedup_key text, parent_id text, source_checked boolean, trace_context jsonb,
             partition_key text)
), held AS MATERIALIZED (
    SELECT o.slot, o.state FROM shardflow.slot_ownership o
    WHERE o.slot = ANY(ARRAY(SELECT DISTINCT b.slot FROM batch b))
      AND o.state IN ('OWNED', 'IMPORTING')
    ORDER BY o.slot
    FOR SHARE
), created AS (
INSERT INTO shardflow.workflow_status (
    workflow_id, slot, route_hash, name, queue, state, priority, inputs, wake_at,
    deadline, dedup_key, parent_id, trace_context, partition_key)
SELECT t.workflow_id, t.slot, t.route_hash, t.name, t.queue, 'ENQUEUED', t.priority,
       t.inputs,
       CASE WHEN t.delay_seconds IS NULL THEN NULL
            ELSE now() + make_interval(secs => t.delay_seconds) END,
       CASE WHEN t.timeout_seconds IS NULL THEN NULL
            ELSE now() + make_interval(secs => t.timeout_seconds) END,
       t.dedup_key, t.parent_id, t.trace_context,
       -- A child without a key of its own takes its parent's, when the parent is here
       -- (its ID has a hash tag, which the child's ID repeats: docs/queues.md).
       coalesce(t.partition_key, CASE WHEN t.parent_id IS NOT NULL THEN
           (SELECT p.partition_key FROM shardflow.workflow_status p
            WHERE p.workflow_id = t.parent_id) END)
FROM batch t JOIN held o ON o.slot = t.slot
WHERE o.state = 'OWNED' OR (o.state = 'IMPORTING' AND t.source_checked)
ON CONFLICT (workflow_id) DO NOTHING
RETURNING workflow_id, queue
)
SELECT workflow_id, pg_notify('shardflow_work', queue) FROM created

-- name: debounce_workflow
-- A debounced submit (docs/queues.md#debounce): create the pending run of (name,
-- debounce key), delayed by debounce_seconds, or, if one is pending (ENQUEUED, never
-- started), give it these inputs and options and push its start back. Returns the ID of
-- the pending run, and nothing when this shard does not own the slot (the client then
-- follows the slot; a slot being imported is waited for, so a key's pending run is in
-- one place). Race-safe through the unique index workflow_status_debounce_pending:
-- concurrent submits of one key meet on it (one inserts, the others update), and a
-- claim that took the row first (FOR UPDATE, then RUNNING) makes the upsert try again,
-- find no pending run and insert a new one. A claim that comes second finds wake_at
-- set again and leaves the row alone.
WITH held AS MATERIALIZED (
    SELECT o.slot FROM shardflow.slot_ownership o
    WHERE o.slot = %(slot)s AND o.state = 'OWNED'
    FOR SHARE
)
INSERT INTO shardflow.workflow_status AS w (
    workflow_id, slot, route_hash, name, queue, state, priority, inputs, wake_at,
    deadline, trace_context, partition_key, debounce_key)
SELECT %(workflow_id)s, h.slot, %(route_hash)s, %(name)s, %(queue)s, 'ENQUEUED',
       %(priority)s, %(inputs)s, now() + make_interval(secs => %(debounce_seconds)s),
       CASE WHEN %(timeout_seconds)s::float8 IS NULL THEN NULL
            ELSE now() + make_interval(secs => %(timeout_seconds)s::float8) END,
       %(trace_context)s::jsonb, %(partition_key)s, %(debounce_key)s
FROM held h
ON CONFLICT (name, debounce_key)
    WHERE state = 'ENQUEUED' AND started_at IS NULL AND debounce_key IS NOT NULL
DO UPDATE SET inputs = excluded.inputs, wake_at = excluded.wake_at, queue = excluded.queue,
    priority = excluded.priority, deadline = excluded.deadline,
    trace_context = excluded.trace_context, partition_key = excluded.partition_key,
    updated_at = now()
RETURNING w.workflow_id

-- name: existing_workflows
SELECT workflow_id, name, state, moved_to FROM shardflow.workflow_status
WHERE workflow_id = ANY(%(workflow_ids)s)

-- name: get_workflow
SELECT workflow_id, name, queue, state, priority, attempt, recoveries, output, error,
       reason, created_at, updated_at, started_at, finished_at, parent_id, forked_from, dedup_key,
       moved_to, deadline, lease_owner, app_version, moved_from, import_state, move_id
FROM shardflow.workflow_status WHERE workflow_id = %(workflow_id)s

-- name: claim_enqueued
-- The next runnable workflows of one queue, highest priority first, then oldest. Only
-- ready rows (wake_at IS NULL, the workflow_status_claim_ready index): delayed ones join
-- them when promote_delayed finds them due. ``now`` (NULL: the database's now()) lets
-- tests move the clock; the same holds for every query that takes it.
WITH picked AS (
    SELECT workflow_id FROM shardflow.workflow_status
    WHERE state = 'ENQUEUED' AND wake_at IS NULL AND queue = %(queue)s
      AND name = ANY(%(names)s)
    ORDER BY priority DESC, created_at, workflow_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE shardflow.workflow_status AS w
SET state = 'RUNNING', attempt = w.attempt + 1, lease_owner = %(owner)s,
    lease_expires_at = coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(lease_seconds)s),
    started_at = coalesce(w.started_at, now()), updated_at = now(),
    app_version = %(app_version)s::text
FROM picked WHERE w.workflow_id = picked.workflow_id
RETURNING w.workflow_id, w.name, w.queue, w.inputs, w.attempt, w.recoveries,
          w.parent_id, w.state, extract(epoch FROM clock_timestamp()) AS db_epoch,
          w.slot, w.trace_context

-- name: claim_enqueued_keyed
-- claim_enqueued for a queue with key_concurrency (docs/queues.md#flow-control), run
-- under lock_queue so that the per-key counts hold exactly on this shard. Fair: a skip
-- scan over workflow_status_claim_keyed finds the keys with ready work (one index probe
-- per key); each key offers its first rows in claim order, at most its free places
-- (key_limit minus its RUNNING workflows); an offer ranks by the load its key would
-- have with it (RUNNING + its place among the key's offers), so the least loaded key
-- goes first; ties go to the key whose last start is oldest (so keys take turns even
-- when runs end before the next claim), then priority, then age. Workflows without a
-- key form one more group, without a per-key limit, last among equals. With key_rate
-- (key_rate_limit), a key also offers at most key_rate minus its first starts in the
-- last key_period seconds. key_limit and key_rate may each be NULL (no such limit).
WITH RECURSIVE keys AS (
    (SELECT partition_key FROM shardflow.workflow_status
     WHERE state = 'ENQUEUED' AND wake_at IS NULL AND queue = %(queue)s
       AND partition_key IS NOT NULL
     ORDER BY partition_key LIMIT 1)
    UNION ALL
    SELECT (SELECT w.partition_key FROM shardflow.workflow_status w
            WHERE w.state = 'ENQUEUED' AND w.wake_at IS NULL AND w.queue = %(queue)s
              AND w.partition_key > k.partition_key
            ORDER BY w.partition_key LIMIT 1)
    FROM keys k WHERE k.partition_key IS NOT NULL
), offers AS MATERIALIZED (
    SELECT o.workflow_id, o.priority, o.created_at, n.running + o.place AS rank,
           l.last_start
    FROM keys k
    CROSS JOIN LATERAL (
        SELECT count(*) AS running FROM shardflow.workflow_status r
        WHERE r.state = 'RUNNING' AND r.queue = %(queue)s AND r.partition_key = k.partition_key
    ) n
    CROSS JOIN LATERAL (
        SELECT count(*) AS started FROM shardflow.workflow_status r
        WHERE %(key_rate)s::bigint IS NOT NULL
          AND r.queue = %(queue)s AND r.partition_key = k.partition_key
          AND r.started_at > coalesce(%(now)s::timestamptz, now())
                             - make_interval(secs => %(key_period)s::float8)
    ) s
    CROSS JOIN LATERAL (
        -- One backward probe of workflow_status_started_key (0013).
        SELECT max(r.started_at) AS last_start FROM shardflow.workflow_status r
        WHERE r.queue = %(queue)s AND r.partition_key = k.partition_key
          AND r.started_at IS NOT NULL
    ) l
    CROSS JOIN LATERAL (
        SELECT w.workflow_id, w.priority, w.created_at,
               row_number() OVER (ORDER BY w.priority DESC, w.created_at, w.workflow_id) AS place
        FROM shardflow.workflow_status w
        WHERE w.state = 'ENQUEUED' AND w.wake_at IS NULL AND w.queue = %(queue)s
          AND w.partition_key = k.partition_key AND w.name = ANY(%(names)s)
        ORDER BY w.priority DESC, w.created_at, w.workflow_id
        LIMIT greatest(0, least(%(limit)s, coalesce(%(key_limit)s::bigint - n.running, %(limit)s),
                                coalesce(%(key_rate)s::bigint - s.started, %(limit)s)))
    ) o
    WHERE k.partition_key IS NOT NULL
    UNION ALL
    SELECT u.workflow_id, u.priority, u.created_at,
           u.place + (SELECT count(*) FROM shardflow.workflow_status r
                      WHERE r.state = 'RUNNING' AND r.queue = %(queue)s
                        AND r.partition_key IS NULL),
           'infinity'::timestamptz
    FROM (
        -- Ordered as workflow_status_claim_keyed is (the key, NULL here, first), so
        -- that the index yields the rows in order and the scan stops at the limit.
        SELECT w.workflow_id, w.priority, w.created_at,
               row_number() OVER (ORDER BY w.partition_key, w.priority DESC, w.created_at,
                                           w.workflow_id) AS place
        FROM shardflow.workflow_status w
        WHERE w.state = 'ENQUEUED' AND w.wake_at IS NULL AND w.queue = %(queue)s
          AND w.partition_key IS NULL AND w.name = ANY(%(names)s)
        ORDER BY w.partition_key, w.priority DESC, w.created_at, w.workflow_id
        LIMIT %(limit)s
    ) u
), ranked AS MATERIALIZED (
    -- The best offers as one array in claim order: the rows are then fetched by primary
    -- key (a join with all offers could be planned as a scan of all ready rows). The
    -- claim holds the queue's lock, so an offer is rarely locked (a cancel, a debounce
    -- update); if one is, this claim takes one fewer and the next claim goes on.
    SELECT array_agg(b.workflow_id ORDER BY b.rank, b.last_start NULLS FIRST,
                     b.priority DESC, b.created_at, b.workflow_id) AS ids
    FROM (SELECT * FROM offers
          ORDER BY rank, last_start NULLS FIRST, priority DESC, created_at, workflow_id
          LIMIT %(limit)s) b
), picked AS (
    SELECT w.workflow_id FROM ranked r, shardflow.workflow_status w
    WHERE w.workflow_id = ANY(r.ids) AND w.state = 'ENQUEUED' AND w.wake_at IS NULL
    ORDER BY array_position(r.ids, w.workflow_id)
    LIMIT %(limit)s
    FOR UPDATE OF w SKIP LOCKED
)
UPDATE shardflow.workflow_status AS w
SET state = 'RUNNING', attempt = w.attempt + 1, lease_owner = %(owner)s,
    lease_expires_at = coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(lease_seconds)s),
    started_at = coalesce(w.started_at, %(now)s::timestamptz, now()), updated_at = now(),
    app_version = %(app_version)s::text
FROM picked WHERE w.workflow_id = picked.workflow_id
RETURNING w.workflow_id, w.name, w.queue, w.inputs, w.attempt, w.recoveries,
          w.parent_id, w.state, extract(epoch FROM clock_timestamp()) AS db_epoch,
          w.slot, w.trace_context

-- name: promote_delayed
-- Delayed workflows whose time has come become ready for claim_enqueued (a few at a
-- time; workers of the shard share the work through SKIP LOCKED).
WITH due AS (
    SELECT workflow_id FROM shardflow.workflow_status
    WHERE state = 'ENQUEUED' AND wake_at IS NOT NULL AND wake_at <= coalesce(%(now)s::timestamptz, now())
    ORDER BY wake_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE shardflow.workflow_status AS w SET wake_at = NULL
FROM due WHERE w.workflow_id = due.workflow_id
RETURNING w.workflow_id

-- name: claim_expired
-- Crash recovery: RUNNING workflows whose lease ran out. Past max_recoveries a workflow
-- is dead-lettered instead of run again, and that final write notifies shardflow_done
-- (see commit_batch).
WITH picked AS (
    SELECT workflow_id FROM shardflow.workflow_status
    WHERE state = 'RUNNING' AND lease_expires_at < coalesce(%(now)s::timestamptz, now()) AND name = ANY(%(names)s)
      AND queue = ANY(%(queues)s)
    ORDER BY lease_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE shardflow.workflow_status AS w
    SET state = CASE WHEN w.recoveries + 1 > %(max_recoveries)s THEN 'DEAD' ELSE 'RUNNING' END,
        reason = CASE WHEN w.recoveries + 1 > %(max_recoveries)s
                      THEN 'crashed more than ' || %(max_recoveries)s || ' times' END,
        attempt = w.attempt + 1, recoveries = w.recoveries + 1,
        lease_owner = CASE WHEN w.recoveries + 1 > %(max_recoveries)s THEN NULL
                           ELSE %(owner)s END,
        lease_expires_at = CASE WHEN w.recoveries + 1 > %(max_recoveries)s THEN NULL
                           ELSE coalesce(%(now)s::timestamptz, now())
                                + make_interval(secs => %(lease_seconds)s) END,
        finished_at = CASE WHEN w.recoveries + 1 > %(max_recoveries)s THEN now() END,
        updated_at = now(), app_version = %(app_version)s::text
    FROM picked WHERE w.workflow_id = picked.workflow_id
    RETURNING w.workflow_id, w.name, w.queue, w.inputs, w.attempt, w.recoveries,
              w.parent_id, w.state, extract(epoch FROM clock_timestamp()) AS db_epoch,
              w.slot, w.trace_context,
              CASE WHEN w.state = 'DEAD' THEN pg_notify('shardflow_done',
                  CASE WHEN octet_length(w.workflow_id) < 7900 THEN w.workflow_id ELSE '' END)
              END AS notified
)
SELECT workflow_id, name, queue, inputs, attempt, recoveries, parent_id, state, db_epoch,
       slot, trace_context
FROM claimed

-- name: lock_queue
-- Serializes claims of one queue on this shard while its limits are checked.
SELECT pg_advisory_xact_lock(hashtext('shardflow.queue'), hashtext(%(queue)s))

-- name: queue_usage
SELECT
    (SELECT count(*) FROM shardflow.workflow_status
     WHERE queue = %(queue)s AND state = 'RUNNING') AS running,
    (SELECT count(*) FROM shardflow.workflow_status
     WHERE queue = %(queue)s AND started_at > coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(period)s))
        AS started

-- name: renew_leases
-- One statement per shard per heartbeat: (workflow_id, true) for each lease renewed,
-- (workflow_id, false) for each lost (cancelled, claimed by another worker after expiry,
-- gone). A row another transaction holds locked right now (this worker's own checkpoint
-- or final write committing, a cancel in flight) is skipped and in neither list: its
-- lease is renewed or found lost at the next heartbeat, two more of which fit in a lease.
-- Waiting instead would chain a heartbeat of thousands of rows behind every commit
-- (and those commits behind it) until lock_timeout. Rows are locked in ID order, as
-- commit_batch's fence locks them.
WITH mine AS (
    SELECT workflow_id FROM shardflow.workflow_status
    WHERE workflow_id = ANY(%(workflow_ids)s) AND lease_owner = %(owner)s AND state = 'RUNNING'
    ORDER BY workflow_id
    FOR NO KEY UPDATE SKIP LOCKED
), renewed AS (
    UPDATE shardflow.workflow_status AS w
    SET lease_expires_at = coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(lease_seconds)s)
    FROM mine
    WHERE w.workflow_id = mine.workflow_id
    RETURNING w.workflow_id
)
SELECT workflow_id, true AS renewed FROM renewed
UNION ALL
-- The statement's snapshot: a row being committed right now still reads as ours.
SELECT i.workflow_id, false
FROM unnest(%(workflow_ids)s::text[]) AS i(workflow_id)
LEFT JOIN shardflow.workflow_status s ON s.workflow_id = i.workflow_id
WHERE s.workflow_id IS NULL OR s.lease_owner IS DISTINCT FROM %(owner)s OR s.state <> 'RUNNING'

-- name: load_steps
SELECT step_no, name, output, error, started_at, duration_ms, attempt
FROM shardflow.step_outputs
WHERE workflow_id = %(workflow_id)s ORDER BY step_no

-- name: get_step
SELECT step_no, name, output, error FROM shardflow.step_outputs
WHERE workflow_id = %(workflow_id)s AND step_no = %(step_no)s

-- name: run_state
SELECT state, attempt FROM shardflow.workflow_status WHERE workflow_id = %(workflow_id)s

-- name: release_workflows
-- A stopping worker hands back what it has not finished.
UPDATE shardflow.workflow_status AS w
SET state = 'ENQUEUED', lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
FROM unnest(%(workflow_ids)s::text[], %(attempts)s::integer[]) AS r(workflow_id, attempt)
WHERE w.workflow_id = r.workflow_id AND w.attempt = r.attempt AND w.state = 'RUNNING'
RETURNING w.workflow_id, pg_notify('shardflow_work', w.queue)

-- name: cancel_workflow
-- The worker running it hears the notification and stops at the next step boundary.
WITH cancelled AS (
    UPDATE shardflow.workflow_status
    SET state = 'CANCELLED', reason = %(reason)s, lease_owner = NULL, lease_expires_at = NULL,
        finished_at = now(), updated_at = now()
    WHERE workflow_id = %(workflow_id)s AND state IN ('ENQUEUED', 'RUNNING', 'SUSPENDED')
    RETURNING workflow_id
)
SELECT workflow_id, pg_notify('shardflow_cancel', workflow_id) FROM cancelled

-- name: resume_workflow
WITH resumed AS (
    UPDATE shardflow.workflow_status
    SET state = 'ENQUEUED', reason = NULL, error = NULL, output = NULL, recoveries = 0,
        lease_owner = NULL, lease_expires_at = NULL, wake_at = NULL, finished_at = NULL,
        deadline = NULL, debounce_key = NULL, updated_at = now()
    WHERE workflow_id = %(workflow_id)s AND state IN ('CANCELLED', 'ERROR', 'DEAD')
    RETURNING workflow_id, queue
)
SELECT workflow_id, pg_notify('shardflow_work', queue) FROM resumed

-- name: drop_failed_last_step
-- Resuming retries the step whose error ended the workflow.
DELETE FROM shardflow.step_outputs
WHERE workflow_id = %(workflow_id)s AND error IS NOT NULL
  AND step_no = (SELECT max(step_no) FROM shardflow.step_outputs
                 WHERE workflow_id = %(workflow_id)s)
RETURNING step_no

-- name: list_workflows
-- One page of one shard, newest first; the client merges the shards' pages.
SELECT workflow_id, name, queue, state, priority, attempt, recoveries, output, error,
       reason, created_at, updated_at, started_at, finished_at, parent_id, forked_from, dedup_key,
       moved_to, deadline, lease_owner, app_version
FROM shardflow.workflow_status
WHERE state NOT IN ('MOVED', 'IMPORTING')
  AND (%(state)s::text IS NULL OR state = %(state)s)
  AND (%(name)s::text IS NULL OR name = %(name)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(after_created)s::timestamptz IS NULL
       OR (created_at, workflow_id) < (%(after_created)s, %(after_id)s::text))
ORDER BY created_at DESC, workflow_id DESC
LIMIT %(limit)s

-- name: count_by_state
SELECT state, count(*) FROM shardflow.workflow_status GROUP BY state

-- name: listen
LISTEN shardflow_work; LISTEN shardflow_cancel; LISTEN shardflow_message

-- name: listen_waits
-- A client's waits (result(), get_event): a workflow's final write notifies
-- shardflow_done_ids (a batch of runs' ends: a JSON array of IDs and [ID, result] pairs,
-- see commit_batch),
-- shardflow_done (dead-lettering, a long ID) or shardflow_cancel (cancel, bulk cancel, a
-- deadline), and publishing an event notifies shardflow_event; the payload of the last
-- three is the workflow ID ('' for an ID too long for a payload: every waiter re-checks).
LISTEN shardflow_done_ids; LISTEN shardflow_done; LISTEN shardflow_cancel; LISTEN shardflow_event

-- name: commit_batch
-- The one fenced write: many runs' step checkpoints and final states in one statement
-- (one round trip, one commit), each fenced on its attempt. A single write is a batch of
-- one (shardflow/engine/store/steps.py). Returns (workflow_id, step_no, attempt) of each
-- step written and (workflow_id, NULL, attempt) of each final state written; a write
-- missing from the result was fenced off, or (a step) lost to a record written earlier.
-- The attempt tells apart two attempts' writes of one step in the same batch. The final
-- states written notify at commit, which wakes the clients waiting for their results:
-- one shardflow_done_ids notification per batch (payload: a JSON array with an item per
-- workflow, split into several notifications past 6,500 bytes: the workflow ID, or for a
-- success with a small result the pair [ID, stored result text]), and shardflow_done for
-- an ID too long to share one (payload: the ID, '' if too long for a payload). One
-- notification per batch rather than per workflow: every notification is a queue
-- entry the server writes and each listener reads, and commits that notify are
-- serialised on one lock.
--
-- The fence locks what it reads. A checkpoint takes FOR SHARE on its workflow's status
-- row: a claim (claim_expired, cancel, a move) updates that row, so it either waits for
-- this commit and then sees the step when it loads the history, or has updated the row
-- first, and then this statement, after waiting, re-reads the row (READ COMMITTED re-check
-- of a locked row), finds another attempt and writes nothing. Without the lock a new
-- attempt could load the history while a zombie's checkpoint is still committing and
-- run that step again. (FOR KEY SHARE would not conflict with an UPDATE of non-key
-- columns, so it would not fence.)
WITH fence AS (
    SELECT w.workflow_id, t.step_no, t.name, t.output, t.error, t.started_at, t.duration_ms,
           t.attempt
    FROM json_to_recordset(%(steps)s::json)
         AS t(workflow_id text, attempt integer, step_no integer, name text, output text,
              error jsonb, started_at double precision, duration_ms double precision)
    JOIN shardflow.workflow_status w
      ON w.workflow_id = t.workflow_id AND w.attempt = t.attempt AND w.state = 'RUNNING'
    ORDER BY w.workflow_id
    FOR SHARE OF w
), steps AS (
    INSERT INTO shardflow.step_outputs
        (workflow_id, step_no, name, output, error, started_at, duration_ms, attempt)
    SELECT workflow_id, step_no, name, output, error, to_timestamp(started_at), duration_ms,
           attempt
    FROM fence
    ON CONFLICT (workflow_id, step_no) DO NOTHING
    RETURNING workflow_id, step_no, attempt
), finished AS (
    UPDATE shardflow.workflow_status AS w
    SET state = t.state, output = t.output, error = t.error, reason = t.reason,
        lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), updated_at = now()
    FROM json_to_recordset(%(finishes)s::json)
         AS t(workflow_id text, attempt integer, state text, output text, error jsonb,
              reason text)
    WHERE w.workflow_id = t.workflow_id AND w.attempt = t.attempt AND w.state = 'RUNNING'
    RETURNING w.workflow_id, w.attempt,
              CASE WHEN w.state = 'SUCCESS' AND octet_length(w.output) <= 900
                   THEN json_build_array(w.workflow_id, w.output) END AS pair
), sized AS (
    -- A success's result rides along when the pair is small (saves the waiting client a
    -- read); otherwise the ID alone.
    SELECT f.workflow_id, f.attempt, i.item, octet_length(i.item::text) AS size
    FROM finished f,
         LATERAL (SELECT CASE WHEN octet_length(f.pair::text) <= 1000 THEN f.pair
                              ELSE to_json(f.workflow_id) END AS item) i
), parts AS (
    -- Items of up to 1,000 bytes (as JSON) share notifications of at most 6,500 + 1,002
    -- bytes of payload (the limit is 8,000); a longer ID gets one of its own (a negative
    -- part).
    SELECT workflow_id, attempt, item,
           CASE WHEN size <= 1000
                THEN sum(CASE WHEN size <= 1000 THEN size + 2 END)
                         OVER (ORDER BY workflow_id) / 6500
                ELSE -row_number() OVER (ORDER BY workflow_id) END AS part
    FROM sized
), notified AS (
    SELECT part,
           CASE WHEN part >= 0 THEN pg_notify('shardflow_done_ids', json_agg(item)::text)
                ELSE pg_notify('shardflow_done', CASE WHEN max(octet_length(workflow_id)) < 7900
                                                      THEN max(workflow_id) ELSE '' END)
           END AS sent
    FROM parts GROUP BY part
)
SELECT workflow_id, step_no, attempt FROM steps
UNION ALL
-- The join makes every part's notification be sent.
SELECT p.workflow_id, NULL, p.attempt FROM parts p JOIN notified n ON n.part = p.part
