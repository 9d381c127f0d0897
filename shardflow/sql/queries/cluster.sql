-- Cluster identity, slot ownership and the slot-map copy. Used by the migrator and the
-- topology loader.

-- name: try_lock_schema_session
-- The migration lock, held by the session and taken by polling (see migrator.schema_lock).
SELECT pg_try_advisory_lock(hashtext('shardflow.migrate'))

-- name: unlock_schema_session
SELECT pg_advisory_unlock(hashtext('shardflow.migrate'))

-- name: invalid_indexes
-- Indexes a CREATE INDEX CONCURRENTLY left unusable when it was interrupted.
SELECT c.relname FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'shardflow' AND NOT i.indisvalid

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS shardflow

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS shardflow.migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- name: applied_migrations
SELECT version FROM shardflow.migrations ORDER BY version

-- name: record_migration
INSERT INTO shardflow.migrations (version, name) VALUES (%(version)s, %(name)s)

-- name: schema_version
SELECT coalesce(max(version), 0) FROM shardflow.migrations

-- name: get_identity
SELECT cluster_name, shard_name, slots, hash_seed FROM shardflow.cluster_identity

-- name: insert_identity
INSERT INTO shardflow.cluster_identity (cluster_name, shard_name, slots, hash_seed)
VALUES (%(cluster_name)s, %(shard_name)s, %(slots)s, %(hash_seed)s)

-- name: insert_owned_slots
INSERT INTO shardflow.slot_ownership (slot, state, epoch)
SELECT s, 'OWNED', %(epoch)s FROM unnest(%(slots)s::integer[]) AS s

-- name: get_slot_map
SELECT epoch, ranges FROM shardflow.slot_map

-- name: put_slot_map
-- Keep the newer copy: a map with a lower epoch never replaces a higher one.
INSERT INTO shardflow.slot_map (epoch, ranges) VALUES (%(epoch)s, %(ranges)s)
ON CONFLICT (singleton) DO UPDATE
    SET epoch = excluded.epoch, ranges = excluded.ranges, updated_at = now()
    WHERE shardflow.slot_map.epoch < excluded.epoch

-- name: slot_ownership
SELECT slot, state, peer, epoch FROM shardflow.slot_ownership ORDER BY slot
