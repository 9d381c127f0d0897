"""Embedded local PostgreSQL servers for dev, demo and tests.

:class:`LocalCluster` starts one :class:`LocalServer` per shard on free loopback ports
and writes the ``cluster.yaml`` that points at them; :func:`find_pg_bindir` locates the
PostgreSQL binaries. Under root the servers run as an unprivileged user.
"""

from __future__ import annotations

from shardflow.local.binaries import find_pg_bindir
from shardflow.local.cluster import LocalCluster, ServerStatus
from shardflow.local.server import LocalServer

__all__ = ["LocalCluster", "LocalServer", "ServerStatus", "find_pg_bindir"]
