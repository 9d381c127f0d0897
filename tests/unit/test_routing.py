"""Routing without a database: ID -> hash key -> route hash -> slot -> shard.

The vectors below were computed once with an independent pure-Python MurmurHash3 x86_32
(checked against ``mmh3`` and the published values for "" and the quick brown fox), not
with shardflow, and are hard-coded. ``routing_vectors.json`` holds the same table for
implementations in other languages (see docs/routing.md).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import mmh3
import pytest

from shardflow.errors import RoutingError
from shardflow.router import (
    Hasher,
    Router,
    SlotMap,
    SlotRange,
    hash_key,
    initial_map,
    quotas,
    route_hash,
    slot_of_hash,
)
from shardflow.router.hashing import MAX_SLOTS, MIN_SLOTS, home_shard, slot_bits

VECTORS_FILE = Path(__file__).with_name("routing_vectors.json")
ALL_SLOT_COUNTS = [2**bits for bits in range(6, 17)]  # 64 .. 65536


class Vector(NamedTuple):
    workflow_id: str
    seed: int
    slots: int
    hash_key: str
    route_hash: int
    slot: int


# fmt: off
VECTORS = [
    Vector("", 0, 4096, "", 0, 0),
    Vector("a", 0, 4096, "a", 1009084850, 962),
    Vector("ab", 0, 4096, "ab", 2613040991, 2491),
    Vector("abc", 0, 4096, "abc", 3017643002, 2877),
    Vector("abcd", 0, 4096, "abcd", 1139631978, 1086),
    Vector("abcde", 0, 4096, "abcde", 3902511862, 3721),
    Vector("order-1", 0, 4096, "order-1", 4117911073, 3927),
    Vector("order-2", 0, 4096, "order-2", 1101609887, 1050),
    Vector("wf-00000001", 0, 4096, "wf-00000001", 1902326718, 1814),
    Vector("3f2504e0-4f89-41d3-9a0c-0305e82c3301", 0, 4096,
           "3f2504e0-4f89-41d3-9a0c-0305e82c3301", 1924225739, 1835),
    # Hash tags: the text inside the first non-empty {...} is hashed.
    Vector("{tenant-7}:order-1", 0, 4096, "tenant-7", 1025559815, 978),
    Vector("{tenant-7}:order-2", 0, 4096, "tenant-7", 1025559815, 978),
    Vector("tenant-7", 0, 4096, "tenant-7", 1025559815, 978),
    Vector("{}x", 0, 4096, "{}x", 790113994, 753),  # empty tag: whole ID
    Vector("a{b}c{d}", 0, 4096, "b", 2514386435, 2397),  # first tag only
    Vector("b", 0, 4096, "b", 2514386435, 2397),
    Vector("{", 0, 4096, "{", 3455799985, 3295),  # unclosed: whole ID
    Vector("x{unclosed", 0, 4096, "x{unclosed", 1797544203, 1714),
    Vector("}{", 0, 4096, "}{", 2757690390, 2629),  # '}' before '{' does not close
    Vector("{}{a}", 0, 4096, "{}{a}", 3849135981, 3670),  # first tag empty: whole ID
    Vector("{{a}}", 0, 4096, "{a", 1654508133, 1577),  # first '{', first '}' after it
    # Non-ASCII: hashed as UTF-8 bytes.
    Vector("züge-€-1", 0, 4096, "züge-€-1", 43221243, 41),
    Vector("{züge}-€-2", 0, 4096, "züge", 3231697828, 3081),
    Vector("日本語-ワークフロー", 0, 4096, "日本語-ワークフロー", 4140104598, 3948),
    Vector("emoji-🚀", 0, 4096, "emoji-🚀", 4083783077, 3894),
    Vector("The quick brown fox jumps over the lazy dog", 0, 4096,
           "The quick brown fox jumps over the lazy dog", 776992547, 740),
    # Seed 42.
    Vector("order-1", 42, 4096, "order-1", 3647140269, 3478),
    Vector("{tenant-7}:order-1", 42, 4096, "tenant-7", 1712900815, 1633),
    Vector("züge-€-1", 42, 4096, "züge-€-1", 1492562122, 1423),
    Vector("", 42, 4096, "", 142593372, 135),
    # Other slot counts: the same hash, more or fewer top bits.
    Vector("order-1", 0, 64, "order-1", 4117911073, 61),
    Vector("{tenant-7}:order-1", 0, 64, "tenant-7", 1025559815, 15),
    Vector("züge-€-1", 0, 64, "züge-€-1", 43221243, 0),
    Vector("order-1", 0, 65536, "order-1", 4117911073, 62834),
    Vector("{tenant-7}:order-1", 0, 65536, "tenant-7", 1025559815, 15648),
    Vector("züge-€-1", 0, 65536, "züge-€-1", 43221243, 659),
    Vector("order-1", 42, 65536, "order-1", 3647140269, 55650),
    Vector("a{b}c{d}", 42, 64, "b", 861554165, 12),
]
# fmt: on


def vector_id(v: Vector) -> str:
    return f"{v.workflow_id!r}-seed{v.seed}-slots{v.slots}"


# --- published vectors -------------------------------------------------------------------


@pytest.mark.parametrize("v", VECTORS, ids=vector_id)
def test_vector(v: Vector) -> None:
    hasher = Hasher(v.slots, v.seed)
    assert hash_key(v.workflow_id) == v.hash_key
    assert route_hash(v.workflow_id, v.seed) == v.route_hash
    assert mmh3.hash(v.hash_key.encode("utf-8"), v.seed, signed=False) == v.route_hash
    assert slot_of_hash(v.route_hash, v.slots) == v.slot
    assert hasher.route_hash(v.workflow_id) == v.route_hash
    assert hasher.slot(v.workflow_id) == v.slot
    assert hasher.hash_and_slot(v.workflow_id) == (v.route_hash, v.slot)


def test_vectors_cover_the_cases_other_languages_get_wrong() -> None:
    seed0_4096 = [v for v in VECTORS if v.seed == 0 and v.slots == 4096]
    assert len(seed0_4096) >= 16
    assert {v.seed for v in VECTORS} == {0, 42}
    assert {v.slots for v in VECTORS} == {64, 4096, 65536}
    assert any(not v.workflow_id.isascii() for v in VECTORS)  # UTF-8, multi-byte
    assert any(v.route_hash >= 2**31 for v in VECTORS)  # would be negative if signed


def test_vectors_file_matches_the_table() -> None:
    doc = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
    from_file = [
        Vector(
            row["workflow_id"],
            row["seed"],
            row["slots"],
            row["hash_key"],
            row["route_hash"],
            row["slot"],
        )
        for row in doc["vectors"]
    ]
    assert from_file == VECTORS
    for row in doc["vectors"]:
        assert bytes.fromhex(row["hash_key_utf8"]).decode("utf-8") == row["hash_key"]


def redis_hash_key(key: str) -> str:
    """Reference: Redis Cluster's keyHashSlot tag rule, scanned one character at a time."""
    for start, ch in enumerate(key):
        if ch == "{":
            for end in range(start + 1, len(key)):
                if key[end] == "}":
                    return key[start + 1 : end] if end > start + 1 else key
            return key
    return key


