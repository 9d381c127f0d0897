"""Many async workflows in flight in one worker process: ``python -m bench.async_bench``.

Submits ``--n`` workflows (default 1,000), each awaiting one step that does
``asyncio.sleep(1)`` (a stand-in for an HTTP call), to 3 local shards, then starts one
worker process (``--async-concurrency N``: all of them in flight at once on its event
loop) and measures, inside that process, the time from the worker's start until every
workflow has ended. Prints the wall time beyond the 1 s wait and the worker's peak RSS.
Issue 14's target for N=10,000: under 3 s beyond the wait, RSS under 500 MB.

``--compare K``: then, with one worker process serving both kinds (default
``concurrency`` and ``async_concurrency``), drains K sync and K async 3-step workflows in
alternation (sync, async, sync, async: A/B in one run) and prints the workflows/s of
each, and the p50/p90 latency from submit to result of ``--samples`` 1-step async
workflows submitted one at a time with the async client (light load).

``--client``: the async client's native calls against the thread-backed way (the sync
client's call in ``asyncio.to_thread``, and result()'s reads in a thread: what the
async client did before), alternating in one run: submits/s from ``--tasks`` tasks
(default 64) submitting at once, and the p50/p90 submit-to-result latency of
``--samples`` workflows one at a time, with one worker process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import shardflow
from shardflow.engine.handles import WorkflowHandle
from shardflow.engine.listeners import WaitFor
from shardflow.engine.states import WorkflowState
from shardflow.testing.servers import ClusterFactory, start_servers

app = shardflow.App("async_bench")
# The worker settings of a production config (the defaults), not the test clusters'
# short poll and heartbeat intervals, which add claims to the path being measured.
PRODUCTION_WORKER: dict[str, Any] = {"worker": {}}
ROOT = Path(__file__).resolve().parents[1]


@app.step(name="io")
async def io(i: int) -> int:
    await asyncio.sleep(1.0)
    return i


@app.workflow(name="async_bench.one_call")
async def one_call(i: int) -> int:
    return await io(i)


@app.step(name="add")
def add(a: int, b: int) -> int:
    return a + b


@app.step(name="add")
async def add_async(a: int, b: int) -> int:
    return a + b


@app.workflow(name="async_bench.three_sync")
def three_sync(x: int) -> int:
    return add(add(add(x, 1), 1), 1)


@app.workflow(name="async_bench.three_async")
async def three_async(x: int) -> int:
    return await add_async(await add_async(await add_async(x, 1), 1), 1)


@app.workflow(name="async_bench.echo")
async def echo(x: int) -> int:
    return await add_async(x, 0)


def serve(config: Path) -> None:
    """A worker for ``--compare``: runs until its stdin closes."""
    with shardflow.connect(config) as cluster, shardflow.Worker(cluster, app):
        print("ready", flush=True)
        sys.stdin.read()


def drain(cluster: shardflow.Cluster, workflow: Any, k: int) -> float:
    """Submit ``k`` workflows and wait until all have ended: workflows per second."""
    before = ended_in_db(cluster)
    started = time.monotonic()
    for first in range(0, k, 1000):
        batch = range(first, min(first + 1000, k))
        cluster.submit_many([shardflow.Submission(workflow, (i,)) for i in batch])
    deadline = started + 300
    while ended_in_db(cluster) < before + k:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{workflow.name}: not drained in 300 s")
        time.sleep(0.02)
    return k / (time.monotonic() - started)


async def latencies(config: Path, samples: int) -> list[float]:
    """Submit-to-result of one workflow at a time with the async client, in ms."""
    out = []
    async with await shardflow.connect_async(config) as cluster:
        await (await cluster.submit(echo, -1)).result(timeout=30)  # warm: pools, listeners
        for i in range(samples):
            started = time.perf_counter()
            handle = await cluster.submit(echo, i)
            assert await handle.result(timeout=30) == i
            out.append((time.perf_counter() - started) * 1000.0)
    return out


async def threaded_result(cluster: shardflow.Cluster, handle: WorkflowHandle[Any]) -> Any:
    """result() as the async client awaited it before: each read of the row in a thread,
    the wait for the notification on the loop."""
    deadline = time.monotonic() + 30
    listeners = cluster.listeners
    with listeners.watch(WaitFor.DONE, handle.workflow_id, asyncio.get_running_loop()) as w:
        while True:
            outcome = await asyncio.to_thread(handle.read_outcome, deadline, 30)
            if outcome is not None:
                return outcome.value
            await listeners.wait_async(w, handle.shard, deadline - time.monotonic())


async def client_round(
    aclient: shardflow.AsyncCluster, native: bool, tasks: int, each: int, samples: int
) -> tuple[float, list[float]]:
    """One round of one way: submits/s from ``tasks`` tasks, then latencies in ms."""
    sync = aclient.sync

    async def submitter(t: int) -> None:
        for i in range(each):
            if native:
                await aclient.submit(echo, i)
            else:
                await asyncio.to_thread(sync.submit, echo, i)

    started = time.perf_counter()
    await asyncio.gather(*(submitter(t) for t in range(tasks)))
    rate = tasks * each / (time.perf_counter() - started)
    out = []
    for i in range(samples):
        started = time.perf_counter()
        if native:
            value = await (await aclient.submit(echo, i)).result(timeout=30)
        else:
            value = await threaded_result(sync, await asyncio.to_thread(sync.submit, echo, i))
        assert value == i
        out.append((time.perf_counter() - started) * 1000.0)
    return rate, sorted(out)


def client_compare(config: Path, tasks: int, samples: int) -> None:
    """Native vs thread-backed async client, alternating (A/B/A/B) in one run."""
    with worker_process(config):

        async def run() -> dict[str, list[tuple[float, list[float]]]]:
            rounds: dict[str, list[tuple[float, list[float]]]] = {"native": [], "thread": []}
            async with await shardflow.connect_async(config) as aclient:
                for native in (True, False):  # warm: pools, listeners, executor threads
                    await client_round(aclient, native, tasks, 2, 20)
                for _ in range(3):
                    for native in (True, False):
                        got = await client_round(aclient, native, tasks, 20, samples)
                        rounds["native" if native else "thread"].append(got)
            return rounds

        rounds = asyncio.run(run())
    for way, got in rounds.items():
        rates = ", ".join(f"{r:.0f}" for r, _ in got)
        p50s = ", ".join(f"{ms[len(ms) // 2]:.2f}" for _, ms in got)
        p90s = ", ".join(f"{ms[int(len(ms) * 0.9)]:.2f}" for _, ms in got)
        print(f"{way}: submits/s from {tasks} tasks [{rates}]; p50 ms [{p50s}]; p90 ms [{p90s}]")
    best = {w: max(r for r, _ in g) for w, g in rounds.items()}
    med = {w: sorted(ms[len(ms) // 2] for _, ms in g)[1] for w, g in rounds.items()}
    print(
        f"native/thread: submits/s (best) {best['native'] / best['thread']:.2f},"
        f" p50 latency (median round) {med['native'] / med['thread']:.2f}"
    )


class worker_process:
    """One worker process serving this app (``--serve``), for as long as the block."""

    def __init__(self, config: Path) -> None:
        self.config = config

    def __enter__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.async_bench", "--serve", str(self.config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(60)


def compare(config: Path, k: int, samples: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "bench.async_bench", "--serve", str(config)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        rates: dict[str, list[float]] = {"sync": [], "async": []}
        with shardflow.connect(config) as cluster:
            drain(cluster, three_async, 200)  # warm: the worker's loop and threads
            for _ in range(2):
                rates["sync"].append(drain(cluster, three_sync, k))
                rates["async"].append(drain(cluster, three_async, k))
        ms = sorted(asyncio.run(latencies(config, samples)))
    finally:
        assert worker.stdin is not None
        worker.stdin.close()
        worker.wait(60)
    sync_rate, async_rate = max(rates["sync"]), max(rates["async"])
    print(
        f"3-step workflows/s, {k} per drain, one worker: sync"
        f" {', '.join(f'{r:.0f}' for r in rates['sync'])}; async"
        f" {', '.join(f'{r:.0f}' for r in rates['async'])}; async/sync (best of each)"
        f" {async_rate / sync_rate:.2f}"
    )
    print(
        f"submit-to-result with the async client, {samples} one at a time:"
        f" p50 {ms[len(ms) // 2]:.1f} ms, p90 {ms[int(len(ms) * 0.9)]:.1f} ms,"
        f" max {ms[-1]:.1f} ms"
    )


def ended_in_db(cluster: shardflow.Cluster) -> int:
    """Workflows in a final state, counted in the database (the source of truth: a run
    that stopped waiting for its end's commit answer is not counted as finished by its
    worker, yet its end may have been committed)."""
    return sum(
        count
        for shard in cluster.config.shard_names
        for state, count in cluster.store.count_by_state(shard).items()
        if WorkflowState(state).is_terminal
    )


def run_worker(config: Path, n: int, lease: float) -> dict[str, float]:
    """The worker side: run until ``n`` workflows have ended; time and peak RSS."""
    with shardflow.connect(config) as cluster:
        # A production-like lease: a run waits for its commit answer up to a third of it.
        worker = shardflow.Worker(
            cluster, app, async_concurrency=n, claim_batch=500, lease_seconds=lease
        )
        started = time.monotonic()
        worker.start()
        try:
            deadline = started + 120
            claimed_at = 0.0
            done = 0
            while time.monotonic() < deadline:
                if not claimed_at and worker.stats.claimed >= n:
                    claimed_at = time.monotonic() - started
                # The worker's own count first (cheap), then the database's.
                if sum(worker.stats.finished.values()) >= n or (
                    worker.stats.claimed >= n and (done := ended_in_db(cluster)) >= n
                ):
                    break
                time.sleep(0.01 if worker.stats.claimed < n else 0.1)
            elapsed = time.monotonic() - started
            done = max(done, ended_in_db(cluster))
        finally:
            worker.stop()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "n": n,
        "ended": done,
        "ended_here": sum(worker.stats.finished.values()),
        "seconds": elapsed,
        "claimed_at": claimed_at,
        "interrupted": worker.stats.interrupted,
        "recovered": worker.stats.recovered,
        "dead": worker.stats.dead_lettered,
        "leases_lost": worker.stats.leases_lost,
        "rss_mb": peak_kb / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="workflows in flight")
    parser.add_argument("--lease", type=float, default=30.0, help="worker lease seconds")
    parser.add_argument("--compare", type=int, default=0, help="K: sync vs async drains")
    parser.add_argument("--samples", type=int, default=200, help="latency samples")
    parser.add_argument("--client", action="store_true", help="native vs thread-backed client")
    parser.add_argument("--tasks", type=int, default=64, help="tasks submitting at once")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return 0
    if args.worker is not None:
        print(json.dumps(run_worker(args.worker, args.n, args.lease)))
        return 0
    if args.client:
        with start_servers(1) as dsns, tempfile.TemporaryDirectory() as workdir:
            factory = ClusterFactory(dsns, Path(workdir))
            made = factory.make(3, extra=PRODUCTION_WORKER)
            try:
                client_compare(made.path, args.tasks, args.samples)
            finally:
                factory.drop(made)
        return 0
    with start_servers(1) as dsns, tempfile.TemporaryDirectory() as workdir:
        factory = ClusterFactory(dsns, Path(workdir))
        made = factory.make(3, extra=PRODUCTION_WORKER)
        try:
            with shardflow.connect(made.config) as cluster:
                submitted = time.monotonic()
                for start in range(0, args.n, 1000):
                    batch = range(start, min(start + 1000, args.n))
                    cluster.submit_many([shardflow.Submission(one_call, (i,)) for i in batch])
                submit_seconds = time.monotonic() - submitted
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.async_bench",
                    "--worker",
                    str(made.path),
                    "--n",
                    str(args.n),
                    "--lease",
                    str(args.lease),
                ],
                check=True,
                capture_output=True,
                text=True,
                cwd=ROOT,
                env=env,
            ).stdout
            result = json.loads(out.strip().splitlines()[-1])
            if args.compare:
                compare(made.path, args.compare, args.samples)
        finally:
            factory.drop(made)
    beyond = result["seconds"] - 1.0
    print(
        f"{result['n']} async workflows (each awaiting a 1 s step) in one worker:"
        f" ended {result['ended']} ({result['ended_here']} seen ending by the worker),"
        f" {result['seconds']:.2f} s wall, {beyond:.2f} s beyond"
        f" the 1 s wait; worker peak RSS {result['rss_mb']:.0f} MB"
        f" (all claimed after {result['claimed_at']:.2f} s; {result['interrupted']} runs"
        f" interrupted, {result['recovered']} recovered, {result['dead']} dead,"
        f" {result['leases_lost']} leases lost;"
        f" submit took {submit_seconds:.2f} s)"
    )
    return 0 if result["ended"] == result["n"] else 1


if __name__ == "__main__":
    sys.exit(main())
