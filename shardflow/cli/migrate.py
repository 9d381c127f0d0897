"""``shardflow migrate``: apply the schema to every shard and record the cluster identity.

Safe to run again, and from several processes at once: the migrator serializes on an
advisory lock per shard, so a second run applies nothing.
"""

from __future__ import annotations

import argparse

from shardflow.cli.options import Subparsers, add_command, add_json_option, load_config
from shardflow.cli.output import print_json
from shardflow.sql.migrator import ShardMigration, migrate_cluster


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "migrate",
        help="apply schema migrations to every shard (idempotent)",
    )
    add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    reports = migrate_cluster(config)
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
            }
        )
        return 0
    for report in reports:
        print(_describe(report))
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
