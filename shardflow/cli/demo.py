"""``shardflow demo``: the crash-and-recover demo on an embedded local cluster."""

from __future__ import annotations

import argparse
from pathlib import Path

from shardflow.cli.options import Subparsers, add_command, add_option, positive_int


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "demo",
        help="run the crash-and-recover demo on an embedded 3-shard cluster",
        description=(
            "Start 3 local PostgreSQL shards and worker processes, submit document"
            " pipelines, SIGKILL a worker mid-run, and verify that every workflow"
            " completes exactly once. Needs no configuration."
        ),
    )
    add_option(
        parser,
        "--workflows",
        type=positive_int,
        default=3000,
        help="workflows to submit (default 3000)",
    )
    add_option(
        parser,
        "--workers",
        type=positive_int,
        default=2,
        help="worker processes, one of which is killed (default 2)",
    )
    add_option(
        parser,
        "--concurrency",
        type=positive_int,
        default=16,
        help="threads per worker (default 16)",
    )
    add_option(
        parser,
        "--demo-dir",
        default=None,
        help="directory for the servers (default: a new temporary directory)",
    )
    add_option(parser, "--keep", flag=True, help="leave the cluster running afterwards")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from shardflow.demo.run import run_demo

    result = run_demo(
        workflows=args.workflows,
        workers=args.workers,
        concurrency=args.concurrency,
        directory=Path(args.demo_dir) if args.demo_dir else None,
        keep=args.keep,
    )
    return 0 if result.ok else 1
