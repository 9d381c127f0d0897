-- A queue-wide `concurrency` held exactly across shards (docs/queues.md#concurrency).
-- Each queue with a `concurrency` has a home shard (a hash of its name over the shards of
-- the YAML). Every claim of the queue, on any shard, first takes queue leases here, one
-- per workflow it may start, at most `concurrency` live at once. A worker renews the
-- queue leases of its runs with its heartbeats and deletes one when its run ends. A
-- queue lease that expired (its worker was killed, or could not reach this shard for a
-- whole lease) is free again, and is never renewed once expired.
CREATE TABLE shardflow.queue_leases (
    lease_id   uuid        PRIMARY KEY,
    queue      text        NOT NULL,
    owner      text        NOT NULL,
    taken_at   timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
-- Counting a queue's live leases, and purging its expired ones.
CREATE INDEX queue_leases_queue ON shardflow.queue_leases (queue, expires_at);
