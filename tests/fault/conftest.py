"""Fixtures of the fault-injection suite: servers this suite may stop, freeze and make
read-only (never the session's shared ones), and clusters behind fault proxies."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shardflow.local import LocalCluster
from shardflow.testing.faults import ProxiedCluster, proxied_cluster
from shardflow.testing.servers import FAST_SETTINGS, ClusterFactory, TestCluster


@pytest.fixture(scope="session")
def fault_servers() -> Iterator[LocalCluster]:
    """Four local PostgreSQL servers owned by this suite (one per shard of a 3-shard
    cluster plus the shard a rebalance adds), so that server-level faults hit one shard."""
    if os.environ.get("SHARDFLOW_TEST_DSNS"):
        pytest.skip("server-level faults need local servers (SHARDFLOW_TEST_DSNS is set)")
    directory = Path(tempfile.mkdtemp(prefix="shardflow-fault-"))
    local = LocalCluster(directory)
    try:
        local.up(4, name="fault", settings=FAST_SETTINGS, migrate=False)
        yield local
    finally:
        local.down()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def fault_factory(
    fault_servers: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> ClusterFactory:
    return ClusterFactory(fault_servers.admin_dsns(), tmp_path_factory.mktemp("fault-clusters"))


@pytest.fixture
def proxied(test_cluster: TestCluster, tmp_path: Path) -> Iterator[ProxiedCluster]:
    """``test_cluster`` (3 shards on the session's servers) with every shard behind a
    :class:`~shardflow.testing.faults.FaultProxy`."""
    made = proxied_cluster(test_cluster.path, tmp_path / "proxied.yaml")
    yield made
    made.close()
