"""The rules of moving a workflow between shards, as pure functions (no I/O).

Two parts of shardflow meet a move in progress and must judge it the same way: the
client (:meth:`shardflow.Cluster.get` reading a staged copy) and the rebalancer
(:func:`shardflow.rebalance.mover.recover_staged`). Both ask :func:`copy_verdict`.
docs/rebalancing.md ("Recovery rule", "Crash table") is the prose of this module;
tests/unit/test_moves.py checks the two row by row.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class SlotState(enum.StrEnum):
    """How a shard holds a slot: ``slot_ownership.state`` (the values of its CHECK
    constraint). A slot with no row on a shard is not that shard's."""

    OWNED = "OWNED"  # this shard holds the slot and creates its new workflows
    IMPORTING = "IMPORTING"  # the slot is moving here from ``peer``
    MIGRATING_OUT = "MIGRATING_OUT"  # the slot is leaving for ``peer``


# The two ``workflow_status.state`` values the move protocol writes (they are also
# members of the engine's WorkflowState, which the router may not import).
TOMBSTONE = "MOVED"  # the source's row once the move is decided (moved_to, move_id)
STAGED = "IMPORTING"  # the target's non-runnable copy until it is activated


class Verdict(enum.StrEnum):
    """What to do with a staged copy."""

    ACTIVATE = "activate"  # the move was decided: the copy is the workflow
    DISCARD = "discard"  # the move was not decided: the source's row is the workflow
    UNRESOLVED = "unresolved"  # unsure: keep the copy, ask again later


@dataclass(frozen=True, slots=True)
class SourceRow:
    """The source's row of a workflow that has a staged copy elsewhere: its
    ``workflow_status.state`` and ``move_id`` (set on a tombstone)."""

    state: str
    move_id: str | None = None

    @property
    def is_live(self) -> bool:
        """A row that is the workflow itself (not a tombstone, not a staged copy)."""
        return self.state not in (TOMBSTONE, STAGED)


def copy_verdict(copy_move_id: str | None, source: SourceRow | None) -> Verdict:
    """The verdict on a staged copy made by move ``copy_move_id``, given its source's row.

    ``source`` is None when the source has no row for the workflow, cannot be reached,
    or someone holds the row right now (the rebalancer reads it ``FOR SHARE SKIP
    LOCKED``): then nobody can be sure, and data is never deleted when unsure.

    ======================================  ==========
    the source's row                        verdict
    ======================================  ==========
    a tombstone with the copy's move_id     ACTIVATE
    live                                    DISCARD
    a tombstone of another move             DISCARD
    a staged copy itself (moving in)        UNRESOLVED
    none (absent, unreachable, busy)        UNRESOLVED
    ======================================  ==========
    """
    if source is None or source.state == STAGED:
        return Verdict.UNRESOLVED
    if source.is_live:
        return Verdict.DISCARD
    if copy_move_id is not None and source.move_id == copy_move_id:
        return Verdict.ACTIVATE
    return Verdict.DISCARD  # a tombstone of another move: this one was not decided
