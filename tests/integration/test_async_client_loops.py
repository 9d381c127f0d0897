"""An AsyncCluster belongs to the event loop it is first used on (its connection pools
do): a call from another loop fails at once with a clear error, and harms nothing."""

from __future__ import annotations

import asyncio

import pytest

import shardflow
from shardflow.engine.cluster import Cluster
from tests.apps import faults


def test_a_call_from_another_event_loop_is_refused_clearly(cluster: Cluster) -> None:
    wid = cluster.submit(faults.two_args, 1).workflow_id
    home = asyncio.new_event_loop()
    try:
        client = home.run_until_complete(shardflow.connect_async(cluster.config))
        assert home.run_until_complete(client.get(wid)).workflow_id == wid

        async def elsewhere() -> None:
            await client.get(wid)

        with pytest.raises(shardflow.WrongEventLoop, match="one client per event loop"):
            asyncio.run(elsewhere())

        async def submit_elsewhere() -> None:
            await client.submit(faults.two_args, 2)

        with pytest.raises(shardflow.WrongEventLoop):
            asyncio.run(submit_elsewhere())
        # Its own loop still works.
        assert home.run_until_complete(client.get(wid)).workflow_id == wid
        home.run_until_complete(client.close())
    finally:
        home.close()
