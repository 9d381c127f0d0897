-- Live workers: each worker upserts one row per shard it serves on every heartbeat
-- (shardflow/engine/registry.py). Submit, `status`, `workflows list` and
-- WorkflowHandle.result() read it to tell work that no live worker can run (a misspelled
-- or unregistered workflow name, another app's workflow, a queue nobody claims, no worker
-- at all) from work that is merely waiting its turn. Rows of workers that stopped
-- heartbeating are purged by the workers themselves after a day.
CREATE TABLE shardflow.workers (
    worker_id  text        PRIMARY KEY,
    host       text        NOT NULL,
    pid        integer     NOT NULL,
    version    text        NOT NULL,
    app        text        NOT NULL,
    workflows  text[]      NOT NULL,
    queues     text[]      NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workers_last_seen ON shardflow.workers (last_seen);
