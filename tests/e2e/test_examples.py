"""Every program in examples/ runs as its README says, against a fresh local cluster:
a worker started with ``shardflow worker --app MODULE:app`` in the example's folder, and
the example's own submitter run as a script."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
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


def test_fastapi_app_submits_and_awaits_with_the_async_client(
    run_example: StartWorker, test_cluster: TestCluster, tmp_path: Path
) -> None:
    pytest.importorskip("fastapi")
    run_example("fastapi_app", "flows:app")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "uvicorn.log"
    with log.open("ab") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "web:api", "--port", str(port)],
            cwd=EXAMPLES / "fastapi_app",
            env=_env(test_cluster.path),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}/greetings"

    def call(method: str, path: str) -> tuple[int, object]:
        request = urllib.request.Request(base + path, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def answers() -> bool:
        try:
            return call("GET", "/nobody")[0] == 404
        except OSError:
            return False

    try:
        wait_until(answers, timeout=60, message="the FastAPI app to answer")
        assert call("POST", "/ada") == (200, {"name": "ada", "message": "Hello, ada!"})
        # The same request again is the same workflow, and the same answer.
        assert call("POST", "/ada") == (200, {"name": "ada", "message": "Hello, ada!"})
        assert call("GET", "/ada") == (200, {"state": "SUCCESS"})
    finally:
        server.terminate()
        # uvicorn shuts down (the lifespan closes the client), then re-raises SIGTERM.
        assert server.wait(timeout=30) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in log.read_text(encoding="utf-8")
    with shardflow.connect(test_cluster.path) as cluster:
        assert [s.name for s in cluster.steps("greet-ada")] == ["greeter.compose"]


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
