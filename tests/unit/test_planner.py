"""The rebalance planner, the ownership reconciler and the throttle: pure, no database."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from shardflow.errors import RebalanceError
from shardflow.rebalance.live import Ownership, reconcile
from shardflow.rebalance.planner import (
    DesiredShard,
    SlotMove,
    plan_rebalance,
    resume_plan,
    slot_moves,
)
from shardflow.rebalance.progress import RateMeter, Throttle
from shardflow.router.moves import SlotState
from shardflow.router.slotmap import SlotMap, initial_map, quotas


def shards(*spec: tuple[str, int] | tuple[str, int, bool]) -> list[DesiredShard]:
    return [DesiredShard(*s) for s in spec]


THREE = initial_map([("shard0", 1), ("shard1", 1), ("shard2", 1)], 4096)


def test_adding_a_fourth_shard_moves_a_tail_of_each_to_it() -> None:
    plan = plan_rebalance(THREE, shards(("shard0", 1), ("shard1", 1), ("shard2", 1), ("shard3", 1)))
    assert plan.moves == (
        SlotMove(1024, 1365, "shard0", "shard3"),
        SlotMove(2390, 2730, "shard1", "shard3"),
        SlotMove(3755, 4095, "shard2", "shard3"),
    )
    assert plan.moved_slots == 1024
    assert plan.counts_after() == Counter(shard0=1024, shard1=1024, shard2=1024, shard3=1024)
    assert plan.counts_before() == Counter(shard0=1366, shard1=1365, shard2=1365)
    # Only slots that change owner are moves; the rest stay put.
    assert plan.current[:1024] == plan.target[:1024]


def test_draining_gives_every_slot_away_and_the_others_get_exact_quotas() -> None:
    plan = plan_rebalance(THREE, shards(("shard0", 1), ("shard1", 1, True), ("shard2", 1)))
    after = plan.counts_after()
    assert after["shard1"] == 0
    assert after == Counter(quotas([("shard0", 1), ("shard2", 1)], 4096))
    assert plan.moved_slots == 1365
    assert {m.source for m in plan.moves} == {"shard1"}


def test_weight_change_moves_only_the_difference() -> None:
    plan = plan_rebalance(THREE, shards(("shard0", 2), ("shard1", 1), ("shard2", 1)))
    assert plan.counts_after() == Counter(shard0=2048, shard1=1024, shard2=1024)
    assert plan.moved_slots == 2048 - 1366


@pytest.mark.parametrize("seed", range(25))
def test_random_topologies_meet_quotas_exactly_with_the_fewest_moves(seed: int) -> None:
    rng = random.Random(seed)
    slots = rng.choice([64, 256, 4096])
    names = [f"s{i}" for i in range(rng.randint(1, 6))]
    owners = tuple(rng.choice(names) for _ in range(slots))
    current = SlotMap(7, owners)
    desired = [DesiredShard(n, rng.randint(1, 5), rng.random() < 0.2) for n in names]
    desired += [DesiredShard(f"new{i}", rng.randint(1, 3)) for i in range(rng.randint(0, 2))]
    if all(d.draining for d in desired):
        desired[0] = DesiredShard(desired[0].name, 1)
    plan = plan_rebalance(current, desired)
    want = quotas([(d.name, 0 if d.draining else d.weight) for d in desired], slots)
    assert plan.counts_after() == Counter({k: v for k, v in want.items() if v})
    # The minimum: every slot above a shard's quota must move, and no other.
    surplus = sum(max(n - want.get(s, 0), 0) for s, n in Counter(owners).items())
    assert plan.moved_slots == surplus
    assert plan.base_epoch == 7
    # Deterministic.
    assert plan_rebalance(current, desired) == plan
    # Moves are maximal runs that cover exactly the changed slots.
    covered = list(itertools.chain.from_iterable(m.slots for m in plan.moves))
    assert covered == [s for s in range(slots) if plan.current[s] != plan.target[s]]
    for a, b in itertools.pairwise(plan.moves):
        assert not (a.last + 1 == b.first and (a.source, a.target) == (b.source, b.target))


def test_a_balanced_map_plans_nothing() -> None:
    plan = plan_rebalance(THREE, shards(("shard0", 1), ("shard1", 1), ("shard2", 1)))
    assert plan.is_noop and plan.moves == ()


def test_a_shard_that_owns_slots_cannot_leave_the_config() -> None:
    with pytest.raises(RebalanceError, match=r"shard1.*draining"):
        plan_rebalance(THREE, shards(("shard0", 1), ("shard2", 1)))
    with pytest.raises(RebalanceError, match="cannot plan"):
        plan_rebalance(THREE, shards(("shard0", 1, True), ("shard1", 1, True), ("shard2", 1, True)))


def test_resume_plan_continues_to_the_recorded_target() -> None:
    plan = plan_rebalance(THREE, shards(("shard0", 1), ("shard1", 1), ("shard2", 1), ("shard3", 1)))
    halfway = list(THREE.owners)
    for slot in plan.moves[0].slots:
        halfway[slot] = "shard3"
    resumed = resume_plan(SlotMap(5, tuple(halfway)), plan.target)
    assert resumed.moves == plan.moves[1:]
    assert resumed.target == plan.target


def test_slot_moves_groups_runs() -> None:
    assert slot_moves(("a", "a", "a", "b"), ("a", "c", "c", "c")) == (
        SlotMove(1, 2, "a", "c"),
        SlotMove(3, 3, "b", "c"),
    )
    assert SlotMove(3, 3, "b", "c").describe() == "slots 3 (1): b -> c"


# -- reconciling ownership rows ------------------------------------------------------------


def own(
    shard: str, slot: int, state: str = "OWNED", peer: str | None = None, epoch: int = 1
) -> Ownership:
    return Ownership(shard, slot, SlotState(state), peer, epoch)


def test_reconcile_reads_settled_and_moving_slots() -> None:
    rows = [own("a", 0), own("a", 1, "MIGRATING_OUT", "b", 4), own("b", 1, "IMPORTING", "a", 4)]
    rows += [own("b", s) for s in range(2, 64)]
    live = reconcile(rows, 64, epoch=3)
    assert live.owners[:3] == ("a", "b", "b")
    assert dict(live.migrating) == {1: "a"}
    assert live.epoch == 4 and live.repairs == ()
    assert live.pairs() == {("a", "b"): [1]}
    assert live.slot_map().source(1) == "a"


def test_reconcile_names_the_repairs_a_killed_run_left() -> None:
    rows = [own("a", 0), own("b", 0, "IMPORTING", "a")]  # start cut short
    rows += [own("b", 1), own("a", 1, "MIGRATING_OUT", "b")]  # finalize cut short
    rows += [own("a", s) for s in range(2, 64)]
    live = reconcile(rows, 64)
    assert [(r.kind, r.slot, r.source, r.target) for r in live.repairs] == [
        ("start", 0, "a", "b"),
        ("finish", 1, "a", "b"),
    ]
    assert live.owners[:2] == ("b", "b")
    assert dict(live.migrating) == {0: "a"}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "no owner"),
        ([own("a", 0), own("b", 0)], "inconsistent"),
        ([own("a", 0, "MIGRATING_OUT", "b")], "inconsistent"),
        ([own("a", 0, "MIGRATING_OUT", "b"), own("b", 0, "IMPORTING", "c")], "inconsistent"),
    ],
)
def test_reconcile_refuses_what_no_protocol_step_produces(
    rows: list[Ownership], message: str
) -> None:
    full = rows + [own("a", s) for s in range(1, 64)]
    with pytest.raises(RebalanceError, match=message):
        reconcile(full, 64)


# -- the map copy carries the slots in motion ------------------------------------------------


def test_slot_map_round_trips_slots_in_motion() -> None:
    moving = SlotMap(9, THREE.owners, {5: "shard1", 6: "shard1", 7: "shard2", 100: "shard1"})
    again = SlotMap.from_ranges(9, moving.to_json(), 4096, migrating=moving.migrating_json())
    assert moving.migrating_json() == [[5, 6, "shard1"], [7, 7, "shard2"], [100, 100, "shard1"]]
    assert again == moving
    assert again.source(6) == "shard1" and again.source(8) is None


# -- pacing ------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_throttle_holds_the_average_rate() -> None:
    clock = FakeClock()
    throttle = Throttle(100.0, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        throttle.pace(50)
    assert clock.now - 100.0 == pytest.approx(5.0)  # 500 workflows at 100/s
    assert Throttle(None, clock=clock, sleep=clock.sleep).pace(10_000) == 0.0
    with pytest.raises(ValueError):
        Throttle(0)


def test_rate_meter_counts_a_window() -> None:
    clock = FakeClock()
    meter = RateMeter(window=5.0, clock=clock)
    meter.add(100)
    clock.now += 1.0
    meter.add(100)
    assert meter.rate() == pytest.approx(200.0)
    clock.now += 10.0
    assert meter.rate() == 0.0