def test_hash_key_follows_the_redis_rule_on_brace_heavy_ids() -> None:
    rng = random.Random(3)
    hasher = Hasher(4096, 0)
    for _ in range(20_000):
        wid = "".join(rng.choice("{}{}ab€") for _ in range(rng.randint(0, 8)))
        key = redis_hash_key(wid)
        assert hash_key(wid) == key, wid
        expected = mmh3.hash(key.encode("utf-8"), 0, signed=False)
        assert hasher.route_hash(wid) == route_hash(wid) == expected, wid


def test_hash_tagged_ids_route_to_the_same_shard() -> None:
    router = Router(Hasher(4096, 0), initial_map([("s0", 1), ("s1", 1), ("s2", 2)], 4096))
    assert router.route("{t}:a") == router.route("{t}:b") == router.route("t")
    assert router.hash_and_route("{t}:a") == router.hash_and_route("{t}:b")
    for tenant in (f"tenant-{i}" for i in range(200)):
        shards = {router.route(f"{{{tenant}}}:order-{n}") for n in range(20)}
        assert shards == {router.route(tenant)}


# --- slots are the top bits of the hash ---------------------------------------------------


@pytest.mark.parametrize("slots", ALL_SLOT_COUNTS)
def test_slot_is_the_top_bits(slots: int) -> None:
    rng = random.Random(slots)
    width = 2**32 // slots
    hashes = [0, 2**32 - 1, 2**31, 2**31 - 1] + [rng.getrandbits(32) for _ in range(10_000)]
    for h in hashes:
        assert slot_of_hash(h, slots) == h // width
    assert slot_of_hash(2**32 - 1, slots) == slots - 1


