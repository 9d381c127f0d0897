"""Several worker processes under one supervisor: ``shardflow worker --processes N``.

:class:`Supervisor` starts, watches and restarts the children and passes a stop request
through (:mod:`~shardflow.supervisor.children`); :func:`serve_supervisor_metrics` serves
their merged metrics and probes on one port (:mod:`~shardflow.supervisor.metrics`).
"""

from shardflow.supervisor.children import (
    ChildSlot,
    Exit,
    RestartPolicy,
    Supervisor,
    available_cpus,
)
from shardflow.supervisor.metrics import ChildrenCollector, port_file, serve_supervisor_metrics

__all__ = [
    "ChildSlot",
    "ChildrenCollector",
    "Exit",
    "RestartPolicy",
    "Supervisor",
    "available_cpus",
    "port_file",
    "serve_supervisor_metrics",
]
