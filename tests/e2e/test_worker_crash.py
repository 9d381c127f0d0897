"""Two worker processes; one is SIGKILLed while it holds running workflows."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import psycopg

import shardflow
from shardflow import WorkflowState
from shardflow.demo.app import EFFECTS_TABLE, STEPS, process_document
from shardflow.testing.servers import TestCluster, wait_until
from tests.e2e.procs import start_worker, stop

N = 240


def _scalar(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def test_sigkilled_worker_loses_nothing_and_repeats_no_checkpointed_step(
    test_cluster: TestCluster, tmp_path: Path
) -> None:
    config = test_cluster.config
    effects_dsn = config.shards[0].dsn
    with psycopg.connect(effects_dsn, autocommit=True) as conn:
        conn.execute(EFFECTS_TABLE)
    env = {"SHARDFLOW_DEMO_EFFECTS_DSN": effects_dsn, "SHARDFLOW_DEMO_STEP_MS": "40"}

    with shardflow.connect(config) as cluster:
        handles = cluster.submit_many(
            [shardflow.Submission(process_document, (f"doc-{i}",)) for i in range(N)]
        )
        victim = start_worker(
            test_cluster.path,
            "shardflow.demo.app:app",
            "--concurrency",
            "8",
            "--worker-id",
            "victim",
            env=env,
            log=tmp_path / "victim.log",
        )
        survivor = None
        try:
            # Kill the victim while it holds running workflows mid-pipeline.
            def victim_running() -> int:
                held = 0
                for shard in config.shards:
                    held += _scalar(
                        shard.dsn,
                        "SELECT count(*) FROM shardflow.workflow_status"
                        " WHERE state = 'RUNNING' AND lease_owner = 'victim'",
                    )
                return held if held >= 4 else 0

            held = wait_until(victim_running, timeout=60, message="victim running workflows")
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            survivor = start_worker(
                test_cluster.path,
                "shardflow.demo.app:app",
                "--concurrency",
                "8",
                "--worker-id",
                "survivor",
                env=env,
                log=tmp_path / "survivor.log",
            )

            def all_done() -> bool:
                counts: Counter[str] = Counter()
                for shard in config.shards:
                    counts.update(cluster.store.count_by_state(shard.name))
                return counts["SUCCESS"] == N

            wait_until(all_done, timeout=120, interval=0.2, message="all workflows done")
        finally:
            if victim.poll() is None:
                victim.kill()
            if survivor is not None:
                assert stop(survivor) == 0

        # Every workflow completed once, with the right result and 4 recorded steps.
        for i, h in enumerate(handles):
            status = h.status()
            assert status.state is WorkflowState.SUCCESS
            assert status.output.startswith(f"published doc-{i}:")
            assert [s.name for s in cluster.steps(h.workflow_id)] == list(STEPS)
        recovered = [h for h in handles if h.status().recoveries > 0]
        # What the victim held when it died (its concurrency is 8) was recovered.
        assert held >= 4 and 1 <= len(recovered) <= 8

    with psycopg.connect(effects_dsn) as conn:
        rows = conn.execute(
            "SELECT workflow_id, step, pid, count(*) OVER (PARTITION BY workflow_id, step)"
            " FROM demo_effects ORDER BY workflow_id, step, at"
        ).fetchall()
    per_step = Counter((r[0], r[1]) for r in rows)
    assert len(per_step) == N * len(STEPS)  # every step ran at least once
    repeated = {k: v for k, v in per_step.items() if v > 1}
    # At-least-once applies only to a step interrupted before its checkpoint: at most one
    # per workflow the victim held, each run twice at most (victim, then survivor).
    assert len(repeated) <= len(recovered)
    assert all(v == 2 for v in repeated.values())
    recovered_ids = {h.workflow_id for h in recovered}
    assert {wid for wid, _ in repeated} <= recovered_ids
    victim_pid = victim.pid
    for (wid, step), _count in repeated.items():
        pids = [r[2] for r in rows if r[0] == wid and r[1] == step]
        assert pids[0] == victim_pid and pids[1] != victim_pid
    assert os.getpid() not in {r[2] for r in rows}
