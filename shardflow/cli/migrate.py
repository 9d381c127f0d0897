"""``shardflow migrate``: apply the schema to every shard and record the cluster identity.

Safe to run again, and from several processes at once: the migrator serializes on an
advisory lock per shard, so a second run applies nothing.

``--create-worker-role NAME`` then creates (if missing) a role with only the grants
workers need, on every shard; its password comes from ``SHARDFLOW_WORKER_ROLE_PASSWORD``
(an environment variable only: a flag would show in ``ps``). See docs/security.md.
"""

from __future__ import annotations

import argparse
import os

from shardflow.cli.options import (
    Subparsers,
    add_command,
    add_json_option,
    add_option,
    load_config,
)
from shardflow.cli.output import note, print_json
from shardflow.sql.migrator import ShardMigration, migrate_cluster
from shardflow.sql.roles import RoleReport, ensure_worker_role

PASSWORD_VARIABLE = "SHARDFLOW_WORKER_ROLE_PASSWORD"


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "migrate",
        help="apply schema migrations to every shard (idempotent)",
    )
    add_option(
        parser,
        "--create-worker-role",
        metavar="NAME",
        help="also create (if missing) a least-privilege role for workers and grant it what"
        f" they need; its password comes from {PASSWORD_VARIABLE}",
    )
    add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    reports = migrate_cluster(config)
    roles: list[RoleReport] = []
    if args.create_worker_role:
        password = os.environ.get(PASSWORD_VARIABLE) or None
        roles = ensure_worker_role(config, args.create_worker_role, password)
    if args.json:
        print_json(
            {
                "cluster": config.name,
                "shards": [
                    {
                        "shard": r.shard,
                        "applied": r.applied,
                        "identity_created": r.identity_created,
                        "schema_version": r.version,
                    }
                    for r in reports
                ],
                "worker_role": None
                if not roles
                else {
                    "name": args.create_worker_role,
                    "shards": [
                        {"shard": r.shard, "created": r.created, "password_set": r.password_set}
                        for r in roles
                    ],
                },
            }
        )
        return 0
    for report in reports:
        print(_describe(report))
    for role in roles:
        created = "created" if role.created else "exists"
        password = ", password set" if role.password_set else ""
        print(f"{role.shard}: worker role {args.create_worker_role} {created}{password}, granted")
    if any(r.created and not r.password_set for r in roles):
        note(f"worker role created without a password: {PASSWORD_VARIABLE} is not set")
    applied = sum(len(r.applied) for r in reports)
    if applied:
        shards = sum(1 for r in reports if r.applied)
        print(f"applied {applied} migration(s) on {shards} shard(s)")
    else:
        print("nothing to apply: every shard is up to date")
    return 0


def _describe(report: ShardMigration) -> str:
    if report.applied:
        versions = ", ".join(f"{v:04d}" for v in report.applied)
        done = f"applied {versions}"
    else:
        done = "up to date"
    identity = ", identity recorded" if report.identity_created else ""
    return f"{report.shard}: {done} (schema version {report.version}{identity})"
