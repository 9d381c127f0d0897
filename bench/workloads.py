"""The seven rows of the benchmark, one function per (row, system), one round per call.

Every function sets up fresh databases, runs the system's runners in subprocesses, reads
WAL positions around each phase and returns the round's metrics. Nothing else runs on a
server while a system is measured on it.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml

from bench import procs
from bench.apps.shardflow_app import EFFECTS_DSN_ENV, EFFECTS_TABLE
from bench.servers import BenchServers
from shardflow.config import parse
from shardflow.sql.migrator import migrate_cluster

Metrics = dict[str, Any]
CHAIN_STEPS = (0, 3, 10)


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes and settings of one benchmark run (``--quick`` shrinks them)."""

    rounds: int = 3
    chain_counts: dict[int, int] = field(default_factory=lambda: {0: 2000, 3: 1000, 10: 400})
    raw_seconds: float = 3.0
    raw_threads: tuple[int, ...] = (1, 8)
    sharding_count: int = 2000
    sharding_steps: int = 3
    batch_count: int = 20000
    batch_size: int = 1000
    routing_ids: int = 1_000_000
    recovery_workflows: int = 8
    lease_seconds: float = 5.0
    latency_count: int = 100
    latency_rate: float = 20.0
    latency_steps: int = 3
    shardflow_concurrency: int | None = None  # None: the config default
    dbos_worker_concurrency: int = 32
    dbos_polling_seconds: float = 0.05
    pgqueuer_batch_size: int = 10
    app_count: int = 1000
    app_clients: tuple[int, ...] = (1, 16, 64)
    # Row 7's other ways (async tasks, a worker process, DBOS's queue): these client counts.
    app_variant_clients: tuple[int, ...] = (1, 16, 64)
    app_steps: int = 3
    timeout: float = 900.0

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            rounds=1,
            # Enough 0-step workflows that the servers' CPU time, read from /proc in
            # clock ticks (10 ms), is measurable even on a fast machine.
            chain_counts={0: 1000, 3: 200, 10: 100},
            raw_seconds=1.0,
            sharding_count=300,
            batch_count=3000,
            routing_ids=100_000,
            recovery_workflows=4,
            lease_seconds=2.0,
            latency_count=20,
            app_count=100,
            app_variant_clients=(1,),
            timeout=120.0,
        )


