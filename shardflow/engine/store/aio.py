"""The async store: runs the same store operations (:mod:`~shardflow.engine.store.
statements`) on the async pools, with driver errors classified as the sync store does
(:func:`~shardflow.engine.store._conn.classified`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg

from shardflow.engine.serialization import Codec
from shardflow.engine.store._conn import classified
from shardflow.engine.store.statements import Statement, Transaction
from shardflow.router.apools import AsyncConn, AsyncShardPools
from shardflow.sql import query

T = TypeVar("T")


class AsyncStore:
    """Store operations against the shards of one cluster, awaited (``AsyncStore(pools,
    codec)``)."""

    def __init__(self, pools: AsyncShardPools, codec: Codec) -> None:
        self.pools = pools
        self.codec = codec

    @asynccontextmanager
    async def _conn(self, shard: str) -> AsyncIterator[AsyncConn]:
        """A pooled connection; driver errors leave classified as the sync store's:
        ShardUnavailable, TransientStoreError, ValueRejected, StoreError."""
        async with self.pools.connection(shard) as conn:
            with classified(shard):
                yield conn

    async def perform(self, shard: str, statement: Statement[T]) -> T:
        """Run one store operation on a pooled connection of ``shard``."""
        async with self._conn(shard) as conn:
            return await _run(conn, statement)

    async def transact(self, shard: str, transaction: Transaction[T]) -> T:
        """Run the statements of ``transaction`` in one transaction on ``shard``."""
        async with self._conn(shard) as conn, conn.transaction():
            answer: Any = None
            while True:
                try:
                    statement = transaction.send(answer)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                answer = await _run(conn, statement)


async def _run(conn: AsyncConn, statement: Statement[T]) -> T:
    try:
        async with conn.cursor(row_factory=statement.rows) as cur:
            await cur.execute(query(statement.name), statement.params, prepare=statement.prepare)
            rows = await cur.fetchall()
    except psycopg.Error as exc:
        if statement.catch is not None and isinstance(exc, statement.catch):
            return statement.caught(exc)
        raise
    return statement.answer(rows)
