"""``shardflow dev up|down|status``: a local cluster of embedded PostgreSQL servers.

``dev up`` prints the path of the generated ``cluster.yaml`` as the only line on stdout
(the summary goes to stderr), so scripts can write ``CONFIG=$(shardflow dev up)``.
"""

from __future__ import annotations

import argparse

from shardflow.cli.options import (
    Subparsers,
    add_command,
    add_json_option,
    add_option,
    positive_int,
)
from shardflow.cli.output import note, print_json, print_table
from shardflow.config import redact_dsn
from shardflow.local import LocalCluster, ServerStatus

DEFAULT_DIR = ".shardflow-dev"


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "dev", help="run a local cluster of embedded PostgreSQL servers"
    )
    actions = parser.add_subparsers(dest="dev_command", metavar="ACTION", required=True)
    up = add_command(
        actions,
        "up",
        help="create or start the local cluster and migrate it; prints the config path",
    )
    add_option(up, "--shards", type=positive_int, default=3, help="number of shards (default 3)")
    _add_dir(up)
    down = add_command(actions, "down", help="stop the local cluster's servers (data is kept)")
    _add_dir(down)
    grow = add_command(
        actions,
        "add-shard",
        help="add a shard (a new server, no slots yet) to the local cluster, to try a rebalance",
    )
    _add_dir(grow)
    status = add_command(actions, "status", help="show the local cluster's servers")
    _add_dir(status)
    add_json_option(status)
    parser.set_defaults(run=run)


def _add_dir(parser: argparse.ArgumentParser) -> None:
    add_option(
        parser,
        "--dir",
        metavar="DIR",
        default=DEFAULT_DIR,
        help=f"directory of the local cluster (default {DEFAULT_DIR})",
    )


def run(args: argparse.Namespace) -> int:
    local = LocalCluster(args.dir)
    action: str = args.dev_command
    if action == "up":
        return _up(local, args.shards)
    if action == "down":
        return _down(local)
    if action == "add-shard":
        return _add_shard(local)
    return _status(local, json=args.json)


def _up(local: LocalCluster, shards: int) -> int:
    note(f"starting {shards} local shard(s) in {local.directory} ...")
    path = local.up(shards=shards)
    for server in local.status():
        state = "running" if server.running else "stopped"
        note(f"  {server.name}: port {server.port}, {state}")
    note(f"local cluster ready; config: {path.resolve()}")
    # Absolute: `export SHARDFLOW_CONFIG=$(shardflow dev up)` must survive a `cd`.
    print(path.resolve())
    return 0


def _add_shard(local: LocalCluster) -> int:
    note(f"adding a shard to the local cluster in {local.directory} ...")
    shard, path = local.add_shard()
    config = path.resolve()
    note(
        f"{shard} joined with no slots and is in {config}; move its share onto it with\n"
        f"  shardflow --config {config} rebalance plan\n"
        f"  shardflow --config {config} rebalance apply"
    )
    print(config)
    return 0


def _down(local: LocalCluster) -> int:
    servers = local.status()
    if not servers:
        note(f"no local cluster in {local.directory}; nothing to stop")
        return 0
    local.down()
    print(f"stopped {len(servers)} server(s) in {local.directory}")
    return 0


def _status(local: LocalCluster, *, json: bool) -> int:
    servers = local.status()
    if not servers:
        note(f"no local cluster in {local.directory} (start one with `shardflow dev up`)")
        return 1
    if json:
        print_json(
            {
                "directory": str(local.directory),
                "config": str(local.config_path),
                "servers": [_as_json(s) for s in servers],
            }
        )
        return 0
    print_table(
        ("shard", "port", "running", "data dir", "dsn"),
        [(s.name, s.port, s.running, s.data_dir, redact_dsn(s.dsn)) for s in servers],
        title=f"local cluster in {local.directory}",
        numeric=("port",),
    )
    print(f"config: {local.config_path}")
    return 0


def _as_json(server: ServerStatus) -> dict[str, object]:
    return {
        "name": server.name,
        "port": server.port,
        "running": server.running,
        "data_dir": str(server.data_dir),
        "dsn": redact_dsn(server.dsn),
    }
