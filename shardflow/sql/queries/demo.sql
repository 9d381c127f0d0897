-- The demo's checks (shardflow/demo/): its side-effect log, a table of its own outside the
-- shardflow schema, and the workflows a shard holds.

-- name: demo_effects_table
CREATE TABLE IF NOT EXISTS demo_effects (
    workflow_id text NOT NULL,
    step        text NOT NULL,
    pid         integer NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
)

-- name: demo_effects_truncate
TRUNCATE demo_effects

-- name: demo_effects_insert
INSERT INTO demo_effects (workflow_id, step, pid) VALUES (%(workflow_id)s, %(step)s, %(pid)s)

-- name: demo_effects_per_step
SELECT workflow_id, step, count(*) AS runs FROM demo_effects GROUP BY 1, 2

-- name: demo_effects_per_workflow
SELECT workflow_id, count(*) AS runs FROM demo_effects
WHERE workflow_id = ANY(%(workflow_ids)s) GROUP BY 1

-- name: demo_live_workflow_ids
SELECT workflow_id FROM shardflow.workflow_status WHERE state <> 'MOVED'
