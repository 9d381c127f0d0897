"""``shardflow route``: which hash, slot and shard each workflow ID maps to."""

from __future__ import annotations

import argparse

from shardflow.cli.options import Subparsers, add_command, add_json_option, load_config
from shardflow.cli.output import note, print_json, print_table, scrub_secrets
from shardflow.config import ClusterConfig
from shardflow.engine import connect
from shardflow.errors import ShardUnavailable
from shardflow.router import Hasher, SlotMap, hash_key
from shardflow.router.slotmap import desired_map


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "route",
        help="show the hash, slot and shard of workflow IDs",
        description=(
            "Show the hash key, route hash, slot and owning shard of each workflow ID, using"
            " the live slot map; if no shard answers, the map computed from the YAML weights."
        ),
    )
    parser.add_argument("workflow_ids", nargs="+", metavar="ID", help="workflow ID")
    add_json_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    ids: list[str] = args.workflow_ids
    if not all(ids):
        raise ValueError("a workflow ID must not be empty")
    slot_map, live = _slot_map(config)
    hasher = Hasher(config.hash.slots, config.hash.seed)
    routes = []
    for workflow_id in ids:
        route_hash, slot = hasher.hash_and_slot(workflow_id)
        routes.append(
            {
                "id": workflow_id,
                "hash_key": hash_key(workflow_id),
                "route_hash": route_hash,
                "slot": slot,
                "shard": slot_map.owner(slot),
            }
        )
    if args.json:
        print_json(
            {
                "map": "live" if live else "config",
                "epoch": slot_map.epoch if live else None,
                "routes": routes,
            }
        )
        return 0
    print_table(
        ("id", "hash key", "route hash", "slot", "shard"),
        [tuple(r.values()) for r in routes],
        numeric=("route hash", "slot"),
    )
    return 0


def _slot_map(config: ClusterConfig) -> tuple[SlotMap, bool]:
    """The live map and True; or, when no shard answers, the map from the weights."""
    try:
        with connect(config) as cluster:
            return cluster.router.slot_map, True
    except ShardUnavailable as exc:
        message = (
            f"no shard reachable ({exc}); routing with the map computed from the config weights"
        )
        note(scrub_secrets(message, [s.dsn for s in config.shards]))
    return desired_map(config), False
