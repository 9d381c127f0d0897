"""``rebalance status``: the epoch, slots per shard, slots in motion, staged copies,
tombstones and the recorded plan, gathered from every shard without taking the lock."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import psycopg

from shardflow.config.model import ClusterConfig
from shardflow.errors import RebalanceError, ShardflowError
from shardflow.rebalance.link import PlanRecord, ShardLink
from shardflow.rebalance.live import LiveMap, Ownership, reconcile
from shardflow.rebalance.planner import owners_from_ranges
from shardflow.retry import first_line
from shardflow.router.moves import SlotState


@dataclass(slots=True)
class ShardStatus:
    """One shard's part: its map copy's epoch, its ownership rows by state, and the
    rows the rebalancer leaves behind."""

    name: str
    reachable: bool
    problem: str | None = None
    map_epoch: int | None = None
    ownership: Counter[SlotState] = field(default_factory=Counter)
    staged: int = 0
    tombstones: int = 0
    purgeable: int = 0


@dataclass(slots=True)
class RebalanceStatus:
    """The cluster as the rebalancer sees it."""

    epoch: int | None
    slots: int
    shards: list[ShardStatus]
    live: LiveMap | None = None
    problem: str | None = None  # the live map could not be read (see the shards' problems)
    plan: PlanRecord | None = None  # the newest recorded plan
    plan_remaining: int | None = None  # its slots not yet settled on their target

    @property
    def slots_per_shard(self) -> Counter[str]:
        return Counter(self.live.owners) if self.live else Counter()

    @property
    def in_motion(self) -> dict[tuple[str, str], int]:
        if self.live is None:
            return {}
        return {pair: len(slots) for pair, slots in self.live.pairs().items()}

    @property
    def settled(self) -> bool:
        """No slot in motion, no staged copy, no unfinished plan."""
        return (
            self.live is not None
            and not self.live.migrating
            and not self.live.repairs
            and all(s.staged == 0 for s in self.shards)
            and (self.plan is None or self.plan.finished_at is not None)
        )


def gather_status(config: ClusterConfig, *, grace_seconds: float = 3600.0) -> RebalanceStatus:
    """Read every shard; a shard that cannot be read is reported, not fatal."""
    reports: list[ShardStatus] = []
    rows: list[Ownership] = []
    epoch = 0
    plans: dict[str, PlanRecord] = {}
    for shard in config.shards:
        report = ShardStatus(shard.name, reachable=False)
        reports.append(report)
        try:
            link = ShardLink(shard, purpose="rebalance-status", connect_timeout=5)
        except ShardflowError as exc:
            report.problem = str(exc)
            continue
        try:
            report.reachable = True
            owned = link.ownership()
            rows.extend(owned)
            report.ownership = Counter(o.state for o in owned)
            copy = link.slot_map(config.hash.slots)
            report.map_epoch = copy.epoch if copy else None
            epoch = max(epoch, copy.epoch if copy else 0)
            report.staged, report.tombstones, report.purgeable = link.row_counts(grace_seconds)
            for record in link.plans(limit=1):
                seen = plans.get(record.plan_id)
                if seen is None or (seen.finished_at is None and record.finished_at):
                    plans[record.plan_id] = record
        except psycopg.Error as exc:
            report.problem = first_line(exc)
        finally:
            link.close()
    status = RebalanceStatus(epoch or None, config.hash.slots, reports)
    if any(not r.reachable or r.problem for r in reports):
        status.problem = "not every shard answered; the live map is incomplete"
    else:
        try:
            status.live = reconcile(rows, config.hash.slots, epoch)
            status.epoch = status.live.epoch
        except RebalanceError as exc:
            status.problem = str(exc)
    if plans:
        status.plan = max(plans.values(), key=lambda p: p.created_at)
        if status.live is not None and status.plan.finished_at is None:
            target = owners_from_ranges(status.plan.target, config.hash.slots)
            status.plan_remaining = sum(
                1
                for slot, owner in enumerate(status.live.owners)
                if owner != target[slot] or slot in status.live.migrating
            )
    return status
