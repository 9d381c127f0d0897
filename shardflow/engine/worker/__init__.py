"""Worker processes: per-shard claim, heartbeat, listener and commit threads, and a
thread per running workflow.

A worker claims from each of its shards in batches (``FOR UPDATE SKIP LOCKED``), runs the
claimed workflows on a thread pool of ``concurrency`` threads, and renews the leases of
everything it runs with one statement per shard per heartbeat. Any worker recovers
workflows whose lease expired, so a crashed worker needs no restart and no coordinator.

Shards are isolated from each other: each has its own claim loop, heartbeat, listener and
committer, and one claim in flight holds at most a fair share of the free threads, so a
shard that hangs (frozen server, DDL lock) costs only the workflows that live on it. No
loop dies of an error: each logs it, backs off and goes on, and records its progress for
:meth:`Worker.health`. What happens to each run is told to subscribers of
``worker.events`` (:mod:`shardflow.engine.worker.events`).

Modules: ``base`` (configuration, shared state, thread capacity), ``claiming`` (claim
loops, running and ending runs), ``leases`` (heartbeats, deadlines), ``queue_leases``
(a queue's ``concurrency``, held on its home shard; ``home_calls``: the takes' thread),
``listening`` (notifications), ``events`` (the event hub), ``lifecycle`` (start, stop,
health).
"""

from __future__ import annotations

from shardflow.engine.worker.base import WorkerStats
from shardflow.engine.worker.events import EventKind, WorkerEvent, WorkerEvents
from shardflow.engine.worker.lifecycle import Worker

__all__ = ["EventKind", "Worker", "WorkerEvent", "WorkerEvents", "WorkerStats"]
