"""Online rebalancing: plan slot moves, move idle workflows between shards, report.

- :mod:`~shardflow.rebalance.planner`: desired topology vs. live map -> minimal plan (pure).
- :mod:`~shardflow.rebalance.live`: slot-ownership rows -> live map and repairs (pure).
- :mod:`~shardflow.rebalance.mover`: the per-workflow move protocol and recovery (SQL).
- :mod:`~shardflow.rebalance.link`: one shard as the rebalancer reaches it (SQL).
- :mod:`~shardflow.rebalance.apply`: :class:`Rebalancer`, which carries a plan out.
- :mod:`~shardflow.rebalance.status`: what is in motion, staged, tombstoned.

See docs/rebalancing.md for the protocol and its crash table.
"""

from __future__ import annotations

from shardflow.rebalance.apply import ApplyOptions, ApplyResult, Prepared, Rebalancer
from shardflow.rebalance.planner import DesiredShard, Plan, SlotMove, plan_rebalance
from shardflow.rebalance.progress import Progress

__all__ = [
    "ApplyOptions",
    "ApplyResult",
    "DesiredShard",
    "Plan",
    "Prepared",
    "Progress",
    "Rebalancer",
    "SlotMove",
    "plan_rebalance",
]
