"""``shardflow worker``: run an App's workflows until SIGTERM or SIGINT.

``--app module:attr`` names the :class:`shardflow.App`; the current directory is put first
on ``sys.path`` (as ``python -m`` does) so a project's own modules import. With
``--metrics-port`` the worker serves Prometheus metrics on ``/metrics`` and probes on
``/healthz`` and ``/readyz`` (see :mod:`shardflow.engine.metrics`).

With ``--processes N`` above 1 (the default: the config's ``worker.processes``, else one
per CPU) this process becomes a supervisor of N such workers (:mod:`shardflow.cli.supervise`);
each child runs this command again with ``--processes 1 --supervised``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from shardflow.cli.options import (
    CliError,
    Subparsers,
    add_command,
    add_option,
    load_config,
    name_list,
    port_in_use,
    positive_float,
    positive_int,
)
from shardflow.cli.supervise import run_supervisor
from shardflow.engine import App, Worker, connect
from shardflow.engine.metrics_http import MetricsServer, serve_metrics
from shardflow.supervisor import available_cpus

log = logging.getLogger(__name__)

_SIGNAL_POLL = 0.1  # seconds between looks at the signals a supervised child received
# The exit status of a worker stopped at once while runs were still inside a step.
EXIT_ABANDONED = 3


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
        parser,
        "--processes",
        type=positive_int,
        metavar="N",
        help="worker processes under one supervisor, which restarts any that dies and serves"
        " their metrics merged (default: config worker.processes, else one per CPU;"
        " 1: no supervisor)",
    )
    add_option(
        parser,
        "--concurrency",
        type=positive_int,
        help="workflows run at once, per process (default: config)",
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
    # A supervised child (see shardflow.cli.supervise): commands on stdin, and where it
    # writes the port its metrics server got. Not for users, so no help and no variable.
    parser.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--metrics-port-file", type=Path, help=argparse.SUPPRESS)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.app:
        raise CliError("worker needs the app to run: pass --app MODULE:ATTR or set SHARDFLOW_APP")
    app = import_app(args.app)
    config = load_config(args)
    processes = args.processes or config.worker.processes or available_cpus()
    if processes > 1 and not args.supervised:
        return run_supervisor(args, processes)
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
            if args.metrics_port_file is not None:
                _write_port(args.metrics_port_file, server.port)
        try:
            if args.supervised:
                _run_supervised(worker, sys.stdin.fileno())
            else:
                worker.run()
        finally:
            if server is not None:
                server.close()
    if worker.abandoned:
        # Stopped at once: threads still inside a step would hold the interpreter's exit
        # (it joins them) and keep running their side effects; the process ends now.
        log.warning(
            "worker %s exited without waiting for %d run(s) inside a step",
            worker.worker_id,
            len(worker.abandoned),
        )
        logging.shutdown()
        os._exit(EXIT_ABANDONED)
    log.info("worker %s exited", worker.worker_id)
    return 0


def _serve_metrics(worker: Worker, port: int, host: str) -> MetricsServer:
    """Start the metrics server; a port that cannot be bound (in use, not allowed) is a
    mistake in how the worker was called, said in one line before any work starts."""
    try:
        return serve_metrics(worker, port, host)
    except OSError as exc:
        raise port_in_use("--metrics-port", host, port, exc) from None


def _write_port(path: Path, port: int) -> None:
    """Write ``port`` to ``path`` whole (a reader never sees half of it)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(str(port))
    partial.replace(path)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 64)
    except OSError:
        return b""


def _run_supervised(worker: Worker, commands: int) -> None:
    """Run until the supervisor says ``stop`` on ``commands`` (a file descriptor; its end:
    the supervisor is gone) or a signal comes; then stop gracefully, at once on ``force``
    or a second signal. A stop from both (Ctrl-C reaches the whole process group) still
    drains."""
    stop, force = threading.Event(), threading.Event()
    signals: list[int] = []  # the handler only appends: it may interrupt a held lock

    def read_commands() -> None:
        # os.read, not sys.stdin: a daemon thread blocked inside a buffered reader would
        # abort the interpreter's shutdown.
        while chunk := _read(commands):
            if b"force" in chunk:
                force.set()
            stop.set()
        stop.set()

    def force_when_asked() -> None:
        while not force.wait(_SIGNAL_POLL) and len(signals) < 2:
            pass
        log.warning("worker %s: told to stop at once", worker.worker_id)
        worker.force_stop()

    previous = {
        s: signal.signal(s, lambda signum, frame: signals.append(signum))
        for s in (signal.SIGTERM, signal.SIGINT)
    }
    threading.Thread(target=read_commands, name="shardflow-commands", daemon=True).start()
    threading.Thread(target=force_when_asked, name="shardflow-force", daemon=True).start()
    try:
        worker.start()
        while not stop.wait(_SIGNAL_POLL) and not signals:
            pass
        log.info("worker %s stopping", worker.worker_id)
    finally:
        worker.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


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
