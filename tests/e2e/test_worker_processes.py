"""``shardflow worker --processes N``: a supervisor of N real worker processes."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

import shardflow
from shardflow import WorkflowState
from shardflow.demo.app import EFFECTS_TABLE, STEPS, process_document
from shardflow.engine.cluster import Cluster
from shardflow.local.ports import pick_free_ports
from shardflow.supervisor import ChildSlot, RestartPolicy
from shardflow.supervisor import Supervisor as SupervisorOf
from shardflow.testing.servers import TEST_WORKER, ClusterFactory, TestCluster, wait_until
from tests.e2e.procs import ROOT, worker_env

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Supervisor:
    """``shardflow worker --processes 2`` in its own process group (as a shell runs a
    foreground job), serving merged metrics on a free port."""

    def __init__(
        self,
        test_cluster: TestCluster,
        tmp_path: Path,
        env: dict[str, str],
        processes: tuple[str, ...] = ("--processes", "2"),
    ) -> None:
        self.port = pick_free_ports(1)[0]
        self.log_path = tmp_path / "supervisor.log"
        command = [
            sys.executable, "-m", "shardflow", "--config", str(test_cluster.path),
            "--log-level", "INFO", "worker", "--app", "shardflow.demo.app:app",
            *processes, "--concurrency", "4", "--worker-id", "sup",
            "--metrics-port", str(self.port), "--metrics-host", "127.0.0.1",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command,
                env=worker_env(env),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (urllib.error.URLError, ConnectionError):
            return 0, ""

    def processes(self) -> dict[str, dict[str, Any]]:
        """/healthz's report per worker process (pid, running, restarts, alive, ...)."""
        status, body = self.get("/healthz")
        assert status in (200, 503), (status, body, self.log())
        report: dict[str, dict[str, Any]] = json.loads(body)["processes"]
        return report

    def wait_ready(self) -> dict[str, dict[str, Any]]:
        wait_until(
            lambda: self.proc.poll() is None and self.get("/readyz")[0] == 200,
            timeout=60,
            message="both worker processes ready",
        )
        return self.processes()

    def scrape(self) -> Samples:
        status, text = self.get("/metrics")
        assert status == 200, text
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(ls) for (n, ls), _ in samples.items() if n == name]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def count_states(cluster: Cluster, config: Any) -> Counter[str]:
    counts: Counter[str] = Counter()
    for shard in config.shard_names:
        counts.update(cluster.store.count_by_state(shard))
    return counts


def effects(dsn: str) -> list[tuple[str, str, int]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT workflow_id, step, pid FROM demo_effects ORDER BY at"
        ).fetchall()
    return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]


@pytest.fixture
def effects_env(test_cluster: TestCluster) -> dict[str, str]:
    dsn = test_cluster.config.shards[0].dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(EFFECTS_TABLE)
    return {"SHARDFLOW_DEMO_EFFECTS_DSN": dsn}


def test_both_processes_claim_work_and_the_metrics_endpoint_sums_them(
    test_cluster: TestCluster, cluster: Cluster, tmp_path: Path, effects_env: dict[str, str]
) -> None:
    n = 200
    sup = Supervisor(test_cluster, tmp_path, {**effects_env, "SHARDFLOW_DEMO_STEP_MS": "5"})
    try:
        children = sup.wait_ready()
        pids = {int(c["pid"]) for c in children.values()}
        assert sorted(children) == ["1", "2"] and len(pids) == 2
        assert all(c["restarts"] == 0 and c["alive"] for c in children.values())
        handles = cluster.submit_many(
            [shardflow.Submission(process_document, (f"doc-{i}",)) for i in range(n)]
        )
        for h in handles:
            assert h.result(timeout=120).startswith("published")
        # Every step ran exactly once, and both worker processes ran some of them.
        rows = effects(effects_env["SHARDFLOW_DEMO_EFFECTS_DSN"])
        assert len(rows) == n * len(STEPS) == len({(w, s) for w, s, _ in rows})
        assert {pid for _, _, pid in rows} == pids

        samples = wait_until(
            lambda: (
                (s := sup.scrape()) and total(s, "shardflow_workflows_completed_total") == n and s
            ),
            message=f"{n} completions in the merged metrics",
        )
        per_shard = Counter(h.shard for h in handles)
        for shard, count in per_shard.items():
            assert total(samples, "shardflow_workflows_claimed_total", shard=shard) == count
            # A per-shard snapshot gauge is one copy, not one per process.
            assert total(samples, "shardflow_shard_up", shard=shard) == 1
        assert total(samples, "shardflow_step_duration_seconds_count") == n * len(STEPS)
        assert total(samples, "shardflow_workflows_failed_total") == 0
        assert total(samples, "shardflow_worker_concurrency") == 8  # 4 run threads each
        assert sorted(s["worker_id"] for s in series(samples, "shardflow_worker_info")) == [
            "sup-1",
            "sup-2",
        ]
        assert total(samples, "shardflow_supervisor_processes") == 2
        assert total(samples, "shardflow_supervisor_processes_running") == 2
        assert total(samples, "shardflow_supervisor_restarts_total") == 0

        # An idle process killed: restarted, and the sums do not go back to zero.
        victim = int(children["2"]["pid"])
        os.kill(victim, signal.SIGKILL)
        restarted = wait_until(
            lambda: (p := sup.processes())["2"]["restarts"] == 1 and p["2"]["alive"] and p["2"],
            timeout=60,
            message="process 2 restarted",
        )
        assert restarted["last_exit"] == "killed by SIGKILL" and restarted["pid"] != victim
        after = sup.scrape()
        assert total(after, "shardflow_workflows_completed_total") == n
        assert total(after, "shardflow_supervisor_restarts_total", process="2") == 1
        assert total(after, "shardflow_supervisor_restarts_total", process="1") == 0
        assert sorted(s["worker_id"] for s in series(after, "shardflow_worker_info")) == [
            "sup-1",
            "sup-2-r1",
        ]
        assert f"worker process 2 (pid {victim}) killed by SIGKILL; restarting" in sup.log()
    finally:
        sup.close()


