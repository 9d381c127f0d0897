"""``shardflow topology show``: the shards, their slots in the live map, and who answers."""

from __future__ import annotations

import argparse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from shardflow.cli.options import Subparsers, add_command, add_json_option, load_config
from shardflow.cli.output import note, print_json, print_table, scrub_secrets
from shardflow.config import ClusterConfig
from shardflow.engine import Cluster, connect
from shardflow.errors import ShardUnavailable
from shardflow.router import SlotMap
from shardflow.router.slotmap import desired_map


@dataclass(frozen=True, slots=True)
class ShardView:
    """One shard as ``topology show`` reports it."""

    name: str
    dsn: str
    weight: int
    state: str
    slots: int
    reachable: bool
    problem: str | None
    # The shard's own ownership records by state (OWNED, IMPORTING, MIGRATING_OUT).
    ownership: dict[str, int] | None


def register(subparsers: Subparsers) -> None:
    parser = add_command(subparsers, "topology", help="inspect the cluster topology")
    actions = parser.add_subparsers(dest="topology_command", metavar="ACTION", required=True)
    show = add_command(
        actions,
        "show",
        help="shards, slots owned in the live map, reachability and the map epoch",
    )
    add_json_option(show)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    slot_map, views = inspect(config)
    epoch = slot_map.epoch if slot_map is not None else None
    dsns = [s.dsn for s in config.shards]
    for view in views:
        if view.problem:
            note(scrub_secrets(f"{view.name}: {view.problem}", dsns))
    if args.json:
        print_json(
            {
                "cluster": config.name,
                "slots": config.hash.slots,
                "epoch": epoch,
                "map": "live" if slot_map is not None else "config",
                "shards": [_as_json(v) for v in views],
            }
        )
        return 0
    print_table(
        ("shard", "dsn", "weight", "state", "slots", "reachable"),
        [(v.name, v.dsn, v.weight, v.state, v.slots, v.reachable) for v in views],
        title=f"cluster {config.name}",
        numeric=("weight", "slots"),
        keep=("shard",),
    )
    source = f"live slot map epoch {epoch}" if epoch is not None else "slots from config weights"
    print(f"{source}; {sum(v.slots for v in views)} of {config.hash.slots} slots assigned")
    return 0


def inspect(config: ClusterConfig) -> tuple[SlotMap | None, list[ShardView]]:
    """The live slot map (None if no shard answers) and a view of every shard."""
    try:
        cluster = connect(config)
    except ShardUnavailable as exc:
        # Connecting fails this way only when no shard gave a slot map: all are down.
        message = f"no shard reachable ({exc}); slots shown are computed from the config weights"
        note(scrub_secrets(message, [s.dsn for s in config.shards]))
        return None, _views(config, desired_map(config), {})
    with cluster:
        return cluster.router.slot_map, _views(config, cluster.router.slot_map, _probe_all(cluster))


def _probe_all(cluster: Cluster) -> dict[str, dict[str, int] | ShardUnavailable]:
    """Each shard's slot-ownership counts, or why it did not answer. In parallel, so one
    dead shard costs one timeout, not one per shard."""

    def probe(shard: str) -> dict[str, int] | ShardUnavailable:
        try:
            return dict(Counter(row.state for row in cluster.store.owned_slots(shard)))
        except ShardUnavailable as exc:
            return exc

    names = cluster.config.shard_names
    with ThreadPoolExecutor(max(len(names), 1)) as pool:
        return dict(zip(names, pool.map(probe, names), strict=True))


def _views(
    config: ClusterConfig,
    slot_map: SlotMap,
    probes: dict[str, dict[str, int] | ShardUnavailable],
) -> list[ShardView]:
    counts = slot_map.counts()
    views = []
    for shard in config.shards:
        found = probes.get(shard.name)
        reachable = isinstance(found, dict)
        if isinstance(found, ShardUnavailable):
            problem: str | None = f"unreachable: {found.reason}"
        else:
            problem = None if reachable else "unreachable"
        views.append(
            ShardView(
                name=shard.name,
                dsn=shard.redacted_dsn,
                weight=shard.weight,
                state=shard.state.value,
                slots=counts.get(shard.name, 0),
                reachable=reachable,
                problem=problem,
                ownership=found if isinstance(found, dict) else None,
            )
        )
    return views


def _as_json(view: ShardView) -> dict[str, object]:
    return {
        "name": view.name,
        "dsn": view.dsn,
        "weight": view.weight,
        "state": view.state,
        "slots": view.slots,
        "reachable": view.reachable,
        "error": view.problem,
        "ownership": view.ownership,
    }
