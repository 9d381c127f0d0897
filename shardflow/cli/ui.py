"""``shardflow ui``: serve the web dashboard (docs/dashboard.md).

Binds 127.0.0.1 by default. Any other address needs ``--auth``: the dashboard shows
workflow inputs and outputs and can cancel work, so it is never open to a network by
accident. Needs the ``ui`` extra.
"""

from __future__ import annotations

import argparse
import ipaddress

from shardflow.cli.options import (
    CliError,
    Subparsers,
    add_command,
    add_option,
    load_config,
    positive_float,
)
from shardflow.engine import connect

LOOPBACK_NAMES = ("localhost",)


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "ui", help="serve the web dashboard (cluster, workflows, failures, actions)"
    )
    add_option(parser, "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    add_option(parser, "--port", type=int, default=8080, help="port to bind (default 8080)")
    add_option(
        parser,
        "--auth",
        metavar="KIND:VARIABLE",
        help="require token:VARIABLE (a bearer token) or basic:VARIABLE (user:password),"
        " read from that environment variable; needed to bind a non-loopback address",
    )
    add_option(parser, "--read-only", flag=True, help="show everything, allow no action")
    add_option(
        parser,
        "--refresh-seconds",
        type=positive_float,
        default=5.0,
        help="how often live parts of a page refresh (default 5)",
    )
    parser.set_defaults(run=run)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from shardflow.ui import Auth, create_app
        from shardflow.ui.security import LOOPBACK_HOSTS
    except ImportError as exc:
        raise CliError(
            f"the dashboard needs the ui extra ({exc.name} is missing): pip install 'shardflow[ui]'"
        ) from None
    auth = Auth.from_spec(args.auth) if args.auth else None
    if auth is None and not is_loopback(args.host):
        raise CliError(
            f"--host {args.host} would open the dashboard beyond this machine:"
            " pass --auth token:VARIABLE or --auth basic:VARIABLE as well"
        )
    config = load_config(args)
    with connect(config) as cluster:
        app = create_app(
            cluster,
            read_only=args.read_only,
            auth=auth,
            # Without auth, answer only to loopback names (no DNS rebinding).
            allowed_hosts=None if auth is not None else LOOPBACK_HOSTS,
            refresh_seconds=args.refresh_seconds,
        )
        print(
            f"shardflow dashboard on http://{args.host}:{args.port}/"
            + (" (read-only)" if args.read_only else ""),
            flush=True,
        )
        # log_config=None: the CLI has configured logging already (cli/main.py).
        server = uvicorn.Server(
            uvicorn.Config(app, host=args.host, port=args.port, log_config=None, access_log=False)
        )
        server.run()
    return 0
