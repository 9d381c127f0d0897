"""A least-privilege role for workers: ``shardflow migrate --create-worker-role NAME``.

Workers and clients need to read every shardflow table and to write only the workflow
tables (status, steps, messages, events). They need no DDL, no slot-table writes and no
superuser. Run it as the role that owns the schema (the one ``migrate`` runs as), after
every upgrade too: grants cover the tables that exist when they are given.

Role names travel as :class:`psycopg.sql.Identifier`, never pasted into SQL text. The
password becomes a SCRAM-SHA-256 verifier on the client (libpq's
``PQencryptPasswordConn``) and is sent as a :class:`psycopg.sql.Literal`: PostgreSQL
takes no parameters in ``ALTER ROLE``, and this way the clear text never reaches the
server, its statement log or ``pg_stat_activity``.

An existing role is used only if neither it nor any role it belongs to (directly or
through other roles) holds a power beyond those grants: SUPERUSER, CREATEROLE (a role
that can create roles can grant itself ``pg_execute_server_program``), REPLICATION,
BYPASSRLS, or membership in one of :data:`DANGEROUS_ROLES`. Membership counts whether
or not it is inherited: a member may ``SET ROLE`` to the role.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql

from shardflow.config.model import ClusterConfig, ShardConfig
from shardflow.config.redaction import scrub_dsns
from shardflow.errors import MigrationError
from shardflow.retry import first_line
from shardflow.sql import query
from shardflow.sql.migrator import connect

log = logging.getLogger(__name__)

_GRANTS = (
    "grant_worker_connect",
    "grant_worker_schema",
    "grant_worker_read",
    "grant_worker_write",
    "grant_worker_slot_lock",
    "grant_worker_sequences",
)
_MAX_NAME_BYTES = 63

DANGEROUS_ROLES = (
    "pg_execute_server_program",  # COPY ... TO PROGRAM: a shell as the server's OS user
    "pg_read_server_files",  # COPY FROM / pg_read_file on any server file
    "pg_write_server_files",  # COPY TO any server file
    "pg_read_all_data",  # reads every table of every schema: defeats the grants
    "pg_write_all_data",  # writes every table of every schema: defeats the grants
    "pg_signal_backend",  # cancels or terminates other sessions (other workers, migrate)
    "pg_create_subscription",  # connects out from the server (PostgreSQL 16+)
)
"""Predefined roles a worker role must not belong to."""

_ATTRIBUTES = (
    ("rolsuper", "SUPERUSER"),
    ("rolcreaterole", "CREATEROLE"),
    ("rolreplication", "REPLICATION"),
    ("rolbypassrls", "BYPASSRLS"),
)
# The role and every role it belongs to, directly or through others, with their powers.
# Here rather than in queries/roles.sql only because that file belongs to another change
# in flight; move it there as `worker_role_privileges`.
_ROLE_PRIVILEGES = """
WITH RECURSIVE belongs_to(oid, via) AS (
    SELECT oid, NULL::name FROM pg_roles WHERE rolname = %(role)s
    UNION
    SELECT m.roleid, COALESCE(belongs_to.via, r.rolname)
    FROM belongs_to
    JOIN pg_auth_members m ON m.member = belongs_to.oid
    JOIN pg_roles r ON r.oid = m.roleid
)
SELECT r.rolname, belongs_to.via, r.rolsuper, r.rolcreaterole, r.rolreplication,
       r.rolbypassrls
FROM belongs_to JOIN pg_roles r ON r.oid = belongs_to.oid
ORDER BY belongs_to.via NULLS FIRST, r.rolname
"""


@dataclass(frozen=True, slots=True)
class RoleReport:
    """What happened to the worker role on one shard."""

    shard: str
    created: bool
    password_set: bool


def check_role_name(role: str) -> None:
    """Refuse names PostgreSQL would truncate or that are empty or reserved."""
    if not role or len(role.encode("utf-8")) > _MAX_NAME_BYTES:
        raise MigrationError(f"worker role name must be 1-{_MAX_NAME_BYTES} bytes")
    if role.startswith("pg_") or role.lower() == "public":
        raise MigrationError(f"worker role name {role!r} is reserved by PostgreSQL")


def ensure_worker_role(
    config: ClusterConfig, role: str, password: str | None = None
) -> list[RoleReport]:
    """On every shard: create ``role`` if missing (LOGIN), set its password if one is
    given, and grant it what workers need. Idempotent; safe to run after each migrate."""
    check_role_name(role)
    reports = []
    for shard in config.shards:
        with connect(shard) as conn:
            try:
                reports.append(_ensure_on(conn, shard, role, password))
            except psycopg.errors.InsufficientPrivilege as exc:
                raise MigrationError(
                    f"shard {shard.name!r}: not allowed to manage role {role!r}"
                    f" ({scrub_dsns(first_line(exc), [shard.dsn])}); run migrate as the schema"
                    " owner with CREATEROLE, or create the role yourself and run again without a"
                    " password to grant only"
                ) from exc
            except psycopg.Error as exc:
                raise MigrationError(
                    f"shard {shard.name!r}: {scrub_dsns(first_line(exc), [shard.dsn])}"
                ) from exc
    return reports


def _ensure_on(
    conn: psycopg.Connection[tuple[object, ...]],
    shard: ShardConfig,
    role: str,
    password: str | None,
) -> RoleReport:
    names = {"role": sql.Identifier(role)}
    created = False
    with conn.transaction():
        row = conn.execute(query("role_attributes"), {"role": role}).fetchone()
        if row is not None and row[2]:
            raise MigrationError(
                f"shard {shard.name!r}: role {role!r} is the role migrate connects as;"
                " give workers a role of their own"
            )
        if row is not None:
            problem = _excess_privilege(conn, role)
            if problem:
                raise MigrationError(
                    f"shard {shard.name!r}: role {role!r} {problem}; a worker role needs none"
                    " of that: remove it or give workers another role"
                )
        if row is None:
            try:
                with conn.transaction():
                    conn.execute(sql.SQL(query("create_worker_role")).format(**names))
                created = True
            except psycopg.errors.DuplicateObject:
                pass  # another migrate (or a shard on the same server) created it just now
        if password:
            verifier = conn.pgconn.encrypt_password(
                password.encode("utf-8"), role.encode("utf-8"), b"scram-sha-256"
            )
            statement = sql.SQL(query("set_worker_password")).format(
                password=sql.Literal(verifier.decode("ascii")), **names
            )
            conn.execute(statement)
        database = conn.info.dbname
        for name in _GRANTS:
            conn.execute(sql.SQL(query(name)).format(database=sql.Identifier(database), **names))
    if created:
        log.info("created worker role %s on shard %s", role, shard.name)
    return RoleReport(shard.name, created, bool(password))


def _excess_privilege(conn: psycopg.Connection[tuple[object, ...]], role: str) -> str | None:
    """What makes ``role`` more powerful than a worker role may be, or None."""
    rows = conn.execute(_ROLE_PRIVILEGES, {"role": role}).fetchall()
    for name, via, *flags in rows:
        where = "" if via in (None, name) else f" (through its membership in {via!r})"
        for (_, attribute), held in zip(_ATTRIBUTES, flags, strict=True):
            if held:
                if via is None:
                    return f"has {attribute}"
                return f"belongs to role {name!r}, which has {attribute}{where}"
        if name in DANGEROUS_ROLES:
            return f"is a member of {name}{where}"
    return None
