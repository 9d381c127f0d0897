"""PgQueuer runner: a job queue with no step checkpoints, for the 0-step and batch rows.

asyncpg is PgQueuer's primary driver. The drain uses ``QueueManager.run`` in ``drain``
mode (it returns once the queue is empty and every job finished) with PgQueuer's default
batch size; the job does nothing but tick the probe.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import timedelta
from typing import Any

import asyncpg
from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager
from pgqueuer.types import QueueExecutionMode

from bench.apps.probe import PROBE
from bench.runners.common import ServerCpu, Spec, chunks, drain_result, main, wait_for_go

ENTRYPOINT = "bench.noop"


async def _connect(spec: Spec) -> asyncpg.Connection:
    return await asyncpg.connect(spec["dsn"])


def setup(spec: Spec) -> dict[str, Any]:
    async def install() -> None:
        conn = await _connect(spec)
        await Queries(AsyncpgDriver(conn)).install()
        await conn.close()

    asyncio.run(install())
    return {}


def submit(spec: Spec) -> dict[str, Any]:
    """Enqueue ``count`` jobs, one call each (``batch`` 0) or ``batch`` per call."""
    count: int = spec["count"]
    batch: int = spec.get("batch", 0)

    async def enqueue() -> tuple[float, float]:
        conn = await _connect(spec)
        queries = Queries(AsyncpgDriver(conn))
        payload = b'{"steps": 0}'
        started, started_cpu = time.perf_counter(), time.process_time()
        if batch:
            for part in chunks(count, batch):
                n = len(part)
                await queries.enqueue([ENTRYPOINT] * n, [payload] * n, [0] * n)
        else:
            for _ in range(count):
                await queries.enqueue(ENTRYPOINT, payload)
        result = time.perf_counter() - started, time.process_time() - started_cpu
        await conn.close()
        return result

    seconds, cpu = asyncio.run(enqueue())
    return {"workflows": count, "seconds": seconds, "cpu_seconds": cpu}


def drain(spec: Spec) -> dict[str, Any]:
    count: int = spec["count"]
    PROBE.reset(count)

    async def run() -> tuple[float, float, float, float, float | None]:
        conn = await _connect(spec)
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint(ENTRYPOINT)
        async def noop(job: Job) -> None:
            PROBE.started()
            PROBE.finished()

        wait_for_go(spec)
        server = ServerCpu(PROBE, spec.get("postmasters"))
        started, started_cpu = time.perf_counter(), time.process_time()
        await qm.run(
            mode=QueueExecutionMode.drain,
            batch_size=spec.get("batch_size", 10),
            dequeue_timeout=timedelta(seconds=1),
        )
        ended, ended_cpu = time.perf_counter(), time.process_time()
        server_cpu = server.stop()
        await conn.close()
        return started, started_cpu, ended, ended_cpu, server_cpu

    return drain_result(PROBE, *asyncio.run(run()))


if __name__ == "__main__":
    sys.exit(main({"setup": setup, "submit": submit, "drain": drain}))
