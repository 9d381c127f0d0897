"""How much routing a workflow ID costs: Router.route, Hasher.slot and the bare hash.

    python bench/routing.py                      # 1,000,000 uuid4-shaped IDs, 5 rounds
    python bench/routing.py --tagged 1.0         # every ID carries a {tenant-N} hash tag
    python bench/routing.py --json routing.json  # also write the results

Each round maps one function over the same pre-generated IDs; the reported figure is the
median round. "loop floor" is the cost of the loop itself (``len`` on each ID) and
"bare mmh3" is ``mmh3.hash`` on pre-encoded keys: the floor no router in Python can beat.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from itertools import repeat
from pathlib import Path
from typing import Any

import mmh3

from shardflow.router import Hasher, Router, hash_key, initial_map


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    us_per_id: float  # median round
    ids_per_s: float
    rounds_us_per_id: list[float]


def make_ids(count: int, tagged: float, seed: int) -> list[str]:
    """``count`` uuid4-shaped IDs; a ``tagged`` fraction of them as ``{tenant-N}:<uuid>``."""
    rng = random.Random(seed)
    hexes = rng.randbytes(16 * count).hex()
    ids: list[str] = []
    for i in range(0, 32 * count, 32):
        h = hexes[i : i + 32]
        uuid = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"
        if tagged and rng.random() < tagged:
            uuid = f"{{tenant-{rng.randrange(1000)}}}:{uuid}"
        ids.append(uuid)
    return ids


def time_rounds(fn: Callable[..., Any], args: Sequence[Iterable[Any]], rounds: int) -> list[float]:
    """Seconds per round for ``map(fn, *args)``, drained without keeping the results."""
    times: list[float] = []
    for _ in range(rounds):
        start = time.perf_counter()
        deque(map(fn, *args), maxlen=0)
        times.append(time.perf_counter() - start)
    return times


def run(count: int, rounds: int, slots: int, seed: int, tagged: float) -> list[Result]:
    ids = make_ids(count, tagged, seed=1)
    keys = [hash_key(i).encode("utf-8") for i in ids]
    hasher = Hasher(slots, seed)
    router = Router(hasher, initial_map([("s0", 1), ("s1", 1), ("s2", 2)], slots))
    cases: list[tuple[str, Callable[..., Any], Sequence[Iterable[Any]]]] = [
        ("loop floor (len)", len, (ids,)),
        ("bare mmh3.hash", mmh3.hash, (keys, repeat(seed), repeat(False))),
        ("Hasher.slot", hasher.slot, (ids,)),
        ("Router.route", router.route, (ids,)),
        ("Router.hash_and_route", router.hash_and_route, (ids,)),
    ]
    time_rounds(router.route, (ids[:10_000],), 1)  # warm up
    results: list[Result] = []
    for name, fn, args in cases:
        per_id = [t / count * 1e6 for t in time_rounds(fn, args, rounds)]
        median = statistics.median(per_id)
        results.append(Result(name, median, 1e6 / median, per_id))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ids", type=int, default=1_000_000, help="IDs per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slots", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0, help="hash seed")
    parser.add_argument(
        "--tagged", type=float, default=0.0, help="fraction of IDs with a hash tag (0..1)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results here")
    args = parser.parse_args(argv)

    results = run(args.ids, args.rounds, args.slots, args.seed, args.tagged)
    by_name = {r.name: r for r in results}
    route_vs_hash = by_name["Router.route"].us_per_id / by_name["bare mmh3.hash"].us_per_id

    print(
        f"{args.ids:,} IDs x {args.rounds} rounds, {args.slots} slots, "
        f"tagged {args.tagged:.0%}, Python {platform.python_version()}, mmh3 {version('mmh3')}"
    )
    print(f"{'':18} {'us/ID (median)':>15} {'IDs/s':>14}")
    for r in results:
        print(f"{r.name:18} {r.us_per_id:15.3f} {r.ids_per_s:14,.0f}")
    print(f"Router.route / bare mmh3.hash = {route_vs_hash:.1f}x")

    if args.json:
        report = {
            "ids": args.ids,
            "rounds": args.rounds,
            "slots": args.slots,
            "seed": args.seed,
            "tagged": args.tagged,
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "machine": platform.machine(),
            "mmh3": version("mmh3"),
            "results": [asdict(r) for r in results],
            "route_over_bare_mmh3": route_vs_hash,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
