"""DBOS Transact runner: the same workflow shape, run the way DBOS documents for queues.

A queue is registered in the system database (``DBOS.register_queue``); a submitting
process enqueues with ``DBOS.enqueue_workflow`` and listens to no queue; a worker process
launches DBOS listening to that queue and runs what it dequeues. DBOS has no batch
enqueue, so submission is one call per workflow.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

import psycopg
from dbos import DBOS, DBOSConfig

from bench.apps.probe import PROBE
from bench.runners.common import (
    AppShape,
    ServerCpu,
    Spec,
    drain_result,
    main,
    ready,
    wait_for_go,
    wait_until,
)

QUEUE = "bench"


@DBOS.step()
def noop(k: int) -> dict[str, Any]:
    return {"k": k, "t": time.time()}


@DBOS.workflow(name="bench.chain")
def chain(i: int, steps: int) -> dict[str, Any]:
    PROBE.started()
    for k in range(steps):
        noop(k)
    PROBE.finished()
    return {"i": i, "steps": steps}


def _launch(spec: Spec, executor: str, listen: list[str]) -> None:
    config: DBOSConfig = {
        "name": "bench",
        "system_database_url": spec["dsn"],
        "application_version": "bench",
        "executor_id": executor,
        "log_level": "WARNING",
    }
    if spec.get("pool_size"):
        config["sys_db_pool_size"] = spec["pool_size"]
    DBOS(config=config)
    DBOS.listen_queues(listen)
    DBOS.launch()
    DBOS.register_queue(
        QUEUE,
        worker_concurrency=spec.get("worker_concurrency"),
        polling_interval_sec=spec.get("polling_interval_sec", 1.0),
        on_conflict="always_update",
    )


def setup(spec: Spec) -> dict[str, Any]:
    """Create the system database schema and the queue."""
    _launch(spec, "setup", [])
    DBOS.destroy()
    return {}


def submit(spec: Spec) -> dict[str, Any]:
    count: int = spec["count"]
    steps: int = spec.get("steps", 0)
    _launch(spec, "submitter", [])
    started, started_cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        DBOS.enqueue_workflow(QUEUE, chain, i, steps)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - started_cpu
    DBOS.destroy()
    return {"workflows": count, "seconds": seconds, "cpu_seconds": cpu}


def _successes(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM dbos.workflow_status WHERE status = 'SUCCESS'"
        ).fetchone()
    return int(row[0]) if row else 0


def drain(spec: Spec) -> dict[str, Any]:
    """Launch a DBOS worker on the queue; done when ``count`` workflows are SUCCESS."""
    count: int = spec["count"]
    PROBE.reset(count)
    wait_for_go(spec)
    server = ServerCpu(PROBE, spec.get("postmasters"))
    started, started_cpu = time.perf_counter(), time.process_time()
    _launch(spec, "worker", [QUEUE])
    timeout = spec.get("timeout", 600)
    # The bodies are done first; DBOS records each outcome just after its body returns.
    PROBE.done.wait(timeout)
    wait_until(lambda: _successes(spec["dsn"]) >= count, timeout, interval=0.002)
    ended, ended_cpu = time.perf_counter(), time.process_time()
    server_cpu = server.stop()
    DBOS.destroy()
    return drain_result(PROBE, started, started_cpu, ended, ended_cpu, server_cpu)


def serve(spec: Spec) -> dict[str, Any]:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _launch(spec, "worker", [QUEUE])
    ready()
    stop.wait()
    DBOS.destroy()
    return {}


def latency(spec: Spec) -> dict[str, Any]:
    """Enqueue ``count`` workflows at ``rate`` per second for a running worker; per
    workflow, seconds from enqueue to its first step and to its end."""
    count: int = spec["count"]
    rate: float = spec["rate"]
    steps: int = spec["steps"]
    _launch(spec, "submitter", [])
    submitted = []
    began = time.perf_counter()
    for i in range(count):
        pause = began + i / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        at = time.time()
        submitted.append((DBOS.enqueue_workflow(QUEUE, chain, i, steps), at))
    first_step: list[float] = []
    completion: list[float] = []
    for handle, at in submitted:
        handle.get_result()
        status = handle.get_status()
        assert status.updated_at is not None
        completion.append(status.updated_at / 1000 - at)
        if steps:
            first = DBOS.list_workflow_steps(handle.get_workflow_id())[0]
            first_step.append(first["output"]["t"] - at)
    DBOS.destroy()
    return {"first_step": first_step, "completion": completion}


def app_shape(spec: Spec) -> dict[str, Any]:
    """The application shape in DBOS's direct mode: ``clients`` threads, each starting a
    workflow with ``DBOS.start_workflow`` (run by this process, no queue) and waiting for
    ``get_result()``, until ``count`` workflows have ended."""
    _launch(spec, "app", [])
    run = AppShape(spec["count"], spec["clients"], spec.get("postmasters"))

    def one(i: int) -> None:
        DBOS.start_workflow(chain, i, spec["steps"]).get_result()

    try:
        return run.measure(one)
    finally:
        DBOS.destroy()


def app_shape_queue(spec: Spec) -> dict[str, Any]:
    """The application shape in DBOS's queue mode: this process listens to the queue (its
    worker), and ``clients`` threads each enqueue a workflow with
    ``DBOS.enqueue_workflow`` and wait for ``get_result()``. An enqueued workflow's
    handle polls the database for the result, every ``polling_interval_sec`` (DBOS's
    default 1 s; here the queue's own polling interval)."""
    _launch(spec, "app", [QUEUE])
    run = AppShape(spec["count"], spec["clients"], spec.get("postmasters"))
    polling = spec.get("polling_interval_sec", 1.0)

    def one(i: int) -> None:
        handle = DBOS.enqueue_workflow(QUEUE, chain, i, spec["steps"])
        handle.get_result(polling_interval_sec=polling)

    try:
        return run.measure(one)
    finally:
        DBOS.destroy()


if __name__ == "__main__":
    sys.exit(
        main(
            {
                "setup": setup,
                "submit": submit,
                "drain": drain,
                "serve": serve,
                "latency": latency,
                "app": app_shape,
                "app_queue": app_shape_queue,
            }
        )
    )
