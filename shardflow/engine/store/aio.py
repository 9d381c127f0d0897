"""The async store: runs the same store operations (:mod:`~shardflow.engine.store.
statements`) on the async pools, with driver errors classified as the sync store does
(:func:`~shardflow.engine.store._conn.store_error`)."""

from __future__ import annotations

from typing import TypeVar

import psycopg

from shardflow.engine.serialization import Codec
from shardflow.engine.store._conn import store_error
from shardflow.engine.store.statements import Statement
from shardflow.errors import ShardUnavailable
from shardflow.router.apools import AsyncShardPools
from shardflow.sql import query

T = TypeVar("T")


class AsyncStore:
    """Store operations against the shards of one cluster, awaited (``AsyncStore(pools,
    codec)``)."""

    def __init__(self, pools: AsyncShardPools, codec: Codec) -> None:
        self.pools = pools
        self.codec = codec

    async def perform(self, shard: str, statement: Statement[T]) -> T:
        """Run one store operation on a pooled connection of ``shard``; errors leave as
        ShardUnavailable, TransientStoreError, ValueRejected or StoreError."""
        async with self.pools.connection(shard) as conn:
            try:
                async with conn.cursor(row_factory=statement.rows) as cur:
                    await cur.execute(query(statement.name), statement.params)
                    rows = await cur.fetchall()
            except ShardUnavailable:
                raise
            except psycopg.Error as exc:
                if statement.catch is not None and isinstance(exc, statement.catch):
                    return statement.caught(exc)
                error = store_error(shard, exc)
                if error is None:
                    raise  # the pools turn it into ShardUnavailable
                raise error from exc
            except UnicodeEncodeError as exc:
                error = store_error(shard, exc)
                assert error is not None
                raise error from exc
        return statement.answer(rows)
