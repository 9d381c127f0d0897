"""A worker process SIGKILLed in the middle of sync and async workflows: a survivor
finishes them, and no step whose checkpoint committed runs again."""

from __future__ import annotations

from pathlib import Path

import pytest

import shardflow
from shardflow import WorkflowState
from shardflow.testing.servers import TestCluster
from tests.apps import twins
from tests.e2e.procs import start_worker, stop

N = 4


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_sigkilled_worker_repeats_no_checkpointed_step(
    test_cluster: TestCluster, tmp_path: Path, kind: str
) -> None:
    crashy = twins.FLAVORS[kind].crashy
    release = tmp_path / "release"
    paths = [tmp_path / f"effects-{i}" for i in range(N)]
    with shardflow.connect(test_cluster.config) as cluster:
        handles = [cluster.submit(crashy, str(p), str(release)) for p in paths]
        victim = start_worker(
            test_cluster.path, "tests.apps.twins:app", env={}, log=tmp_path / "victim.log"
        )
        survivor = None
        try:
            # Every workflow has run and checkpointed step "one" and waits in the next step.
            victim.wait_until(
                lambda: all(
                    [s.name for s in cluster.steps(h.workflow_id)] == ["effect"] for h in handles
                ),
                timeout=60,
                what="holding every workflow after its first step",
            )
            victim.kill_now()
            release.touch()
            survivor = start_worker(
                test_cluster.path, "tests.apps.twins:app", env={}, log=tmp_path / "survivor.log"
            )
            results = [h.result(timeout=90) for h in handles]
        finally:
            for proc in (victim, survivor):
                if proc is not None:
                    stop(proc)
        assert results == ["done"] * N
        for h, path in zip(handles, paths, strict=True):
            assert path.read_text().split() == ["one", "two"]
            status = h.status()
            assert status.state is WorkflowState.SUCCESS
            assert status.attempt == 2 and status.recoveries == 1
