"""Every program in examples/ runs as its README says, against a fresh local cluster:
a worker started with ``shardflow worker --app MODULE:app`` in the example's folder, and
the example's own submitter run as a script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import shardflow
from shardflow.testing import TestCluster
from shardflow.testing.servers import wait_until
from tests.e2e.procs import ROOT, stop

EXAMPLES = ROOT / "examples"
StartWorker = Callable[[str, str], Path]
_WORKER = (sys.executable, "-m", "shardflow", "--log-level", "INFO", "worker", "--app")


def _env(config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDFLOW_")}
    env["SHARDFLOW_CONFIG"] = str(config)
    return env


@pytest.fixture
def run_example(test_cluster: TestCluster, tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    workers: list[subprocess.Popen[bytes]] = []

    def start(folder: str, app: str) -> Path:
        log = tmp_path / f"{folder}-worker.log"
        with log.open("ab") as out:
            workers.append(
                subprocess.Popen(
                    [*_WORKER, app],
                    cwd=EXAMPLES / folder,
                    env=_env(test_cluster.path),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
        return log

    yield start
    for proc in workers:
        assert stop(proc) == 0


def _script(folder: str, *args: str, config: Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / folder / args[0]), *args[1:]],
        cwd=cwd or EXAMPLES / folder,
        env=_env(config),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_orders_workflow_module_and_submitter(
    run_example: StartWorker, test_cluster: TestCluster
) -> None:
    log = run_example("orders", "myapp:app")
    out = _script("orders", "submit_order.py", "o-1", config=test_cluster.path)
    assert out == "rcpt-o-1\n"
    # Idempotent: the same order again is the same workflow (and the same answer).
    assert _script("orders", "submit_order.py", "o-1", config=test_cluster.path) == out
    with shardflow.connect(test_cluster.path) as cluster:
        status = cluster.get("order-o-1")
        assert (status.name, status.state.value) == ("orders.process", "SUCCESS")
        assert [s.name for s in cluster.steps("order-o-1")][:1] == ["charge"]
    text = log.read_text(encoding="utf-8")
    assert "serves 1 workflow(s): orders.process [default]" in text


def test_approvals_messages_and_events(run_example: StartWorker, test_cluster: TestCluster) -> None:
    run_example("approvals", "approvals:app")
    out = _script("approvals", "approvals.py", "r-42", config=test_cluster.path)
    assert out.splitlines() == ["waiting", "approved"]


def test_album_children(run_example: StartWorker, test_cluster: TestCluster) -> None:
    run_example("album", "album:app")
    out = _script("album", "album.py", "a.png", "b.png", config=test_cluster.path)
    assert out == "['a.png@small', 'b.png@small']\n"


def test_agent_async_workflow_and_client(
    run_example: StartWorker, test_cluster: TestCluster
) -> None:
    run_example("agent", "agent:app")
    out = _script("agent", "agent.py", "tidy", config=test_cluster.path)
    assert out.splitlines() == [
        "plan for 'tidy'",
        "{'plan': \"plan for 'tidy'\", 'words': 3, 'verdict': 'approved'}",
    ]


def test_nightly_schedule(run_example: StartWorker, test_cluster: TestCluster) -> None:
    run_example("nightly", "nightly:app")
    with shardflow.connect(test_cluster.path) as cluster:
        page = wait_until(
            lambda: cluster.list_workflows(name="reports.tick", state="SUCCESS").items,
            timeout=60,
            message="a scheduled tick to run",
        )
        assert page[0].workflow_id.startswith("schedule:")
        assert str(page[0].output).startswith("report for ")


def test_testing_plugin_in_a_users_project(shard_servers: list[str], tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(EXAMPLES / "testing", project)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDFLOW_")}
    env["SHARDFLOW_TEST_DSNS"] = ",".join(shard_servers)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
