"""``shardflow check-config``: load and validate the cluster YAML, print what it says."""

from __future__ import annotations

import argparse

from shardflow.cli.options import Subparsers, add_command, load_config
from shardflow.cli.output import print_table
from shardflow.config import ClusterConfig, QueueConfig


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "check-config",
        help="validate the cluster config and summarize it (no database access)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    print_summary(config)
    return 0


def print_summary(config: ClusterConfig) -> None:
    print(f"config {config.source}: OK")
    print(f"cluster {config.name}: {config.hash.slots} slots, hash seed {config.hash.seed}")
    print_table(
        ("shard", "weight", "state", "dsn"),
        [(s.name, s.weight, s.state.value, s.redacted_dsn) for s in config.shards],
        numeric=("weight",),
    )
    queues = ", ".join(_describe_queue(q) for q in config.queues.values())
    print(f"queues: {queues}")
    worker = config.worker
    print(
        f"worker defaults: concurrency {worker.concurrency}, lease {worker.lease_seconds:g}s,"
        f" heartbeat {worker.heartbeat_seconds:g}s, poll {worker.poll_interval_seconds:g}s"
    )


def _describe_queue(queue: QueueConfig) -> str:
    limits = []
    if queue.concurrency is not None:
        limits.append(f"concurrency {queue.concurrency}")
    if queue.worker_concurrency is not None:
        limits.append(f"worker_concurrency {queue.worker_concurrency}")
    if queue.rate_limit is not None:
        rate = queue.rate_limit
        limits.append(f"rate {rate.limit}/{rate.period_seconds:g}s")
    if queue.key_concurrency is not None:
        limits.append(f"key_concurrency {queue.key_concurrency}")
    if queue.key_rate_limit is not None:
        rate = queue.key_rate_limit
        limits.append(f"key rate {rate.limit}/{rate.period_seconds:g}s")
    return f"{queue.name} ({', '.join(limits)})" if limits else queue.name
