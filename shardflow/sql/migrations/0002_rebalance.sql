-- Online rebalancing: slots in motion in the map copy, staged copies, the recorded plan.
-- See docs/rebalancing.md for the protocol these columns and tables serve.

-- A staged copy (state IMPORTING) names the shard it is being copied from, so that the
-- recovery rule can look at the source's row without any other bookkeeping.
ALTER TABLE shardflow.workflow_status ADD COLUMN moved_from text;

-- The map copy also says which slots are in motion: [[first, last, source shard], ...].
-- Their owner in ``ranges`` is the target. A router uses this to look an ID up on the
-- source before creating it on the target.
ALTER TABLE shardflow.slot_map ADD COLUMN migrating jsonb NOT NULL DEFAULT '[]';

-- The plan `shardflow rebalance apply` is carrying out, recorded on every shard so that a
-- killed run resumes the same plan. ``target`` is the slot map it ends with (ranges).
CREATE TABLE shardflow.rebalance_plans (
    plan_id     uuid        PRIMARY KEY,
    base_epoch  bigint      NOT NULL,
    target      jsonb       NOT NULL,
    moves       integer     NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    outcome     text CHECK (outcome IN ('done', 'superseded'))
);

-- The mover scans the live rows of a few slots; tombstones would only slow it down.
CREATE INDEX workflow_status_slot_live ON shardflow.workflow_status (slot)
    WHERE state <> 'MOVED';
-- Staged copies: found by slot for recovery and by status counts.
CREATE INDEX workflow_status_importing ON shardflow.workflow_status (slot)
    WHERE state = 'IMPORTING';
-- Tombstones: purged by age after a grace period.
CREATE INDEX workflow_status_tombstones ON shardflow.workflow_status (updated_at)
    WHERE state = 'MOVED';
