"""Connections outside the pool (rebalancer, migrator, LISTEN) all come from one place,
with their purpose in application_name and their session limits and keepalives set."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from shardflow.config.model import ShardConfig
from shardflow.errors import ShardUnavailable
from shardflow.rebalance.mover import ShardLink
from shardflow.router.pools import ShardPools
from shardflow.sql import migrator
from shardflow.testing.servers import TestCluster


def settings(conn: psycopg.Connection[Any], *names: str) -> tuple[str, ...]:
    """The session's values of the settings ``names``, as SHOW prints them."""
    row = conn.execute(
        "SELECT array_agg(current_setting(name) ORDER BY n) FROM unnest(%s::text[])"
        " WITH ORDINALITY AS t(name, n)",
        [list(names)],
    ).fetchone()
    assert row is not None
    return tuple(row[0])


def test_a_pool_s_dedicated_connection_has_the_pool_s_limits(test_cluster: TestCluster) -> None:
    pools = ShardPools(test_cluster.config)
    try:
        with pools.dedicated("shard0", "listen") as conn:
            assert settings(conn, "application_name", "statement_timeout", "lock_timeout") == (
                "shardflow-listen",
                "10s",
                "5s",
            )
            params = conn.info.get_parameters()
            assert params["keepalives"] == "1"
            assert params["tcp_user_timeout"] == "10000"
            seen = conn.execute(
                "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            ).fetchone()
            assert seen == ("shardflow-listen",)
        assert conn.closed
    finally:
        pools.close()


def test_the_rebalancer_and_the_migrator_connect_with_their_own_limits(
    test_cluster: TestCluster,
) -> None:
    shard = test_cluster.config.shards[0]
    link = ShardLink(shard)
    try:
        assert settings(
            link.conn,
            "application_name",
            "statement_timeout",
            "lock_timeout",
            "idle_in_transaction_session_timeout",
        ) == ("shardflow-rebalance", "0", "30s", "1min")
        assert link.try_lock()
        assert link._lock_conn is not None
        assert settings(link._lock_conn, "application_name") == ("shardflow-rebalance-lock",)
        link.check_identity(test_cluster.config)
    finally:
        link.close()
    with migrator.connect(shard) as conn:
        assert settings(conn, "application_name", "statement_timeout", "lock_timeout") == (
            "shardflow-migrate",
            "0",
            "0",
        )
        assert conn.info.get_parameters()["tcp_user_timeout"] == "60000"


@pytest.mark.parametrize("purpose", ["rebalance", "migrate"])
def test_an_unreachable_shard_is_unavailable_without_its_password(purpose: str) -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    shard = ShardConfig(name="gone", dsn="postgresql://app:hunter2secret@127.0.0.1:1/db")
    with pytest.raises(ShardUnavailable) as caught:
        if purpose == "rebalance":
            ShardLink(shard, connect_timeout=2)
        else:
            migrator.connect(shard)
    assert caught.value.shard == "gone"
    assert "hunter2secret" not in str(caught.value)
    assert "\n" not in caught.value.reason