def test_sigkilled_process_is_restarted_and_its_work_is_finished_once(
    test_cluster: TestCluster, cluster: Cluster, tmp_path: Path, effects_env: dict[str, str]
) -> None:
    n = 300
    config = test_cluster.config
    dsn = effects_env["SHARDFLOW_DEMO_EFFECTS_DSN"]
    handles = cluster.submit_many(
        [shardflow.Submission(process_document, (f"doc-{i}",)) for i in range(n)]
    )
    sup = Supervisor(test_cluster, tmp_path, {**effects_env, "SHARDFLOW_DEMO_STEP_MS": "40"})
    try:
        children = sup.wait_ready()
        victim = int(children["1"]["pid"])

        def victim_running() -> int:
            held = 0
            for shard in config.shards:
                with psycopg.connect(shard.dsn) as conn:
                    row = conn.execute(
                        "SELECT count(*) FROM shardflow.workflow_status"
                        " WHERE state = 'RUNNING' AND lease_owner = 'sup-1'"
                    ).fetchone()
                held += int(row[0]) if row else 0
            return held if held >= 2 else 0

        wait_until(victim_running, timeout=60, message="process 1 running workflows")
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: count_states(cluster, config)["SUCCESS"] == n,
            timeout=180,
            interval=0.2,
            message="every workflow done",
        )
        report = sup.processes()
        assert report["1"]["restarts"] == 1 and report["2"]["restarts"] == 0
        replacement = int(report["1"]["pid"])
        assert replacement != victim
    finally:
        sup.close()

    for i, h in enumerate(handles):
        status = h.status()
        assert status.state is WorkflowState.SUCCESS
        assert status.output.startswith(f"published doc-{i}:")
        assert [s.name for s in cluster.steps(h.workflow_id)] == list(STEPS)
    recovered = {h.workflow_id for h in handles if h.status().recoveries > 0}
    assert 1 <= len(recovered) <= 4  # what process 1 held (concurrency 4)
    rows = effects(dsn)
    per_step = Counter((w, s) for w, s, _ in rows)
    assert len(per_step) == n * len(STEPS)
    # Only a step interrupted before its checkpoint runs again: once more, for a workflow
    # the killed process held, first in that process.
    repeated = {k: v for k, v in per_step.items() if v > 1}
    assert set(repeated.values()) <= {2}
    assert {w for w, _ in repeated} <= recovered
    for wid, step in repeated:
        pids = [p for w, s, p in rows if (w, s) == (wid, step)]
        assert pids[0] == victim and pids[1] != victim
    # The restarted process took part in the rest of the work.
    assert replacement in {p for _, _, p in rows}


