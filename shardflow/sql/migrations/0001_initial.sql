-- shardflow per-shard schema, version 1. Every shard runs the same schema.
-- Applied by shardflow.sql.migrator inside one transaction under an advisory lock.

-- Who this shard is. One row; a process whose config disagrees refuses to run.
CREATE TABLE shardflow.cluster_identity (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    cluster_name text    NOT NULL,
    shard_name   text    NOT NULL,
    slots        integer NOT NULL CHECK (slots >= 64 AND slots <= 65536),
    hash_seed    bigint  NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- The slots this shard is the authority for. A slot absent here is not this shard's.
CREATE TABLE shardflow.slot_ownership (
    slot       integer PRIMARY KEY,
    state      text    NOT NULL CHECK (state IN ('OWNED', 'IMPORTING', 'MIGRATING_OUT')),
    peer       text,
    epoch      bigint  NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- This shard's copy of the whole slot map: ranges [[first, last, shard], ...].
CREATE TABLE shardflow.slot_map (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch      bigint  NOT NULL,
    ranges     jsonb   NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE shardflow.workflow_status (
    workflow_id      text    PRIMARY KEY,
    slot             integer NOT NULL,
    route_hash       bigint  NOT NULL,
    name             text    NOT NULL,
    queue            text    NOT NULL,
    state            text    NOT NULL CHECK (state IN (
                         'ENQUEUED', 'RUNNING', 'SUSPENDED', 'SUCCESS', 'ERROR',
                         'CANCELLED', 'DEAD', 'IMPORTING', 'MOVED')),
    priority         integer NOT NULL DEFAULT 0,
    inputs           text    NOT NULL,
    output           text,
    error            jsonb,
    reason           text,
    -- Fencing token: +1 on every claim; every write of a run is conditioned on it.
    attempt          integer NOT NULL DEFAULT 0,
    recoveries       integer NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_expires_at timestamptz,
    -- ENQUEUED: not before; SUSPENDED: wake-up time (NULL = only a message wakes it).
    wake_at          timestamptz,
    -- What a SUSPENDED workflow waits for: 'sleep', 'message:<topic>', 'child'.
    wait_for         text,
    deadline         timestamptz,
    dedup_key        text,
    parent_id        text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    -- Rebalancing: a MOVED row is a tombstone pointing at the shard that holds W now.
    moved_to         text,
    move_id          uuid,
    -- The state an IMPORTING copy takes when its move is activated.
    import_state     text
);

-- Claim: the next ENQUEUED workflows of a queue, by priority then age.
CREATE INDEX workflow_status_claim ON shardflow.workflow_status
    (queue, priority DESC, created_at, workflow_id) WHERE state = 'ENQUEUED';
-- Recovery: RUNNING workflows whose lease expired.
CREATE INDEX workflow_status_lease ON shardflow.workflow_status
    (lease_expires_at) WHERE state = 'RUNNING';
-- Queue limits: RUNNING per queue, starts per queue over a window.
CREATE INDEX workflow_status_running_queue ON shardflow.workflow_status
    (queue) WHERE state = 'RUNNING';
CREATE INDEX workflow_status_started ON shardflow.workflow_status (queue, started_at)
    WHERE started_at IS NOT NULL;
-- Durable sleep and timers.
CREATE INDEX workflow_status_wake ON shardflow.workflow_status (wake_at)
    WHERE state = 'SUSPENDED';
CREATE INDEX workflow_status_deadline ON shardflow.workflow_status (deadline)
    WHERE deadline IS NOT NULL AND state IN ('ENQUEUED', 'RUNNING', 'SUSPENDED');
-- Listing with keyset pagination.
CREATE INDEX workflow_status_created ON shardflow.workflow_status (created_at, workflow_id);
-- Rebalancing and finished-workflow retention.
CREATE INDEX workflow_status_slot ON shardflow.workflow_status (slot);
CREATE INDEX workflow_status_finished ON shardflow.workflow_status (finished_at)
    WHERE finished_at IS NOT NULL;
CREATE INDEX workflow_status_parent ON shardflow.workflow_status (parent_id)
    WHERE parent_id IS NOT NULL;
-- A dedup key is unique among a queue's active workflows.
CREATE UNIQUE INDEX workflow_status_dedup ON shardflow.workflow_status (queue, dedup_key)
    WHERE dedup_key IS NOT NULL AND state IN ('ENQUEUED', 'RUNNING', 'SUSPENDED');

-- One committed row per completed step. Recorded outputs are immutable.
CREATE TABLE shardflow.step_outputs (
    workflow_id text    NOT NULL,
    step_no     integer NOT NULL,
    name        text    NOT NULL,
    output      text,
    error       jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, step_no)
);

CREATE TABLE shardflow.messages (
    workflow_id     text   NOT NULL,
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    topic           text   NOT NULL DEFAULT '',
    message_id      text   NOT NULL,
    payload         text   NOT NULL,
    consumed        boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, seq),
    UNIQUE (workflow_id, message_id)
);
CREATE INDEX messages_unconsumed ON shardflow.messages (workflow_id, topic, seq)
    WHERE NOT consumed;

CREATE TABLE shardflow.events (
    workflow_id text NOT NULL,
    key         text NOT NULL,
    value       text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, key)
);
