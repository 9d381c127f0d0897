"""shardflow runner: submit, drain, serve (for recovery and latency), measure latency.

Uses only the public API: ``shardflow.connect``/``connect_async``,
``Cluster.submit``/``submit_many``, ``AsyncCluster.submit``, ``shardflow.Worker``.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from typing import Any

import psycopg

import shardflow
from bench.apps.probe import PROBE
from bench.apps.shardflow_app import app, chain, chain_async, hold
from bench.runners.common import (
    AppShape,
    ServerCpu,
    Spec,
    chunks,
    drain_result,
    main,
    ready,
    wait_for_go,
    wait_until,
)


def submit(spec: Spec) -> dict[str, Any]:
    """Submit ``count`` workflows, one call each (``batch`` 0) or ``batch`` at a time."""
    count: int = spec["count"]
    batch: int = spec.get("batch", 0)
    workflow = hold if spec.get("workflow") == "bench.hold" else chain
    arg = spec.get("seconds", 0.0) if workflow is hold else spec.get("steps", 0)
    with shardflow.connect(spec["config"]) as cluster:
        started, started_cpu = time.perf_counter(), time.process_time()
        if batch:
            for part in chunks(count, batch):
                cluster.submit_many([shardflow.Submission(workflow, (i, arg)) for i in part])
        else:
            for i in range(count):
                cluster.submit(workflow, i, arg)
        seconds = time.perf_counter() - started
        cpu = time.process_time() - started_cpu
    return {"workflows": count, "seconds": seconds, "cpu_seconds": cpu}


def _worker(cluster: shardflow.Cluster, spec: Spec) -> shardflow.Worker:
    return shardflow.Worker(
        cluster, app, shards=spec.get("shards"), concurrency=spec.get("concurrency")
    )


def drain(spec: Spec) -> dict[str, Any]:
    """Run one worker until ``count`` workflows (default: all ENQUEUED on its shards) end."""
    with shardflow.connect(spec["config"]) as cluster:
        worker = _worker(cluster, spec)
        count: int | None = spec.get("count")
        if count is None:
            count = sum(_enqueued(cluster.config.shard(s).dsn) for s in worker.shards)
        PROBE.reset(count)
        wait_for_go(spec)
        server = ServerCpu(PROBE, spec.get("postmasters"))
        started, started_cpu = time.perf_counter(), time.process_time()
        worker.start()

        def finished() -> bool:
            return sum(worker.stats.finished.values()) >= count

        timeout = spec.get("timeout", 600)
        # Wait without polling until the last body returns, then for its final write.
        PROBE.done.wait(timeout)
        wait_until(finished, timeout)
        ended, ended_cpu = time.perf_counter(), time.process_time()
        server_cpu = server.stop()
        worker.stop(grace_seconds=0)
    result = drain_result(PROBE, started, started_cpu, ended, ended_cpu, server_cpu)
    result["states"] = dict(worker.stats.finished)
    return result


def _enqueued(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM shardflow.workflow_status WHERE state = 'ENQUEUED'"
        ).fetchone()
    return int(row[0]) if row else 0


def serve(spec: Spec) -> dict[str, Any]:
    """Run a worker until SIGTERM; ``READY`` once it claims."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with shardflow.connect(spec["config"]) as cluster:
        worker = _worker(cluster, spec)
        worker.start()
        ready()
        stop.wait()
        worker.stop(grace_seconds=0)
    return {"finished": dict(worker.stats.finished), "recovered": worker.stats.recovered}


def latency(spec: Spec) -> dict[str, Any]:
    """Submit ``count`` workflows at ``rate`` per second (open loop, one call each) to a
    running worker; per workflow, seconds from submit to its first step and to its end."""
    count: int = spec["count"]
    rate: float = spec["rate"]
    steps: int = spec["steps"]
    with shardflow.connect(spec["config"]) as cluster:
        submitted: list[tuple[shardflow.WorkflowHandle, float]] = []
        began = time.perf_counter()
        for i in range(count):
            pause = began + i / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            at = time.time()
            submitted.append((cluster.submit(chain, i, steps), at))
        first_step: list[float] = []
        completion: list[float] = []
        for handle, at in submitted:
            handle.result(timeout=spec.get("timeout", 120))
            status = handle.status()
            assert status.finished_at is not None
            completion.append(status.finished_at.timestamp() - at)
            if steps:
                first_step.append(cluster.steps(handle.workflow_id)[0].output["t"] - at)
    return {"first_step": first_step, "completion": completion}


def app_shape(spec: Spec) -> dict[str, Any]:
    """The application shape: ``clients`` threads, each submitting a ``steps``-step
    workflow and waiting for its ``result()``, until ``count`` workflows have ended. Per
    workflow: seconds from submit to result. The worker runs in this process, or with
    ``worker_pid`` in its own (a ``serve`` runner the harness started), whose CPU time
    is then read from /proc and reported as ``worker_cpu_seconds``."""
    worker_pid: int | None = spec.get("worker_pid")
    with shardflow.connect(spec["config"]) as cluster:
        worker = None if worker_pid else _worker(cluster, spec)
        if worker is not None:
            worker.start()
        run = AppShape(
            spec["count"],
            spec["clients"],
            spec.get("postmasters"),
            [worker_pid] if worker_pid else None,
        )

        def one(i: int) -> None:
            handle = cluster.submit(chain, i, spec["steps"])
            handle.result(timeout=spec.get("timeout", 120))

        result = run.measure(one)
        if worker is not None:
            worker.stop(grace_seconds=0)
    return result


def app_shape_async(spec: Spec) -> dict[str, Any]:
    """The application shape with the async client: ``clients`` asyncio tasks on one
    event loop, each awaiting ``submit`` of an async ``steps``-step workflow and then its
    ``result()``; the worker in this process runs the workflows on its own event loop."""

    async def clients() -> dict[str, Any]:
        async with await shardflow.connect_async(spec["config"]) as cluster:
            worker = _worker(cluster.sync, spec)
            worker.start()
            run = AppShape(spec["count"], spec["clients"], spec.get("postmasters"))

            async def one(i: int) -> None:
                handle = await cluster.submit(chain_async, i, spec["steps"])
                await handle.result(timeout=spec.get("timeout", 120))

            try:
                return await run.measure_tasks(one)
            finally:
                await asyncio.to_thread(worker.stop, grace_seconds=0)

    return asyncio.run(clients())


if __name__ == "__main__":
    sys.exit(
        main(
            {
                "submit": submit,
                "drain": drain,
                "serve": serve,
                "latency": latency,
                "app": app_shape,
                "app_async": app_shape_async,
            }
        )
    )