class Bench:
    """The servers, a work directory for configs and runner logs, and the plan."""

    def __init__(self, servers: BenchServers, workdir: Path, plan: Plan) -> None:
        self.servers = servers
        self.workdir = workdir
        self.plan = plan
        self._n = 0
        self._databases: list[tuple[int, str]] = []

    def database(self, server: int, label: str) -> str:
        self._n += 1
        name = f"bench_{label}_{self._n}"
        self._databases.append((server, name))
        return self.servers.fresh_database(server, name)

    def drop_databases(self) -> None:
        """Drop every database made so far. WAL is counted per server, so a finished
        case's database must not be autovacuumed while the next case is measured."""
        while self._databases:
            self.servers.drop_database(*self._databases.pop())

    def run(self, module: str, mode: str, spec: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return procs.run(self.workdir, module, mode, spec, timeout=self.plan.timeout, **kw)

    def runner(self, module: str, mode: str, spec: dict[str, Any], **kw: Any) -> procs.Runner:
        return procs.Runner(self.workdir, module, mode, spec, **kw)

    def shardflow_cluster(
        self, label: str, servers: Sequence[int], worker: dict[str, Any] | None = None
    ) -> str:
        """Fresh databases on ``servers`` (one shard each), migrated; the YAML's path."""
        dsns = [self.database(s, f"{label}_s{k}") for k, s in enumerate(servers)]
        doc: dict[str, Any] = {
            "name": "bench",
            "hash": {"slots": 4096, "seed": 0},
            "shards": [{"name": f"shard{k}", "dsn": dsn} for k, dsn in enumerate(dsns)],
        }
        if worker:
            doc["worker"] = worker
        path = self.workdir / f"{label}-{self._n}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        migrate_cluster(parse(path.read_text(encoding="utf-8"), source=str(path)))
        return str(path)

    def postmasters(self, servers: Sequence[int]) -> list[int]:
        return [self.servers.postmaster_pid(s) for s in servers]

    def wal(self, servers: Sequence[int]) -> int:
        return sum(self.servers.wal_lsn(s) for s in servers)

    def checkpoint(self, servers: Sequence[int]) -> None:
        for s in servers:
            self.servers.checkpoint(s)


# -- row 1: end-to-end ------------------------------------------------------------------


def _end_to_end(
    bench: Bench,
    steps: int,
    setup: Callable[[], dict[str, Any]],
    module: str,
    drain_extra: dict[str, Any],
) -> Metrics:
    """Submit N one call at a time, then drain them with one worker process."""
    count = bench.plan.chain_counts[steps]
    spec = setup()
    bench.checkpoint([0])
    wal0 = bench.wal([0])
    sub = bench.run(module, "submit", {**spec, "count": count, "steps": steps})
    wal1 = bench.wal([0])
    drain_spec = {**spec, **drain_extra, "count": count, "postmasters": bench.postmasters([0])}
    drained = bench.run(module, "drain", drain_spec)
    wal2 = bench.wal([0])
    if drained["workflows"] != count:
        raise procs.RunnerFailed(f"{module}: {drained['workflows']} of {count} workflows ran")
    rate = count / drained["seconds"]
    return {
        "workflows": count,
        "steps": steps,
        "submit_per_s": count / sub["seconds"],
        "workflows_per_s": rate,
        "checkpoints_per_s": rate * steps,
        "cpu_ms_per_workflow": drained["cpu_seconds"] / count * 1e3,
        "server_cpu_ms_per_workflow": _per(drained["server_cpu_seconds"], count, 1e3),
        "process_cpu_ms_per_workflow": drained["process_cpu_seconds"] / count * 1e3,
        "submit_cpu_ms_per_workflow": sub["cpu_seconds"] / count * 1e3,
        "wal_bytes_per_workflow": (wal2 - wal0) / count,
        "wal_submit_bytes_per_workflow": (wal1 - wal0) / count,
        "wal_run_bytes_per_workflow": (wal2 - wal1) / count,
        "startup_seconds": drained["startup_seconds"],
    }


def _per(value: float | None, count: int, scale: float) -> float | None:
    return None if value is None else value / count * scale


def end_to_end_shardflow(bench: Bench, steps: int) -> Metrics:
    def setup() -> dict[str, Any]:
        return {"config": bench.shardflow_cluster(f"e2e_sf{steps}", [0])}

    extra = {"concurrency": bench.plan.shardflow_concurrency}
    return _end_to_end(bench, steps, setup, "shardflow_run", extra)


def _dbos_spec(bench: Bench, label: str) -> dict[str, Any]:
    spec = {
        "dsn": bench.database(0, label),
        "worker_concurrency": bench.plan.dbos_worker_concurrency,
        "polling_interval_sec": bench.plan.dbos_polling_seconds,
    }
    bench.run("dbos_run", "setup", spec)
    return spec


def end_to_end_dbos(bench: Bench, steps: int) -> Metrics:
    return _end_to_end(bench, steps, lambda: _dbos_spec(bench, f"e2e_dbos{steps}"), "dbos_run", {})


def end_to_end_pgqueuer(bench: Bench, steps: int) -> Metrics:
    def setup() -> dict[str, Any]:
        spec = {"dsn": bench.database(0, "e2e_pgq")}
        bench.run("pgqueuer_run", "setup", spec)
        return spec

    extra = {"batch_size": bench.plan.pgqueuer_batch_size}
    return _end_to_end(bench, steps, setup, "pgqueuer_run", extra)


def raw_ceiling(bench: Bench, threads: int) -> Metrics:
    spec = {"dsn": bench.database(0, f"raw{threads}")}
    bench.run("raw_run", "setup", spec)
    bench.checkpoint([0])
    wal0 = bench.wal([0])
    out = bench.run(
        "raw_run", "commits", {**spec, "threads": threads, "seconds": bench.plan.raw_seconds}
    )
    wal1 = bench.wal([0])
    n = out["commits"]
    return {
        "threads": threads,
        "commits": n,
        "commits_per_s": n / out["seconds"],
        "cpu_us_per_commit": out["cpu_seconds"] / n * 1e6,
        "wal_bytes_per_commit": (wal1 - wal0) / n,
    }


# -- row 2: sharding tax ------------------------------------------------------------------


def sharding(bench: Bench, shards: int) -> Metrics:
    """The same N workflows on ``shards`` shards, one worker process per shard, all
    started together; throughput over the span from the first workflow to the last."""
    plan = bench.plan
    servers = list(range(shards))
    config = bench.shardflow_cluster(f"shard{shards}", servers)
    count, steps = plan.sharding_count, plan.sharding_steps
    bench.run(
        "shardflow_run",
        "submit",
        {"config": config, "count": count, "steps": steps, "batch": 500},
    )
    bench.checkpoint(servers)
    wal0 = bench.wal(servers)
    workers = [
        bench.runner(
            "shardflow_run",
            "drain",
            {
                "config": config,
                "shards": [f"shard{k}"],
                "postmasters": bench.postmasters([k]),
                "go": True,
                "concurrency": plan.shardflow_concurrency,
                "timeout": plan.timeout,
            },
        )
        for k in range(shards)
    ]
    for w in workers:
        w.wait_ready()
    for w in workers:
        w.go()
    results = [w.result(plan.timeout) for w in workers]
    wal1 = bench.wal(servers)
    done = sum(r["workflows"] for r in results)
    if done != count:
        raise procs.RunnerFailed(f"sharding: {done} of {count} workflows ran")
    span = max(r["end_wall"] for r in results) - min(r["first_start_wall"] for r in results)
    cpu = sum(r["cpu_seconds"] for r in results)
    server_cpu = [r["server_cpu_seconds"] for r in results]
    return {
        "shards": shards,
        "workers": shards,
        "workflows": count,
        "steps": steps,
        "workflows_per_s": count / span,
        "checkpoints_per_s": count * steps / span,
        "cpu_ms_per_workflow": cpu / count * 1e3,
        "server_cpu_ms_per_workflow": (
            None if None in server_cpu else sum(server_cpu) / count * 1e3
        ),
        "wal_run_bytes_per_workflow": (wal1 - wal0) / count,
        "per_worker": [r["workflows"] for r in results],
    }


# -- row 3: batch submit ------------------------------------------------------------------


def _batch(bench: Bench, servers: list[int], module: str, spec: dict[str, Any]) -> Metrics:
    plan = bench.plan
    bench.checkpoint(servers)
    wal0 = bench.wal(servers)
    out = bench.run(module, "submit", {**spec, "count": plan.batch_count, "batch": plan.batch_size})
    wal1 = bench.wal(servers)
    n = plan.batch_count
    return {
        "workflows": n,
        "batch_size": plan.batch_size,
        "servers": len(servers),
        "submit_per_s": n / out["seconds"],
        "cpu_us_per_workflow": out["cpu_seconds"] / n * 1e6,
        "wal_bytes_per_workflow": (wal1 - wal0) / n,
    }


def batch_shardflow(bench: Bench) -> Metrics:
    servers = [0, 1, 2]
    config = bench.shardflow_cluster("batch", servers)
    return _batch(bench, servers, "shardflow_run", {"config": config, "steps": 3})


def batch_pgqueuer(bench: Bench) -> Metrics:
    spec = {"dsn": bench.database(0, "batch_pgq")}
    bench.run("pgqueuer_run", "setup", spec)
    return _batch(bench, [0], "pgqueuer_run", spec)


# -- row 4: routing -----------------------------------------------------------------------


def routing(bench: Bench) -> list[Metrics]:
    """``bench/routing.py`` (uuid4-shaped IDs, no hash tags): one entry per round."""
    out = bench.workdir / "routing.json"
    subprocess.run(
        [
            sys.executable,
            str(procs.ROOT / "bench" / "routing.py"),
            "--ids",
            str(bench.plan.routing_ids),
            "--rounds",
            str(bench.plan.rounds),
            "--json",
            str(out),
        ],
        check=True,
        cwd=procs.ROOT,
        env=procs.runner_env(),
        stdout=subprocess.DEVNULL,
        timeout=bench.plan.timeout,
    )
    report = json.loads(out.read_text(encoding="utf-8"))
    by_name = {r["name"]: r for r in report["results"]}
    route = by_name["Router.route"]["rounds_us_per_id"]
    bare = by_name["bare mmh3.hash"]["rounds_us_per_id"]
    return [
        {"ids": report["ids"], "us_per_id": us, "ids_per_s": 1e6 / us, "bare_mmh3_us_per_id": b}
        for us, b in zip(route, bare, strict=True)
    ]


# -- row 5: recovery ----------------------------------------------------------------------


def _effects(dsn: str, pid: int) -> tuple[int, float | None, float | None]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*), extract(epoch FROM min(at)), extract(epoch FROM max(at))"
            " FROM bench_effects WHERE pid = %s",
            (pid,),
        ).fetchone()
    assert row is not None
    low = float(row[1]) if row[1] is not None else None
    high = float(row[2]) if row[2] is not None else None
    return int(row[0]), low, high


