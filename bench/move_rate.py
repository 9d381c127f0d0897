"""How fast the rebalancer moves idle workflows between two local shards.

    python bench/move_rate.py                       # 10,000 workflows, batch 500
    python bench/move_rate.py --workflows 20000 --batches 100,500,1000
    python bench/move_rate.py --json bench/results/move_rate.json

Each scenario gets two fresh local PostgreSQL servers with durable defaults (fsync and
synchronous_commit on). Shard ``a`` owns every slot; ``b`` is draining. N workflows of
three checkpointed steps each run to completion on ``a``, so each is one status row plus
three step rows. Then the config flips (``a`` draining, ``b`` active) and the rebalancer
moves all N to ``b``; the rate is workflows moved per second of ``apply``.

"with load": meanwhile a submitter process creates new workflows at ``--load-rate`` per
second and a worker process runs them on both shards, so moves compete with claims,
checkpoints and submits (some of which land in slots in motion).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

import shardflow
from shardflow.local import LocalCluster
from shardflow.rebalance import ApplyOptions, Rebalancer
from shardflow.sql.migrator import migrate_cluster

ROOT = Path(__file__).resolve().parents[1]
app = shardflow.App("move_rate")


@app.step()
def stage(i: int, n: int) -> int:
    return i * 10 + n


@app.workflow(name="move_rate.three_steps")
def three_steps(i: int) -> int:
    return stage(i, 1) + stage(i, 2) + stage(i, 3)


@dataclass(frozen=True, slots=True)
class Result:
    scenario: str
    batch: int
    workflows: int
    moved: int
    seconds: float
    per_second: float
    load_completed_per_second: float | None


def write_config(directory: Path, dsns: list[str], *, active: str) -> Path:
    doc = {
        "name": "move-rate",
        "hash": {"slots": 4096, "seed": 0},
        "shards": [
            {
                "name": name,
                "dsn": dsn,
                "weight": 1,
                "state": "active" if name == active else "draining",
            }
            for name, dsn in zip(("a", "b"), dsns, strict=True)
        ],
        "worker": {
            "poll_interval_seconds": 0.05,
            "concurrency": 32,
            "claim_batch": 64,
            "processes": 1,
        },
    }
    path = directory / f"cluster-{active}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def fresh_databases(local: LocalCluster, name: str) -> list[str]:
    dsns = []
    for admin in local.admin_dsns():
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        dsns.append(admin.rsplit("/", 1)[0] + f"/{name}")
    return dsns


def seed(config_path: Path, count: int) -> None:
    """``count`` finished workflows of three recorded steps each, all on shard ``a``."""
    config = shardflow.load(config_path)
    migrate_cluster(config)
    with shardflow.connect(config) as cluster:
        handles = []
        for start in range(0, count, 1000):
            handles += cluster.submit_many(
                [
                    shardflow.Submission(three_steps, (i,))
                    for i in range(start, min(start + 1000, count))
                ]
            )
        with shardflow.Worker(cluster, app, concurrency=32, claim_batch=64):
            for h in handles:
                h.result(timeout=600)
        steps = sum(1 for _ in cluster.steps(handles[0].workflow_id))
        assert steps == 3, steps


def start_load(config_path: Path, rate: float, log: Path) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), SHARDFLOW_DEMO_STEP_MS="1")
    with log.open("ab") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "shardflow", "--config", str(config_path), "worker",
             "--app", "shardflow.demo.app:app", "--concurrency", "16"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        submitter = subprocess.Popen(
            [sys.executable, __file__, "--submit-load", str(config_path), "--load-rate", str(rate)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return [worker, submitter]


def submit_load(config_path: Path, rate: float) -> None:
    """The load process: submit demo pipelines at ``rate`` per second until killed."""
    from shardflow.demo.app import process_document

    with shardflow.connect(config_path) as cluster:
        n = 0
        started = time.monotonic()
        while True:
            due = started + n / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            cluster.submit_many(
                [shardflow.Submission(process_document, (f"load-{n + i}",)) for i in range(10)]
            )
            n += 10


def completed(config: shardflow.ClusterConfig, name: str) -> int:
    total = 0
    for shard in config.shards:
        with psycopg.connect(shard.dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM shardflow.workflow_status"
                " WHERE name = %s AND state = 'SUCCESS'",
                (name,),
            ).fetchone()
        total += int(row[0]) if row else 0
    return total


def run_scenario(
    local: LocalCluster, workdir: Path, *, workflows: int, batch: int, load_rate: float | None
) -> Result:
    scenario = "with load" if load_rate else "idle"
    name = f"mr_{batch}_{'load' if load_rate else 'idle'}"
    dsns = fresh_databases(local, name)
    directory = workdir / name
    directory.mkdir(parents=True, exist_ok=True)
    before = write_config(directory, dsns, active="a")
    after = write_config(directory, dsns, active="b")
    print(f"[{scenario}, batch {batch}] seeding {workflows} workflows ...", flush=True)
    seed(before, workflows)
    migrate_cluster(shardflow.load(after))
    procs = start_load(after, load_rate, directory / "load.log") if load_rate else []
    try:
        if procs:
            time.sleep(2.0)  # let the load reach a steady state
        config = shardflow.load(after)
        done_before = completed(config, "demo.process_document")
        with Rebalancer(config) as rebalancer:
            result = rebalancer.apply(ApplyOptions(batch=batch, wave_slots=4096))
        done_after = completed(config, "demo.process_document")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(30)
    # Under load, workflows submitted to ``a`` before their slot moved move as well.
    assert result.complete and result.moved >= workflows, (result.complete, result.moved)
    load_rate_seen = (done_after - done_before) / result.seconds if load_rate else None
    out = Result(
        scenario,
        batch,
        workflows,
        result.moved,
        round(result.seconds, 3),
        round(result.moved / result.seconds, 1),
        None if load_rate_seen is None else round(load_rate_seen, 1),
    )
    print(
        f"[{scenario}, batch {batch}] moved {out.moved} in {out.seconds:.2f}s:"
        f" {out.per_second:,.0f} workflows/s"
        + (f" (load: {out.load_completed_per_second:.0f} workflows/s completed)" if procs else ""),
        flush=True,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workflows", type=int, default=10_000)
    parser.add_argument("--batches", default="500", help="comma-separated batch sizes")
    parser.add_argument("--load-rate", type=float, default=200.0, help="submits/s under load")
    parser.add_argument("--load-batch", type=int, default=500, help="batch size under load")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--submit-load", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.submit_load:
        submit_load(args.submit_load, args.load_rate)
        return 0
    batches = [int(b) for b in args.batches.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="shardflow-move-rate-"))
    local = LocalCluster(workdir / "servers")
    results: list[Result] = []
    try:
        local.up(2, name="move-rate", migrate=False)
        for batch in batches:
            results.append(
                run_scenario(local, workdir, workflows=args.workflows, batch=batch, load_rate=None)
            )
        results.append(
            run_scenario(
                local,
                workdir,
                workflows=args.workflows,
                batch=args.load_batch,
                load_rate=args.load_rate,
            )
        )
    finally:
        local.down()
    if args.json:
        document: dict[str, Any] = {
            "benchmark": "move_rate",
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            # The machine is often shared: its load says how much the figures are worth.
            "load_average_1m_at_end": os.getloadavg()[0],
            "results": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