@pytest.mark.parametrize("slots", [64, 4096, 65536])
def test_each_slot_is_one_contiguous_hash_range(slots: int) -> None:
    width = 2**32 // slots
    for k in range(slots):
        first, last = k * width, (k + 1) * width - 1
        assert slot_of_hash(first, slots) == k
        assert slot_of_hash(last, slots) == k
        if k:
            assert slot_of_hash(first - 1, slots) == k - 1


@pytest.mark.parametrize("slots", ALL_SLOT_COUNTS[:-1])
def test_doubling_slots_splits_slot_k_into_2k_and_2k_plus_1(slots: int) -> None:
    rng = random.Random(slots)
    for h in [rng.getrandbits(32) for _ in range(10_000)]:
        k = slot_of_hash(h, slots)
        assert slot_of_hash(h, 2 * slots) in (2 * k, 2 * k + 1)
    width = 2**32 // slots
    for k in rng.sample(range(slots), 16):
        # Lower half of slot k -> 2k, upper half -> 2k + 1.
        assert slot_of_hash(k * width, 2 * slots) == 2 * k
        assert slot_of_hash(k * width + width // 2 - 1, 2 * slots) == 2 * k
        assert slot_of_hash(k * width + width // 2, 2 * slots) == 2 * k + 1
        assert slot_of_hash((k + 1) * width - 1, 2 * slots) == 2 * k + 1


@pytest.mark.parametrize("slots", ALL_SLOT_COUNTS)
def test_slot_bits_accepts_powers_of_two_in_range(slots: int) -> None:
    assert 2 ** slot_bits(slots) == slots
    assert Hasher(slots, 0).slots == slots


@pytest.mark.parametrize(
    "slots", [-4096, 0, 1, 2, 32, MIN_SLOTS - 1, 100, 4095, 4097, 6144, MAX_SLOTS + 1, 2**17]
)
def test_slot_bits_rejects_bad_slot_counts(slots: int) -> None:
    with pytest.raises(RoutingError):
        slot_bits(slots)
    with pytest.raises(RoutingError):
        Hasher(slots, 0)
    with pytest.raises(RoutingError):
        slot_of_hash(0, slots)


# --- quotas and the initial map -----------------------------------------------------------


def test_quotas_follow_weights_exactly() -> None:
    assert quotas([("s0", 1), ("s1", 1), ("s2", 2)], 4096) == {"s0": 1024, "s1": 1024, "s2": 2048}


def test_quotas_largest_remainder_ties_go_to_earlier_shards() -> None:
    # 4096 / 3 = 1365 r 1: equal remainders, the first shard gets the spare slot.
    assert quotas([("s0", 1), ("s1", 1), ("s2", 1)], 4096) == {"s0": 1366, "s1": 1365, "s2": 1365}
    # 64 / 6 = 10 r 4: the first four shards get one more.
    six = [(f"s{i}", 1) for i in range(6)]
    assert list(quotas(six, 64).values()) == [11, 11, 11, 11, 10, 10]
    # 64 * 1/3 = 21.33, 64 * 2/3 = 42.67: the larger remainder wins, not the earlier shard.
    assert quotas([("s0", 1), ("s1", 2)], 64) == {"s0": 21, "s1": 43}


def test_quotas_sum_to_the_slot_count() -> None:
    rng = random.Random(7)
    for _ in range(500):
        slots = rng.choice(ALL_SLOT_COUNTS)
        weights = [(f"s{i}", rng.randint(0, 1000)) for i in range(rng.randint(1, 40))]
        weights[0] = ("s0", max(weights[0][1], 1))
        got = quotas(weights, slots)
        assert sum(got.values()) == slots
        total = sum(w for _, w in weights)
        for name, weight in weights:
            if weight:
                # Largest remainder never moves a shard more than one slot from its share.
                assert abs(got[name] - slots * weight / total) < 1
            else:
                assert name not in got


def test_zero_weight_shards_get_no_slots() -> None:
    weights = [("s0", 1), ("draining", 0), ("s2", 1)]
    assert quotas(weights, 4096) == {"s0": 2048, "s2": 2048}
    slot_map = initial_map(weights, 4096)
    assert slot_map.counts() == {"s0": 2048, "s2": 2048}
    assert slot_map.slots_of("draining") == []


def test_all_zero_weights_raise() -> None:
    with pytest.raises(RoutingError):
        quotas([("s0", 0), ("s1", 0)], 4096)
    with pytest.raises(RoutingError):
        initial_map([], 4096)


def test_initial_map_is_contiguous_ranges_in_shard_order() -> None:
    slot_map = initial_map([("s0", 1), ("s1", 1), ("s2", 2)], 4096)
    assert slot_map.epoch == 1
    assert slot_map.slots == 4096
    assert slot_map.ranges() == [
        SlotRange(0, 1023, "s0"),
        SlotRange(1024, 2047, "s1"),
        SlotRange(2048, 4095, "s2"),
    ]
    assert slot_map.owner(0) == "s0"
    assert slot_map.owner(1024) == "s1"
    assert slot_map.owner(4095) == "s2"
    assert [r.size for r in slot_map.ranges()] == [1024, 1024, 2048]
    # Order follows the YAML, not the names or the weights.
    assert [r.shard for r in initial_map([("z", 3), ("a", 1), ("m", 2)], 64).ranges()] == [
        "z",
        "a",
        "m",
    ]


def test_initial_map_is_deterministic() -> None:
    weights = [("s0", 3), ("s1", 5), ("s2", 7), ("s3", 0), ("s4", 1)]
    assert initial_map(weights, 65536) == initial_map(list(weights), 65536)
    assert initial_map(weights, 4096, epoch=9).epoch == 9


def test_slot_map_json_round_trip() -> None:
    initial = initial_map([("s0", 1), ("s1", 1), ("s2", 1)], 4096, epoch=3)
    assert initial.to_json() == [[0, 1365, "s0"], [1366, 2730, "s1"], [2731, 4095, "s2"]]
    # A map after some moves: ranges are maximal runs, a shard may own several.
    moved = SlotMap(4, ("a", "a", "b", "a", "c", "c", "c", "a"))
    assert moved.to_json() == [[0, 1, "a"], [2, 2, "b"], [3, 3, "a"], [4, 6, "c"], [7, 7, "a"]]
    for slot_map in (initial, moved):
        wire = json.loads(json.dumps(slot_map.to_json()))
        assert SlotMap.from_ranges(slot_map.epoch, wire, slot_map.slots) == slot_map
        ranges = [(r.first, r.last, r.shard) for r in slot_map.ranges()]
        assert SlotMap.from_ranges(slot_map.epoch, ranges, slot_map.slots) == slot_map


def test_slot_map_from_ranges_with_a_gap_raises() -> None:
    with pytest.raises(RoutingError, match="slot 10"):
        SlotMap.from_ranges(2, [[0, 9, "s0"], [11, 63, "s1"]], 64)
    with pytest.raises(RoutingError, match="slot 60"):
        SlotMap.from_ranges(2, [[0, 59, "s0"]], 64)


# --- the router ---------------------------------------------------------------------------


def test_one_million_ids_spread_by_quota() -> None:
    router = Router(Hasher(4096, 0), initial_map([("s0", 1), ("s1", 1), ("s2", 2)], 4096))
    n = 1_000_000
    rng = random.Random(20240601)
    text = rng.randbytes(16 * n).hex()
    ids = [text[i : i + 32] for i in range(0, 32 * n, 32)]

    slot_counts = Counter(map(router.hasher.slot, ids))
    per_shard = Counter[str]()
    for slot, count in slot_counts.items():
        per_shard[router.slot_map.owner(slot)] += count

    assert per_shard.total() == n
    for shard, share in {"s0": 0.25, "s1": 0.25, "s2": 0.50}.items():
        assert abs(per_shard[shard] / n - share) <= 0.01 * share, (shard, per_shard[shard])
    # Router.route is the same computation.
    assert [router.route(i) for i in ids[:10_000]] == [
        router.slot_map.owner(router.hasher.slot(i)) for i in ids[:10_000]
    ]


def test_router_hash_and_route_matches_the_vectors() -> None:
    slot_map = initial_map([("s0", 1), ("s1", 1), ("s2", 2)], 4096)
    router = Router(Hasher(4096, 0), slot_map)
    for v in VECTORS:
        if v.seed == 0 and v.slots == 4096:
            assert router.hash_and_route(v.workflow_id) == (
                v.route_hash,
                v.slot,
                slot_map.owner(v.slot),
            )
            assert router.route(v.workflow_id) == slot_map.owner(v.slot)


def test_router_update_adopts_only_newer_epochs() -> None:
    old = initial_map([("s0", 1), ("s1", 1)], 64, epoch=5)
    router = Router(Hasher(64, 0), old)
    # "order-1" hashes to slot 61 at 64 slots (see VECTORS): s1's half.
    assert router.route("order-1") == "s1"

    moved = SlotMap(6, (*old.owners[:61], "s0", *old.owners[62:]))
    stale = SlotMap(4, ("s0",) * 64)
    same_epoch = SlotMap(6, ("s1",) * 64)

    assert router.update(stale) is False
    assert router.epoch == 5
    assert router.route("order-1") == "s1"

    assert router.update(moved) is True
    assert router.epoch == 6
    assert router.slot_map is moved
    assert router.route("order-1") == "s0"

    assert router.update(same_epoch) is False
    assert router.update(moved) is False
    assert router.slot_map is moved
    assert router.route("order-1") == "s0"


def test_an_id_that_is_not_valid_unicode_raises_instead_of_crashing() -> None:
    # A lone surrogate has no UTF-8 form. The router encodes before hashing, so this is a
    # Python exception; mmh3 5.3.1 handed the str itself segfaults the interpreter.
    hasher = Hasher(4096, 0)
    for bad in ("\ud800", "order-\udcff", "{\ud800}:x"):
        with pytest.raises(UnicodeEncodeError):
            hasher.slot(bad)
        with pytest.raises(UnicodeEncodeError):
            route_hash(bad)


def test_a_queues_home_shard_depends_only_on_its_name_and_the_shard_names() -> None:
    shards = ["shard0", "shard1", "shard2"]
    homes = {q: home_shard(q, shards) for q in (f"queue-{i}" for i in range(300))}
    # Deterministic, spread over every shard, independent of the order of the list.
    assert homes == {q: home_shard(q, list(reversed(shards))) for q in homes}
    assert set(homes.values()) == set(shards)
    assert home_shard("single", shards) == "shard2"  # a vector other languages can match
    # Rendezvous: adding a shard moves only the queues the new shard wins.
    grown = {q: home_shard(q, [*shards, "shard3"]) for q in homes}
    moved = {q for q in homes if grown[q] != homes[q]}
    assert moved == {q for q in homes if grown[q] == "shard3"}
    assert 30 < len(moved) < 120
    # Another seed, another placement.
    assert {q: home_shard(q, shards, seed=7) for q in homes} != homes
    with pytest.raises(RoutingError):
        home_shard("q", [])
