"""One connection pool per shard, opened on first use.

Driver errors become :class:`ShardUnavailable`. After a shard fails, calls to it fail fast
for a short cool-down instead of each waiting for the pool timeout, so one dead shard
slows nobody down; the next call after the cool-down tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from shardflow.config.model import ClusterConfig, ShardConfig
from shardflow.errors import ShardUnavailable

log = logging.getLogger(__name__)

Conn = psycopg.Connection[tuple[Any, ...]]


class ShardPools:
    """Lazily opened psycopg pools, one per shard of ``config``."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        min_size: int | None = None,
        max_size: int | None = None,
        timeout: float = 5.0,
        cooldown: float = 1.0,
        connect_timeout: int = 5,
    ) -> None:
        self._config = config
        self._min = min_size
        self._max = max_size
        self._timeout = timeout
        self._cooldown = cooldown
        self._connect_timeout = connect_timeout
        self._pools: dict[str, ConnectionPool[Conn]] = {}
        self._down_until: dict[str, float] = {}
        self._down_reason: dict[str, str] = {}
        # Shards to probe with one direct connection before waiting on their pool: new
        # pools, and pools whose shard failed. A refused shard then fails at once.
        self._unproven: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False

    def shard(self, name: str) -> ShardConfig:
        try:
            return self._config.shard(name)
        except KeyError:
            raise ShardUnavailable(name, "not in this process's config") from None

    def pool(self, name: str) -> ConnectionPool[Conn]:
        pool = self._pools.get(name)
        if pool is not None:
            return pool
        with self._lock:
            if self._closed:
                raise ShardUnavailable(name, "the cluster client is closed")
            pool = self._pools.get(name)
            if pool is None:
                shard = self.shard(name)
                max_size = max(self._max or shard.pool.max, 1)
                min_size = min(self._min if self._min is not None else shard.pool.min, max_size)
                pool = ConnectionPool(
                    shard.dsn,
                    min_size=min_size,
                    max_size=max_size,
                    kwargs={"autocommit": True, "connect_timeout": self._connect_timeout},
                    timeout=self._timeout,
                    name=f"shardflow-{name}",
                    open=False,
                )
                pool.open(wait=False)
                self._pools[name] = pool
                self._unproven.add(name)
        return pool

    @contextmanager
    def connection(self, name: str) -> Iterator[Conn]:
        """A pooled autocommit connection to shard ``name``."""
        until = self._down_until.get(name)
        if until is not None:
            if time.monotonic() < until:
                raise ShardUnavailable(name, self._down_reason.get(name, "recently failed"))
            self._down_until.pop(name, None)
        pool = self.pool(name)
        if name in self._unproven:
            self._probe(name)
        try:
            with pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            self._mark_down(name, "no connection within the pool timeout")
            raise ShardUnavailable(name, "no connection within the pool timeout") from exc
        except psycopg.OperationalError as exc:
            if not is_connection_failure(exc):
                raise  # a statement's own failure (deadlock, lock timeout): the caller's
            reason = _first_line(exc)
            self._mark_down(name, reason)
            # The other idle connections of this pool are most likely dead too.
            try:
                pool.check()
            except Exception:  # checking is best effort
                log.debug("pool check of shard %s failed", name, exc_info=True)
            raise ShardUnavailable(name, reason) from exc

    def _probe(self, name: str) -> None:
        """With no pooled connection (startup, or the server went away), try one direct
        connection: a refused shard fails now with its real reason, instead of after the
        whole pool timeout."""
        try:
            psycopg.connect(self.shard(name).dsn, connect_timeout=self._connect_timeout).close()
        except psycopg.OperationalError as exc:
            reason = _first_line(exc)
            self._mark_down(name, reason)
            raise ShardUnavailable(name, reason) from exc
        self._unproven.discard(name)

    def _mark_down(self, name: str, reason: str) -> None:
        log.warning("shard %s unavailable: %s", name, reason)
        self._unproven.add(name)
        self._down_reason[name] = reason
        self._down_until[name] = time.monotonic() + self._cooldown

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()


# SQLSTATEs that mean the server or the connection is gone, not that a statement failed.
_SERVER_GONE = frozenset({"57P01", "57P02", "57P03"})


def is_connection_failure(exc: psycopg.OperationalError) -> bool:
    """Whether ``exc`` means the shard cannot be reached (versus one statement failing:
    a deadlock, a lock or statement timeout, a serialization failure)."""
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _SERVER_GONE


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
