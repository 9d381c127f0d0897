"""``shardflow worker --processes N`` (N > 1): a supervisor of N worker processes.

Each child is this same command line again, with ``--processes 1 --supervised``, its own
``--worker-id`` (``BASE-INDEX``, then ``BASE-INDEX-rRESTARTS`` after a restart, so that a
new process never passes for the one that died) and, when the supervisor serves metrics,
an endpoint on an ephemeral port of 127.0.0.1 that the supervisor merges into its own (see
:mod:`shardflow.supervisor`). SIGTERM or SIGINT drains every child; a second one stops them
at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from shardflow.cli.options import port_in_use
from shardflow.engine.metrics_http import MetricsServer
from shardflow.supervisor import Supervisor, port_file, serve_supervisor_metrics

log = logging.getLogger(__name__)

# Variables a child must not read: the supervisor passes their values (or none) itself.
_NOT_INHERITED = ("SHARDFLOW_PROCESSES", "SHARDFLOW_WORKER_ID", "SHARDFLOW_METRICS_PORT")


def child_worker_id(base: str, index: int, restarts: int) -> str:
    return f"{base}-{index}" if restarts == 0 else f"{base}-{index}-r{restarts}"


def run_supervisor(args: argparse.Namespace, processes: int) -> int:
    """Run ``processes`` workers until SIGTERM/SIGINT; the exit status (see
    :class:`~shardflow.supervisor.Supervisor`)."""
    base = args.worker_id or f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
    metrics = args.metrics_port is not None
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    with tempfile.TemporaryDirectory(prefix="shardflow-worker-") as tmp:
        ports = Path(tmp)

        def command(index: int, restarts: int) -> Sequence[str]:
            argv = [*args.argv, "--processes", "1", "--supervised"]
            argv += ["--worker-id", child_worker_id(base, index, restarts)]
            if metrics:
                path = port_file(ports, index)
                path.unlink(missing_ok=True)  # the last process's port is not this one's
                argv += ["--metrics-port", "0", "--metrics-host", "127.0.0.1"]
                argv += ["--metrics-port-file", str(path)]
            return [sys.executable, "-m", "shardflow", *argv]

        supervisor = Supervisor(command, processes, env=env)
        server: MetricsServer | None = None
        if metrics:
            server = _serve(supervisor, ports, args.metrics_port, args.metrics_host)
        log.info(
            "supervisor starting %d worker processes, ids %s-1 to %s-%d",
            *(processes, base, base, processes),
        )
        try:
            return supervisor.run()
        finally:
            if server is not None:
                server.close()


def _serve(supervisor: Supervisor, ports: Path, port: int, host: str) -> MetricsServer:
    try:
        return serve_supervisor_metrics(supervisor, ports, port, host)
    except OSError as exc:
        raise port_in_use("--metrics-port", host, port, exc) from None
