"""Testing your own workflows with shardflow's pytest plugin: each test gets a fresh,
migrated 3-shard cluster on real PostgreSQL (``cluster`` fixture). Run with
``python -m pytest -p shardflow.testing.plugin examples/testing``, or put
``pytest_plugins = ["shardflow.testing.plugin"]`` in your conftest.py."""

import shardflow
from order_logic import app, quote


def test_a_quote_is_priced_on_a_worker(cluster: shardflow.Cluster) -> None:
    with shardflow.Worker(cluster, app, concurrency=4):
        # Fixed IDs route the same way every run (random ones could all share a shard).
        handles = [
            cluster.submit(quote, f"o-{i}", i, workflow_id=f"quote-o-{i}") for i in range(1, 7)
        ]
        totals = [h.result(timeout=60)["total"] for h in handles]
    assert totals == [250, 500, 750, 1000, 1250, 1500]
    assert len({h.shard for h in handles}) > 1  # spread over the shards
