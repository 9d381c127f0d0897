"""Behaviour across real processes: concurrent submitters, per-worker limits."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import psycopg

import shardflow
from shardflow import WorkflowState
from shardflow.demo.app import EFFECTS_TABLE, app
from shardflow.testing.servers import ClusterFactory, TestCluster, wait_until
from tests.e2e.procs import ROOT, start_worker, stop, worker_env

SUBMITTER = """
import json, sys, time
import shardflow
config, go_at = sys.argv[1], float(sys.argv[2])
with shardflow.connect(config) as cluster:
    subs = [shardflow.Submission("demo.process_document", (f"doc-{i}",), workflow_id=f"same-{i}")
            for i in range(300)]
    while time.time() < go_at:
        time.sleep(0.001)
    handles = cluster.submit_many(subs)
    print(json.dumps({h.workflow_id: h.shard for h in handles}))
"""


def test_idempotent_submit_from_two_processes_at_once(test_cluster: TestCluster) -> None:
    config = test_cluster.config
    effects_dsn = config.shards[0].dsn
    with psycopg.connect(effects_dsn, autocommit=True) as conn:
        conn.execute(EFFECTS_TABLE)
    go_at = time.time() + 2.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SUBMITTER, str(test_cluster.path), str(go_at)],
            env=worker_env(),
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    placed = [json.loads(o) for o in outputs]
    assert placed[0] == placed[1] and len(placed[0]) == 300

    import os

    os.environ["SHARDFLOW_DEMO_EFFECTS_DSN"] = effects_dsn
    try:
        with shardflow.connect(config) as cluster, shardflow.Worker(cluster, app, concurrency=16):
            for wid in placed[0]:
                assert cluster.handle(wid).result(timeout=60).startswith("published")
            rows = sum(cluster.store.count_by_state(s)["SUCCESS"] for s in config.shard_names)
            assert rows == 300
    finally:
        del os.environ["SHARDFLOW_DEMO_EFFECTS_DSN"]
    with psycopg.connect(effects_dsn) as conn:
        per_step = conn.execute(
            "SELECT count(*), count(DISTINCT (workflow_id, step)) FROM demo_effects"
        ).fetchone()
    assert per_step == (1200, 1200)  # 300 workflows x 4 steps, each run once


def test_worker_concurrency_is_exact_per_process(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    made = cluster_factory.make(
        3, extra={"queues": {"default": {}, "limited": {"worker_concurrency": 2}}}
    )
    try:
        effects_dsn = made.config.shards[0].dsn
        with psycopg.connect(effects_dsn, autocommit=True) as conn:
            conn.execute(EFFECTS_TABLE)
        env = {"SHARDFLOW_DEMO_EFFECTS_DSN": effects_dsn, "SHARDFLOW_DEMO_STEP_MS": "30"}
        with shardflow.connect(made.config) as cluster:
            handles = cluster.submit_many(
                [
                    shardflow.Submission("demo.process_document", (f"d{i}",), queue="limited")
                    for i in range(40)
                ]
            )
            workers = [
                start_worker(
                    made.path,
                    "shardflow.demo.app:app",
                    "--concurrency",
                    "8",
                    env=env,
                    log=tmp_path / f"w{i}.log",
                )
                for i in range(2)
            ]
            try:
                wait_until(
                    lambda: all(h.status().state is WorkflowState.SUCCESS for h in handles),
                    timeout=90,
                    interval=0.2,
                    message="all limited workflows done",
                )
            finally:
                assert [stop(w) for w in workers] == [0, 0]
        with psycopg.connect(effects_dsn) as conn:
            rows = conn.execute(
                "SELECT workflow_id, pid, min(at) - interval '30 milliseconds', max(at)"
                " FROM demo_effects GROUP BY workflow_id, pid"
            ).fetchall()
        intervals: dict[int, list[tuple[float, float]]] = defaultdict(list)
        for _wid, pid, start, end in rows:
            intervals[pid].append((start.timestamp(), end.timestamp()))
        assert len(intervals) == 2  # both processes ran some
        for spans in intervals.values():
            events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
            running = peak = 0
            for _, delta in events:
                running += delta
                peak = max(peak, running)
            assert peak <= 2, f"a worker ran {peak} 'limited' workflows at once"
    finally:
        cluster_factory.drop(made)