@pytest.mark.parametrize("how", ["SIGTERM to the supervisor", "Ctrl-C to the process group"])
def test_stop_drains_every_process_and_leaves_none_behind(
    how: str,
    test_cluster: TestCluster,
    cluster: Cluster,
    tmp_path: Path,
    effects_env: dict[str, str],
) -> None:
    n = 60
    config = test_cluster.config
    handles = cluster.submit_many(
        [shardflow.Submission(process_document, (f"doc-{i}",)) for i in range(n)]
    )
    # 4 steps of 250 ms: a run takes 1 s, well inside the drain's grace (one 5 s lease).
    sup = Supervisor(test_cluster, tmp_path, {**effects_env, "SHARDFLOW_DEMO_STEP_MS": "250"})
    try:
        pids = {int(c["pid"]) for c in sup.wait_ready().values()}

        def running_in_both() -> set[str]:
            owners: dict[str, str] = {}
            for shard in config.shards:
                with psycopg.connect(shard.dsn) as conn:
                    owners.update(
                        (str(w), str(o))
                        for w, o in conn.execute(
                            "SELECT workflow_id, lease_owner FROM shardflow.workflow_status"
                            " WHERE state = 'RUNNING'"
                        )
                    )
            return set(owners) if set(owners.values()) == {"sup-1", "sup-2"} else set()

        in_flight = wait_until(running_in_both, timeout=60, message="both processes running")
        if how.startswith("SIGTERM"):
            sup.proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(sup.proc.pid, signal.SIGINT)
        assert sup.proc.wait(60) == 0, sup.log()
    finally:
        sup.close()
    assert all(gone(pid) for pid in pids), sup.log()
    states = count_states(cluster, config)
    # Drained: what ran finished, the rest is waiting for a worker; nothing half-held.
    assert states["RUNNING"] == 0
    assert states["SUCCESS"] + states["ENQUEUED"] == n
    assert all(cluster.handle(w).status().state is WorkflowState.SUCCESS for w in in_flight)
    assert "told to stop at once" not in sup.log()  # one stop request, not two
    per_step = Counter((w, s) for w, s, _ in effects(effects_env["SHARDFLOW_DEMO_EFFECTS_DSN"]))
    assert set(per_step.values()) == {1}
    assert {h.workflow_id for h in handles} >= {w for w, _ in per_step}


def test_the_yaml_sets_the_number_of_processes(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    made = cluster_factory.make(2, extra={"worker": {**TEST_WORKER, "processes": 3}})
    try:
        sup = Supervisor(made, tmp_path, {}, processes=())
        try:
            children = sup.wait_ready()
            assert sorted(children) == ["1", "2", "3"]
            sup.proc.send_signal(signal.SIGTERM)
            assert sup.proc.wait(60) == 0, sup.log()
        finally:
            sup.close()
        assert all(gone(int(c["pid"])) for c in children.values())
    finally:
        cluster_factory.drop(made)


# -- restart policy, with plain child processes ---------------------------------------------

FAILS_AT_ONCE = "import sys; sys.exit(3)"
STOPS_WHEN_TOLD = "import sys; sys.stdin.readline(); sys.exit(0)"


def test_a_crash_looping_process_backs_off_then_the_supervisor_gives_up() -> None:
    policy = RestartPolicy(first_delay=0.2, max_delay=0.4, stable_seconds=30, give_up_after=4)

    def command(index: int, restarts: int) -> list[str]:
        return [sys.executable, "-c", FAILS_AT_ONCE if index == 1 else STOPS_WHEN_TOLD]

    supervisor = SupervisorOf(command, 2, policy=policy)
    started = time.monotonic()
    assert supervisor.run(handle_signals=False) == 1
    took = time.monotonic() - started
    looping, healthy = supervisor.slots
    assert supervisor.gave_up
    assert looping.restarts == 3 and [e.status for e in looping.exits] == [3, 3, 3, 3]
    assert not any(e.expected for e in looping.exits)
    # Each restart waited its delay: 0.2 s, then doubled, at most 0.4 s.
    gaps = [b.started_at - a.ended_at for a, b in itertools.pairwise(looping.exits)]
    assert [round(policy.delay(k), 2) for k in (1, 2, 3)] == [0.2, 0.4, 0.4]
    for k, gap in enumerate(gaps, start=1):
        assert policy.delay(k) <= gap < policy.delay(k) + 1.0
    assert took < 10
    # The other process was asked to stop and did, gracefully.
    assert healthy.restarts == 0
    assert [(e.status, e.expected) for e in healthy.exits] == [(0, True)]


def test_a_process_that_stayed_up_restarts_after_the_first_delay_again() -> None:
    policy = RestartPolicy(first_delay=0.1, max_delay=5, stable_seconds=0.3, give_up_after=2)
    script = "import sys, time; time.sleep(0.5); sys.exit(1)"  # up longer than stable_seconds

    def stop_after_three(slot: ChildSlot) -> None:
        if slot.restarts == 3:
            supervisor.request_stop()

    supervisor = SupervisorOf(
        lambda index, restarts: [sys.executable, "-c", script], 1, policy=policy,
        on_start=stop_after_three,
    )  # fmt: skip
    supervisor.run(handle_signals=False)
    (slot,) = supervisor.slots
    assert not supervisor.gave_up and slot.restarts == 3
    gaps = [b.started_at - a.ended_at for a, b in itertools.pairwise(slot.exits)]
    assert len(gaps) == 3 and all(0.1 <= gap < 1.0 for gap in gaps)