def _wait_effects(dsn: str, pid: int, count: int, timeout: float) -> tuple[float, float]:
    deadline = time.monotonic() + timeout
    while True:
        n, low, high = _effects(dsn, pid)
        if n >= count and low is not None and high is not None:
            return low, high
        if time.monotonic() > deadline:
            raise procs.RunnerFailed(f"only {n} of {count} workflows started in pid {pid}")
        time.sleep(0.01)


def recovery(bench: Bench) -> Metrics:
    """SIGKILL a worker holding K workflows; seconds until another worker runs each again."""
    plan = bench.plan
    lease = plan.lease_seconds
    heartbeat = round(lease / 3, 3)
    config = bench.shardflow_cluster(
        "recovery", [0], worker={"lease_seconds": lease, "heartbeat_seconds": heartbeat}
    )
    dsn = parse(Path(config).read_text(encoding="utf-8")).shards[0].dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(EFFECTS_TABLE)
    env = {EFFECTS_DSN_ENV: dsn}
    k = plan.recovery_workflows
    first = bench.runner("shardflow_run", "serve", {"config": config}, env=env)
    second: procs.Runner | None = None
    try:
        first.wait_ready()
        bench.run(
            "shardflow_run",
            "submit",
            {"config": config, "count": k, "workflow": "bench.hold", "seconds": 600},
        )
        _wait_effects(dsn, first.pid, k, 60)
        second = bench.runner("shardflow_run", "serve", {"config": config}, env=env)
        second.wait_ready()
        # A crash does not wait for the survivor's next lease scan: kill at a random point
        # of its scan cycle (one heartbeat plus one poll), not right after it started.
        delay = random.uniform(0, heartbeat + 0.5)
        time.sleep(delay)
        killed_at = time.time()
        os.kill(first.pid, signal.SIGKILL)
        low, high = _wait_effects(dsn, second.pid, k, 10 * lease + 30)
    finally:
        first.kill()
        if second is not None:
            second.kill()
    return {
        "workflows": k,
        "lease_seconds": lease,
        "heartbeat_seconds": heartbeat,
        "kill_delay_seconds": delay,
        "recovery_seconds": high - killed_at,
        "first_recovered_seconds": low - killed_at,
    }


