"""Apply the schema to every shard and record the cluster identity.

Each migration runs in its own transaction under a transaction-level advisory lock, so
two ``shardflow migrate`` processes started together serialize per shard: the second
finds the versions recorded and does nothing. The identity and the initial slot
ownership are written the same way. Safe to run again at any time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from shardflow.config.model import ClusterConfig, ShardConfig
from shardflow.config.redaction import scrub_dsns
from shardflow.errors import MigrationError
from shardflow.retry import Backoff, first_line
from shardflow.router.pools import MIGRATOR_LIMITS, dedicated
from shardflow.router.slotmap import SlotMap, desired_map
from shardflow.sql import SCHEMA, Migration, migrations, query
from shardflow.sql.identity import Identity, check_identity

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ShardMigration:
    """What ``migrate`` did on one shard."""

    shard: str
    applied: list[int] = field(default_factory=list)
    identity_created: bool = False
    version: int = 0


def connect(shard: ShardConfig, purpose: str = "migrate") -> psycopg.Connection[tuple[object, ...]]:
    """A connection of the migrator's own to one shard: no session timeouts (an index
    build may rightly take long), keepalives and ``tcp_user_timeout`` all the same.
    Driver errors become :class:`ShardUnavailable` without secrets (see
    :func:`~shardflow.router.pools.dedicated`)."""
    return dedicated(shard, purpose, MIGRATOR_LIMITS, autocommit=False)


def apply_migrations(conn: psycopg.Connection[tuple[object, ...]]) -> list[int]:
    """Apply every migration not yet recorded on this connection's database.

    A migration runs in one transaction under the schema's advisory lock, unless its first
    line is ``-- shardflow: online``: then its statements run one at a time outside a
    transaction (``CREATE INDEX CONCURRENTLY`` cannot run inside one) under a session
    advisory lock, and it is recorded once all of them succeeded. Online migrations are
    written to be idempotent, so a run interrupted halfway is run again whole.
    """
    applied: list[int] = []
    with schema_lock(conn):
        for migration in migrations():
            if migration.sql.startswith(ONLINE_MARKER):
                if _apply_online(conn, migration):
                    applied.append(migration.version)
                continue
            with conn.transaction():
                conn.execute(query("create_schema"))
                conn.execute(query("create_migrations_table"))
                done = {row[0] for row in conn.execute(query("applied_migrations"))}
                if migration.version in done:
                    continue
                log.info("applying migration %04d_%s", migration.version, migration.name)
                conn.execute(migration.sql.encode("utf-8"))
                conn.execute(
                    query("record_migration"),
                    {"version": migration.version, "name": migration.name},
                )
                applied.append(migration.version)
    return applied


@contextmanager
def schema_lock(conn: psycopg.Connection[tuple[object, ...]]) -> Iterator[None]:
    """Hold the shard's migration lock (a session advisory lock) on an autocommit
    connection.

    It is taken by polling ``pg_try_advisory_lock``, never by waiting inside a statement:
    a waiting statement holds a snapshot, and ``CREATE INDEX CONCURRENTLY`` run by the
    migrator holding the lock waits for every older snapshot, so two migrators would
    deadlock.
    """
    previous = conn.autocommit
    conn.autocommit = True
    try:
        backoff = Backoff(0.02, 1.0)
        next_log = time.monotonic() + 5.0
        while not _scalar(conn.execute(query("try_lock_schema_session")).fetchone()):
            if time.monotonic() >= next_log:
                log.info("waiting for another migrator to finish")
                next_log = time.monotonic() + 5.0
            backoff.wait()
        try:
            yield
        finally:
            conn.execute(query("unlock_schema_session"))
    finally:
        conn.autocommit = previous


def _scalar(row: tuple[object, ...] | None) -> object:
    return None if row is None else row[0]


ONLINE_MARKER = "-- shardflow: online"


def _apply_online(conn: psycopg.Connection[tuple[object, ...]], migration: Migration) -> bool:
    """Apply one online migration on an autocommit connection holding the schema lock."""
    done = {row[0] for row in conn.execute(query("applied_migrations"))}
    if migration.version in done:
        return False
    log.info("applying online migration %04d_%s", migration.version, migration.name)
    # A CONCURRENTLY build that was interrupted leaves an INVALID index behind, which IF
    # NOT EXISTS would then take for done.
    for (name,) in conn.execute(query("invalid_indexes")).fetchall():
        conn.execute(
            sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
                sql.Identifier(SCHEMA), sql.Identifier(str(name))
            )
        )
    for statement in _statements(migration.sql):
        conn.execute(statement.encode("utf-8"))
    conn.execute(query("record_migration"), {"version": migration.version, "name": migration.name})
    return True


def _statements(text: str) -> list[str]:
    """The statements of a migration file: split at semicolons that end a line (the
    migrations are written so; none has a semicolon inside a literal or body)."""
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [part.strip() for part in body.split(";\n") if part.strip().rstrip(";").strip()]


def read_identity(conn: psycopg.Connection[tuple[object, ...]]) -> Identity | None:
    """The shard's recorded identity; None if it has none (or no schema yet)."""
    try:
        with conn.transaction():
            row = conn.execute(query("get_identity")).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return None if row is None else Identity.from_row(row)


