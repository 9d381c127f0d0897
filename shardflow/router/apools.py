"""One :class:`psycopg_pool.AsyncConnectionPool` per shard, for the async client.

The same rules as the sync :class:`~shardflow.router.pools.ShardPools`: every
connection is opened with :func:`~shardflow.router.pools.connect_kwargs` of the same
:class:`~shardflow.router.pools.SessionLimits`; a shard that refuses connections fails
at once with :class:`ShardUnavailable` (a direct probe before its pool is waited on),
whose reason has the DSN's secrets masked; after a failure, calls to that shard fail
fast for a short cool-down; a call after :meth:`close` raises :class:`ClientClosed`.

The pools belong to the event loop that first used them (asyncio objects cannot move
between loops); the async client is used from one loop.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from shardflow.config.model import ClusterConfig, ShardConfig
from shardflow.config.redaction import scrub_dsns
from shardflow.errors import ClientClosed, ShardUnavailable
from shardflow.retry import Failure, classify, first_line
from shardflow.router.pools import SessionLimits, ShardHealth, connect_kwargs

log = logging.getLogger(__name__)

AsyncConn = psycopg.AsyncConnection[tuple[Any, ...]]

__all__ = ["AsyncConn", "AsyncShardPools"]


class AsyncShardPools:
    """Lazily opened async pools, one per shard of ``config``."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        max_size: int | None = None,
        timeout: float = 5.0,
        cooldown: float = 1.0,
        limits: SessionLimits | None = None,
    ) -> None:
        self._config = config
        self._max = max_size
        self._timeout = timeout
        self.health = ShardHealth(cooldown)
        self.limits = limits or SessionLimits()
        self._pools: dict[str, AsyncConnectionPool[AsyncConn]] = {}
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def shard(self, name: str) -> ShardConfig:
        try:
            return self._config.shard(name)
        except KeyError:
            raise ShardUnavailable(name, "not in this process's config") from None

    async def pool(self, name: str) -> AsyncConnectionPool[AsyncConn]:
        if self._closed:
            raise ClientClosed("the cluster client is closed")
        pool = self._pools.get(name)
        if pool is not None:
            return pool
        shard = self.shard(name)
        max_size = max(self._max or shard.pool.max, 1)
        pool = AsyncConnectionPool(
            shard.dsn,
            min_size=min(shard.pool.min, max_size),
            max_size=max_size,
            kwargs={"autocommit": True, **connect_kwargs(self.limits)},
            timeout=self._timeout,
            name=f"shardflow-async-{name}",
            open=False,
        )
        await pool.open(wait=False)
        # Another task may have opened one meanwhile, or the client closed: keep one.
        existing = self._pools.get(name)
        if existing is not None or self._closed:
            await pool.close()
            if existing is None:
                raise ClientClosed("the cluster client is closed")
            return existing
        self._pools[name] = pool
        self.health.opened(name)
        return pool

    @asynccontextmanager
    async def connection(self, name: str) -> AsyncIterator[AsyncConn]:
        """A pooled autocommit connection to shard ``name``."""
        if self._closed:
            raise ClientClosed("the cluster client is closed")
        self.health.check(name)
        pool = await self.pool(name)
        if self.health.unproven(name):
            await self._probe(name)
        try:
            async with pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            if self._closed:
                raise ClientClosed("the cluster client is closed") from None
            self.health.mark_down(name, "no connection within the pool timeout")
            raise ShardUnavailable(name, "no connection within the pool timeout") from exc
        except psycopg.Error as exc:
            if classify(exc) is not Failure.UNAVAILABLE:
                raise  # a statement's own failure: the caller's
            reason = scrub_dsns(first_line(exc), [self.shard(name).dsn])
            self.health.mark_down(name, reason)
            try:
                await pool.check()
            except Exception:  # checking is best effort
                log.debug("pool check of shard %s failed", name, exc_info=True)
            raise ShardUnavailable(name, reason) from exc

    async def _probe(self, name: str) -> None:
        """One direct connection before waiting on a new or failed pool: a refused shard
        fails now with its real reason instead of after the pool timeout."""
        shard = self.shard(name)
        try:
            conn = await psycopg.AsyncConnection.connect(
                shard.dsn,
                autocommit=True,
                application_name="shardflow-probe",
                **connect_kwargs(self.limits),
            )
        except psycopg.Error as exc:
            reason = scrub_dsns(first_line(exc), [shard.dsn])
            if isinstance(exc, psycopg.ProgrammingError):
                reason = f"invalid DSN: {reason}"
            self.health.mark_down(name, reason)
            # Not `from exc`: the driver's full text may quote the DSN, password included.
            raise ShardUnavailable(name, reason) from None
        await conn.close()
        self.health.reached(name)

    async def close(self) -> None:
        self._closed = True
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.close()