# -- row 6: latency -----------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100)."""
    ordered = sorted(values)
    rank = max(math.ceil(p / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def _latency(bench: Bench, module: str, spec: dict[str, Any]) -> Metrics:
    plan = bench.plan
    worker = bench.runner(module, "serve", spec)
    try:
        worker.wait_ready()
        out = bench.run(
            module,
            "latency",
            {
                **spec,
                "count": plan.latency_count,
                "rate": plan.latency_rate,
                "steps": plan.latency_steps,
            },
        )
    finally:
        worker.signal(signal.SIGTERM)
        worker.result(60)
    first, done = out["first_step"], out["completion"]
    return {
        "workflows": plan.latency_count,
        "rate_per_s": plan.latency_rate,
        "steps": plan.latency_steps,
        "first_step_p50_ms": percentile(first, 50) * 1e3,
        "first_step_p99_ms": percentile(first, 99) * 1e3,
        "completion_p50_ms": percentile(done, 50) * 1e3,
        "completion_p99_ms": percentile(done, 99) * 1e3,
    }


def latency_shardflow(bench: Bench) -> Metrics:
    config = bench.shardflow_cluster("latency", [0])
    spec = {"config": config, "concurrency": bench.plan.shardflow_concurrency}
    return _latency(bench, "shardflow_run", spec)


def latency_dbos(bench: Bench) -> Metrics:
    return _latency(bench, "dbos_run", _dbos_spec(bench, "latency_dbos"))


# -- row 7: the application shape ------------------------------------------------------------


def _app_shape(bench: Bench, module: str, mode: str, spec: dict[str, Any], clients: int) -> Metrics:
    """C clients each submit a workflow and wait for its result, until N have ended."""
    plan = bench.plan
    bench.checkpoint([0])
    out = bench.run(
        module,
        mode,
        {
            **spec,
            "count": plan.app_count,
            "clients": clients,
            "steps": plan.app_steps,
            "postmasters": bench.postmasters([0]),
        },
    )
    n = out["workflows"]
    if n != plan.app_count:
        raise procs.RunnerFailed(f"{module} {mode}: {n} of {plan.app_count} workflows ended")
    latencies = out["latencies"]
    worker_cpu = out.get("worker_cpu_seconds")
    metrics = {
        "workflows": n,
        "clients": clients,
        "steps": plan.app_steps,
        "workflows_per_s": n / out["seconds"],
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        # Client and worker, wherever the worker runs.
        "cpu_ms_per_workflow": (out["cpu_seconds"] + (worker_cpu or 0.0)) / n * 1e3,
        "server_cpu_ms_per_workflow": _per(out["server_cpu_seconds"], n, 1e3),
    }
    if worker_cpu is not None:
        metrics["client_cpu_ms_per_workflow"] = out["cpu_seconds"] / n * 1e3
        metrics["worker_cpu_ms_per_workflow"] = worker_cpu / n * 1e3
    return metrics


APP_SHARDFLOW = ("threads", "async tasks", "worker process")
APP_DBOS = ("direct", "queue")


def app_shape_shardflow(bench: Bench, clients: int, how: str = "threads") -> Metrics:
    """``how``: client ``threads`` with the worker in their process, ``async tasks`` (the
    async client, async workflows) with the worker in their process, or client threads
    with the worker in its own ``worker process``."""
    spec = {
        "config": bench.shardflow_cluster(f"app{clients}", [0]),
        "concurrency": bench.plan.shardflow_concurrency,
    }
    if how == "async tasks":
        return _app_shape(bench, "shardflow_run", "app_async", spec, clients)
    if how == "threads":
        return _app_shape(bench, "shardflow_run", "app", spec, clients)
    assert how == "worker process", how
    worker = bench.runner("shardflow_run", "serve", spec)
    try:
        worker.wait_ready()
        spec = {**spec, "worker_pid": worker.pid}
        return _app_shape(bench, "shardflow_run", "app", spec, clients)
    finally:
        worker.signal(signal.SIGTERM)
        worker.result(60)


def app_shape_dbos(bench: Bench, clients: int, how: str = "direct") -> Metrics:
    """``how``: ``direct`` (``DBOS.start_workflow``) or ``queue`` (``enqueue_workflow`` on
    a queue this process listens to)."""
    mode = {"direct": "app", "queue": "app_queue"}[how]
    spec = _dbos_spec(bench, f"app_dbos{clients}")
    return _app_shape(bench, "dbos_run", mode, spec, clients)
