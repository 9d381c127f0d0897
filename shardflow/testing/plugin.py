"""pytest fixtures: ``shard_servers``, ``cluster_factory``, ``test_cluster``, ``cluster``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shardflow.engine.cluster import Cluster
from shardflow.testing.servers import ClusterFactory, TestCluster, start_servers


@pytest.fixture(scope="session")
def shard_servers() -> Iterator[list[str]]:
    """Admin DSNs of three PostgreSQL servers, started once per session."""
    with start_servers(3) as dsns:
        yield dsns


@pytest.fixture(scope="session")
def cluster_factory(
    shard_servers: list[str], tmp_path_factory: pytest.TempPathFactory
) -> ClusterFactory:
    return ClusterFactory(shard_servers, Path(tmp_path_factory.mktemp("clusters")))


@pytest.fixture
def test_cluster(cluster_factory: ClusterFactory) -> Iterator[TestCluster]:
    """A fresh, migrated 3-shard cluster (one new database per server)."""
    made = cluster_factory.make(3)
    yield made
    cluster_factory.drop(made)


@pytest.fixture
def cluster(test_cluster: TestCluster) -> Iterator[Cluster]:
    """A client connected to ``test_cluster``."""
    client = Cluster(test_cluster.config)
    yield client
    client.close()
