"""``shardflow worker``: run an App's workflows until SIGTERM or SIGINT.

``--app module:attr`` names the :class:`shardflow.App`; the current directory is put first
on ``sys.path`` (as ``python -m`` does) so a project's own modules import. With
``--metrics-port`` the worker serves Prometheus metrics on ``/metrics`` and probes on
``/healthz`` and ``/readyz`` (see :mod:`shardflow.engine.metrics`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from shardflow.cli.options import (
    CliError,
    Subparsers,
    add_command,
    add_option,
    load_config,
    name_list,
    positive_float,
    positive_int,
)
from shardflow.engine import App, Worker, connect
from shardflow.engine.metrics_http import MetricsServer, serve_metrics

log = logging.getLogger(__name__)


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "worker",
        help="run workflows of an app; stops gracefully on SIGTERM or SIGINT",
    )
    add_option(
        parser,
        "--app",
        metavar="MODULE:ATTR",
        help="the shardflow.App to run, e.g. myproject.workflows:app",
    )
    add_option(
        parser,
        "--shards",
        type=name_list,
        metavar="A,B",
        help="claim only from these shards (default: all)",
    )
    add_option(
        parser, "--concurrency", type=positive_int, help="workflows run at once (default: config)"
    )
    add_option(
        parser,
        "--async-concurrency",
        type=positive_int,
        help="async workflows in flight at once, on one event loop (default: 1000)",
    )
    add_option(
        parser,
        "--queues",
        type=name_list,
        metavar="Q1,Q2",
        help="claim only from these queues (default: the config's and the app's)",
    )
    add_option(
        parser,
        "--lease-seconds",
        type=positive_float,
        metavar="S",
        help="lease length (default: config)",
    )
    add_option(
        parser,
        "--poll-interval",
        type=positive_float,
        metavar="S",
        help="seconds between polls of an idle shard (default: config)",
    )
    add_option(parser, "--worker-id", metavar="ID", help="worker name (default: host:random)")
    add_option(
        parser,
        "--app-version",
        metavar="VERSION",
        help="version recorded on each attempt (default: the config's worker.app_version,"
        " else the app's)",
    )
    add_option(
        parser,
        "--metrics-port",
        type=port_number,
        metavar="PORT",
        help="serve Prometheus metrics on /metrics and probes on /healthz and /readyz"
        " (default: off)",
    )
    add_option(
        parser,
        "--metrics-host",
        metavar="ADDRESS",
        default="0.0.0.0",
        help="address the metrics server listens on (default 0.0.0.0)",
    )
    add_option(
        parser,
        "--no-retention",
        flag=True,
        help="do not take part in deleting expired workflows (the config's retention:)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.app:
        raise CliError("worker needs the app to run: pass --app MODULE:ATTR or set SHARDFLOW_APP")
    app = import_app(args.app)
    config = load_config(args)
    with connect(config) as cluster:
        worker = Worker(
            cluster,
            app,
            shards=args.shards,
            concurrency=args.concurrency,
            async_concurrency=args.async_concurrency,
            queues=args.queues,
            lease_seconds=args.lease_seconds,
            poll_interval_seconds=args.poll_interval,
            worker_id=args.worker_id,
            retention=not args.no_retention,
            version=args.app_version,
        )
        log.info(
            "worker %s starting: app %s (%d workflows), cluster %s",
            worker.worker_id,
            args.app,
            len(app.workflows),
            config.name,
        )
        server: MetricsServer | None = None
        if args.metrics_port is not None:
            server = _serve_metrics(worker, args.metrics_port, args.metrics_host)
        try:
            worker.run()
        finally:
            if server is not None:
                server.close()
    log.info("worker %s exited", worker.worker_id)
    return 0


def _serve_metrics(worker: Worker, port: int, host: str) -> MetricsServer:
    """Start the metrics server; a port that cannot be bound (in use, not allowed) is a
    mistake in how the worker was called, said in one line before any work starts."""
    try:
        return serve_metrics(worker, port, host)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise CliError(
            f"--metrics-port {port}: cannot listen on {host}:{port}: {reason.lower()}"
            " (pick another port, or 0 for any free one)"
        ) from None


def port_number(text: str) -> int:
    """A TCP port, 0-65535 (0: any free port)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {value}")
    return value


def import_app(spec: str) -> App:
    """The :class:`App` named by ``module:attr`` (``attr`` may be dotted)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(
            f"--app must look like MODULE:ATTR (e.g. myproject.workflows:app), got {spec!r}"
        )
    cwd = os.getcwd()
    if not sys.path or sys.path[0] not in (cwd, ""):
        sys.path.insert(0, cwd)
    try:
        target: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise CliError(f"--app {spec}: no module named {missing!r}") from exc
        raise  # the app module itself failed to import something: show the traceback
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CliError(
                f"--app {spec}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    if not isinstance(target, App):
        kind = type(target).__name__
        raise CliError(f"--app {spec}: expected a shardflow.App, got {kind}")
    return target