def _existing_map(
    config: ClusterConfig, conns: dict[str, psycopg.Connection[tuple[object, ...]]]
) -> SlotMap | None:
    best: SlotMap | None = None
    for conn in conns.values():
        with conn.transaction():
            row = conn.execute(query("get_slot_map")).fetchone()
        if row is None:
            continue
        epoch, ranges = int(str(row[0])), row[1]
        if best is None or epoch > best.epoch:
            assert isinstance(ranges, list)
            best = SlotMap.from_ranges(epoch, ranges, config.hash.slots)
    return best


def migrate_cluster(config: ClusterConfig) -> list[ShardMigration]:
    """Migrate every shard of ``config`` and record identity and slot ownership.

    A brand-new cluster gets the initial slot map computed from the weights; a shard added
    to an existing cluster gets its identity, a copy of the live map and no slots (the
    rebalancer gives it its share).
    """
    conns: dict[str, psycopg.Connection[tuple[object, ...]]] = {}
    reports: list[ShardMigration] = []
    try:
        for shard in config.shards:
            conns[shard.name] = connect(shard)
        for shard in config.shards:
            conn = conns[shard.name]
            report = ShardMigration(shard.name)
            # Refuse another cluster's database before touching its schema.
            identity = read_identity(conn)
            if identity is not None:
                check_identity(config, shard.name, identity)
            try:
                report.applied = apply_migrations(conn)
            except psycopg.Error as exc:
                raise MigrationError(
                    f"shard {shard.name!r}: {scrub_dsns(first_line(exc), [shard.dsn])}"
                ) from exc
            reports.append(report)

        live = _existing_map(config, conns)
        slot_map = live or desired_map(config)
        for shard, report in zip(config.shards, reports, strict=True):
            report.identity_created = _record_identity(conns[shard.name], config, shard, slot_map)
            with conns[shard.name].transaction():
                row = conns[shard.name].execute(query("schema_version")).fetchone()
            report.version = int(str(row[0])) if row else 0
        return reports
    except psycopg.OperationalError as exc:
        message = scrub_dsns(first_line(exc), [shard.dsn for shard in config.shards])
        raise MigrationError(f"lost a shard during migration: {message}") from exc
    except psycopg.Error as exc:
        message = scrub_dsns(first_line(exc), [shard.dsn for shard in config.shards])
        raise MigrationError(f"migration failed: {message}") from exc
    finally:
        for conn in conns.values():
            conn.close()


def _record_identity(
    conn: psycopg.Connection[tuple[object, ...]],
    config: ClusterConfig,
    shard: ShardConfig,
    slot_map: SlotMap,
) -> bool:
    with schema_lock(conn), conn.transaction():
        row = conn.execute(query("get_identity")).fetchone()
        if row is not None:
            check_identity(config, shard.name, Identity.from_row(row))
            return False
        conn.execute(
            query("insert_identity"),
            {
                "cluster_name": config.name,
                "shard_name": shard.name,
                "slots": config.hash.slots,
                "hash_seed": config.hash.seed,
            },
        )
        # A shard in the map owns its slots of it; a shard added to a live cluster is in
        # no map yet and starts empty. Deterministic, so racing migrators agree.
        conn.execute(
            query("insert_owned_slots"),
            {"slots": slot_map.slots_of(shard.name), "epoch": slot_map.epoch},
        )
        conn.execute(
            query("put_slot_map"), {"epoch": slot_map.epoch, "ranges": Jsonb(slot_map.to_json())}
        )
        log.info("recorded identity of shard %s (cluster %s)", shard.name, config.name)
        return True
