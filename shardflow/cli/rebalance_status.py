"""``shardflow rebalance status``: the epoch, slots per shard, slots in motion, staged
copies, tombstones and the current plan, read from every shard without taking a lock."""

from __future__ import annotations

import argparse
from typing import Any

from shardflow.cli.output import note, print_json, print_table
from shardflow.config import ClusterConfig
from shardflow.rebalance.status import RebalanceStatus, gather_status
from shardflow.router.moves import SlotState


def show_status(config: ClusterConfig, args: argparse.Namespace) -> int:
    status = gather_status(config, grace_seconds=args.tombstone_grace)
    if args.json:
        print_json(status_json(status))
        return 0 if status.problem is None else 1
    counts = status.slots_per_shard
    print(
        f"epoch {status.epoch if status.epoch is not None else '-'}, {status.slots} slots: "
        + (
            "settled"
            if status.settled
            else f"{len(status.live.migrating) if status.live else '?'} slot(s) in motion"
        )
    )
    if status.problem:
        note(status.problem)
    print_table(
        (
            "shard",
            "reachable",
            "map epoch",
            "slots",
            "importing",
            "migrating out",
            "staged",
            "tombstones",
            "purgeable",
        ),
        [
            (
                s.name,
                s.reachable,
                s.map_epoch,
                counts.get(s.name, 0),
                s.ownership.get(SlotState.IMPORTING, 0),
                s.ownership.get(SlotState.MIGRATING_OUT, 0),
                s.staged,
                s.tombstones,
                s.purgeable,
            )
            for s in status.shards
        ],
        numeric=(
            "map epoch",
            "slots",
            "importing",
            "migrating out",
            "staged",
            "tombstones",
            "purgeable",
        ),
    )
    for (source, target), n in sorted(status.in_motion.items()):
        print(f"in motion: {source} -> {target}: {n} slot(s)")
    if status.plan is not None:
        plan = status.plan
        if plan.finished_at is None:
            print(
                f"plan {plan.plan_id} (created {plan.created_at:%Y-%m-%d %H:%M:%S}): in progress,"
                f" {status.plan_remaining} of {plan.moves} slot(s) still to settle"
            )
        else:
            print(
                f"last plan {plan.plan_id}: {plan.outcome} at {plan.finished_at:%Y-%m-%d %H:%M:%S}"
            )
    for s in status.shards:
        if s.problem:
            note(f"{s.name}: {s.problem}")
    return 0 if status.problem is None else 1


def status_json(status: RebalanceStatus) -> dict[str, Any]:
    plan = status.plan
    return {
        "epoch": status.epoch,
        "slots": status.slots,
        "settled": status.settled,
        "problem": status.problem,
        "slots_per_shard": dict(status.slots_per_shard),
        "in_motion": [
            {"source": s, "target": t, "slots": n} for (s, t), n in sorted(status.in_motion.items())
        ],
        "shards": [
            {
                "name": s.name,
                "reachable": s.reachable,
                "problem": s.problem,
                "map_epoch": s.map_epoch,
                "ownership": {state.value: n for state, n in s.ownership.items()},
                "staged": s.staged,
                "tombstones": s.tombstones,
                "purgeable": s.purgeable,
            }
            for s in status.shards
        ],
        "plan": None
        if plan is None
        else {
            "plan_id": plan.plan_id,
            "created_at": plan.created_at,
            "finished_at": plan.finished_at,
            "outcome": plan.outcome,
            "moves": plan.moves,
            "remaining": status.plan_remaining,
        },
    }
