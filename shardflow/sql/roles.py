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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql

from shardflow.config.model import ClusterConfig, ShardConfig
from shardflow.errors import MigrationError
from shardflow.sql import query
from shardflow.sql.migrator import connect

log = logging.getLogger(__name__)

_GRANTS = (
    "grant_worker_connect",
    "grant_worker_schema",
    "grant_worker_read",
    "grant_worker_write",
    "grant_worker_sequences",
)
_MAX_NAME_BYTES = 63


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
                    f" ({_first_line(exc)}); run migrate as the schema owner with CREATEROLE,"
                    " or create the role yourself and run again without a password to grant"
                    " only"
                ) from exc
            except psycopg.Error as exc:
                raise MigrationError(f"shard {shard.name!r}: {_first_line(exc)}") from exc
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
        if row is not None and (row[0] or row[2]):
            what = "a superuser" if row[0] else "the role migrate connects as"
            raise MigrationError(
                f"shard {shard.name!r}: role {role!r} is {what}; give workers a role of their own"
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


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
