"""What a worker's final writes cost, alone: N claimed workflows finished in batches of B
by one thread through ``Store.write_batch`` (the statement the worker's committer sends),
on one local server; finishes per second and WAL bytes per finish, per round.

    python -m bench.finish_cost [--n 3000] [--batch 32] [--rounds 5]

Run it against two commits alternately (``PYTHONPATH=<checkout>``) to compare the
``commit_batch`` query of each; docs/performance.md quotes such a comparison.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

import shardflow
from bench.apps.shardflow_app import chain
from bench.servers import BenchServers
from shardflow.config import parse
from shardflow.engine.states import WorkflowState
from shardflow.engine.store import FinishWrite
from shardflow.sql.migrator import migrate_cluster

SHARD = "shard0"


def one_round(servers: BenchServers, directory: Path, n: int, batch: int) -> tuple[float, float]:
    dsn = servers.fresh_database(0, "finish_cost")
    doc = {
        "name": "finish-cost",
        "hash": {"slots": 4096, "seed": 0},
        "shards": [{"name": SHARD, "dsn": dsn}],
    }
    path = directory / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    migrate_cluster(parse(path.read_text(encoding="utf-8"), source=str(path)))
    with shardflow.connect(str(path)) as cluster:
        cluster.submit_many([shardflow.Submission(chain, (i, 0)) for i in range(n)])
        claims = []
        while len(claims) < n:
            claims += cluster.store.claim_enqueued(
                SHARD,
                queue="default",
                names=["bench.chain"],
                owner="bench",
                lease_seconds=600,
                limit=500,
            )
        servers.checkpoint(0)
        wal = servers.wal_lsn(0)
        started = time.perf_counter()
        for i in range(0, n, batch):
            writes = [
                FinishWrite(c.workflow_id, c.attempt, WorkflowState.SUCCESS, "1", None)
                for c in claims[i : i + batch]
            ]
            written = cluster.store.write_batch(SHARD, writes)
            assert len(written.finished) == len(writes)
        elapsed = time.perf_counter() - started
        wal = servers.wal_lsn(0) - wal
    servers.drop_database(0, "finish_cost")
    return n / elapsed, wal / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rates, wals = [], []
    with BenchServers(1) as servers, tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            rate, wal = one_round(servers, Path(tmp), args.n, args.batch)
            rates.append(rate)
            wals.append(wal)
            print(f"round {r + 1}: {rate:,.0f} finishes/s, {wal:,.0f} WAL B/finish", flush=True)
    print(
        f"median {statistics.median(rates):,.0f} finishes/s"
        f" (rounds {min(rates):,.0f}-{max(rates):,.0f}),"
        f" {statistics.median(wals):,.0f} WAL B/finish"
    )


if __name__ == "__main__":
    main()
