"""What a queue-wide ``concurrency`` costs a claim: the claim of a queue without one,
against the same claim preceded by taking queue leases on the queue's home shard (the
claiming shard itself, or the other one), alternating in one run.

    python bench/queue_leases.py                    # 300 rounds, batches 1 and 16
    python bench/queue_leases.py --rounds 500 --batches 1,32

Two fresh local PostgreSQL servers (durable defaults). Every workflow is on shard ``a``.
Each round times, in rotating order, one claim of each kind with the store's methods,
what a worker's claim runs: ``plain`` is ``claim_enqueued``; ``home a`` and ``home b``
first take ``batch`` leases (``take_queue_leases``, one transaction on the home shard),
then claim; ``worker b`` is ``home b`` with the take handed to the home's own thread,
as a worker does (``HomeCalls``). Returning the leases when the runs end (one ``DELETE`` per
heartbeat or run end, off the claim path) is timed apart as ``release``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

import shardflow
from shardflow.engine.worker.home_calls import HomeCalls
from shardflow.local import LocalCluster
from shardflow.router.hashing import home_shard
from shardflow.sql.migrator import migrate_cluster

app = shardflow.App("queue_leases")
LEASE = 60.0


@app.workflow(name="queue_leases.noop")
def noop() -> None:
    return None


def queue_homed_on(shard: str, shards: list[str], prefix: str) -> str:
    """The first ``<prefix>-<n>`` queue name whose home is ``shard``."""
    names = (f"{prefix}-{i}" for i in range(1000))
    return next(q for q in names if home_shard(q, shards) == shard)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--batches", default="1,16")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    shards = ["a", "b"]
    local_q = queue_homed_on("a", shards, "lim")
    remote_q = queue_homed_on("b", shards, "lim")
    worker_q = queue_homed_on("b", shards, "thread")
    queues = {"plain": "plain", "home a": local_q, "home b": remote_q, "worker b": worker_q}
    per_queue = args.rounds * sum(batches) + 100
    with tempfile.TemporaryDirectory() as tmp:
        local = LocalCluster(Path(tmp) / "servers")
        local.up(2, name="queue-leases", migrate=False)
        try:
            dsns = [admin for admin in local.admin_dsns()]
            doc = {
                "name": "queue-leases",
                "shards": [{"name": n, "dsn": d} for n, d in zip(shards, dsns, strict=True)],
                "queues": {
                    "default": {},
                    "plain": {},
                    local_q: {"concurrency": 1_000_000},
                    remote_q: {"concurrency": 1_000_000},
                    worker_q: {"concurrency": 1_000_000},
                },
            }
            path = Path(tmp) / "cluster.yaml"
            path.write_text(yaml.safe_dump(doc))
            config = shardflow.load(path)
            migrate_cluster(config)
            with shardflow.connect(config) as cluster:
                tags = (f"{{on-a-{i}}}" for i in range(100))
                tag = next(t for t in tags if cluster.route(t) == "a")
                ids = [f"{tag}:{i}" for i in range(per_queue)]
                for q in queues.values():
                    for start in range(0, per_queue, 2000):
                        cluster.submit_many(
                            shardflow.Submission(noop, (), workflow_id=f"{q}:{w}", queue=q)
                            for w in ids[start : start + 2000]
                        )
                run(cluster, queues, batches, args.rounds)
        finally:
            local.down()


def run(
    cluster: shardflow.Cluster, queues: dict[str, str], batches: list[int], rounds: int
) -> None:
    store = cluster.store
    homes = {"home a": "a", "home b": "b", "worker b": "b"}
    calls = HomeCalls("b")
    for batch in batches:
        times: dict[str, list[float]] = {k: [] for k in [*queues, "release"]}
        kinds = list(queues)
        for r in range(rounds):
            for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
                queue = queues[kind]
                held: list[str] = []
                t0 = time.perf_counter()
                if kind in homes:
                    take = functools.partial(
                        store.take_queue_leases,
                        homes[kind],
                        queue=queue,
                        owner="bench",
                        want=batch,
                        limit=1_000_000,
                        lease_seconds=LEASE,
                    )
                    # "worker b": as a worker takes, on the home's own thread.
                    held = calls.call(take, timeout=5.0) if kind == "worker b" else take()
                claims = store.claim_enqueued(
                    "a",
                    queue=queue,
                    names=["queue_leases.noop"],
                    owner="bench",
                    lease_seconds=LEASE,
                    limit=batch,
                )
                times[kind].append(time.perf_counter() - t0)
                assert len(claims) == batch, (kind, len(claims))
                if held:
                    t1 = time.perf_counter()
                    store.release_queue_leases(homes[kind], held)
                    times["release"].append(time.perf_counter() - t1)
        report(batch, times)
    calls.close()


def report(batch: int, times: dict[str, list[float]]) -> None:
    def ms(xs: list[float], f: Callable[[list[float]], float]) -> str:
        return f"{f(xs) * 1000:.2f}"

    def p90(xs: list[float]) -> float:
        return statistics.quantiles(xs, n=10)[-1]

    base = statistics.median(times["plain"])
    print(f"batch {batch}: median ms (p90 ms), ratio to plain")
    for kind, xs in times.items():
        ratio = statistics.median(xs) / base
        print(f"  {kind:8} {ms(xs, statistics.median):>6} ({ms(xs, p90):>6})  x{ratio:.2f}")


if __name__ == "__main__":
    main()
