-- The worker role: what `shardflow migrate --create-worker-role NAME` runs on each shard
-- (shardflow/sql/roles.py). `{role}`, `{database}` and `{password}` are composed on the
-- client with psycopg.sql (Identifier, Literal): PostgreSQL takes no parameters in these
-- utility statements. `{password}` is a SCRAM-SHA-256 verifier computed by libpq, never
-- the password itself, so the server and its logs never see the clear text.

-- name: role_attributes
SELECT rolsuper, rolcanlogin, rolname = current_user AS is_current_user
FROM pg_roles WHERE rolname = %(role)s

-- name: create_worker_role
CREATE ROLE {role} LOGIN

-- name: set_worker_password
ALTER ROLE {role} WITH LOGIN PASSWORD {password}

-- name: grant_worker_connect
GRANT CONNECT ON DATABASE {database} TO {role}

-- name: grant_worker_schema
GRANT USAGE ON SCHEMA shardflow TO {role}

-- name: grant_worker_read
-- Every table, read-only: identity, slot ownership and map, migrations, plans.
GRANT SELECT ON ALL TABLES IN SCHEMA shardflow TO {role}

-- name: grant_worker_write
-- What running workflows writes: claims, leases, checkpoints, final states, messages,
-- events, children, retention's deletes, activating a staged copy a read comes across,
-- the worker's own row in the live-worker registry (0005), and the leases of queues
-- whose home is this shard (0012).
-- Not the slot tables, the identity, the migrations or the rebalance plans.
GRANT INSERT, UPDATE, DELETE ON
    shardflow.workflow_status, shardflow.step_outputs, shardflow.messages, shardflow.events,
    shardflow.workers, shardflow.queue_leases
TO {role}

-- name: grant_worker_slot_lock
-- Every insert locks the slot_ownership rows it relies on (FOR SHARE, so that a slot
-- transition waits for it; see insert_workflows). Row locks need the UPDATE privilege on
-- some column: this one, which no ownership decision reads, and nothing else.
GRANT UPDATE (updated_at) ON shardflow.slot_ownership TO {role}

-- name: grant_worker_sequences
-- Identity columns (messages.seq) draw from sequences.
GRANT USAGE ON ALL SEQUENCES IN SCHEMA shardflow TO {role}
