"""One connection pool per shard, opened on first use.

Driver errors that mean the shard is gone become :class:`ShardUnavailable` (see
:mod:`shardflow.retry` for the classification). After a shard fails, calls to it fail
fast for a short cool-down instead of each waiting for the pool timeout, so one dead
shard slows nobody down; the next call after the cool-down tries again.

Every connection, pooled or dedicated, is opened with :func:`connect_kwargs`: TCP
keepalives and ``tcp_user_timeout`` so that a black-holed network is noticed by the
kernel, and session ``statement_timeout``, ``lock_timeout`` and
``idle_in_transaction_session_timeout`` so that a statement stuck behind a DDL lock or a
frozen peer ends well before a lease does.

A connection outside the pool (LISTEN, a leader's session lock, the rebalancer, the
migrator) is opened only by :func:`dedicated` (or :meth:`ShardPools.dedicated`): it names
its purpose in ``application_name`` (``shardflow-<purpose>``, seen in
``pg_stat_activity``) and turns driver errors into :class:`ShardUnavailable` once, with a
first line that carries no secret.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from shardflow.config.model import ClusterConfig, ShardConfig
from shardflow.config.redaction import scrub_dsns
from shardflow.errors import ClientClosed, ShardUnavailable
from shardflow.retry import Failure, classify, first_line, is_connection_failure

log = logging.getLogger(__name__)

Conn = psycopg.Connection[tuple[Any, ...]]

__all__ = [
    "MIGRATOR_LIMITS",
    "REBALANCER_LIMITS",
    "Conn",
    "SessionLimits",
    "ShardPools",
    "connect_kwargs",
    "dedicated",
    "is_connection_failure",
]


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Timeouts every shard connection is opened with (seconds). A session timeout of
    None leaves the server's setting (the migrator's index builds may rightly take long).

    ``for_lease`` fits them to a worker lease: any one statement, lock wait or silent
    network ends in a fraction of the lease, so a stuck call on one shard fails (and is
    retried) long before the leases it should renew lapse.
    """

    statement_timeout: float | None = 10.0
    lock_timeout: float | None = 5.0
    idle_in_transaction_timeout: float | None = 20.0
    tcp_user_timeout: float = 10.0
    keepalives_idle: int = 5
    keepalives_interval: int = 2
    keepalives_count: int = 3
    connect_timeout: int = 5

    @classmethod
    def for_lease(cls, lease_seconds: float) -> SessionLimits:
        third = max(lease_seconds / 3, 1.0)
        return cls(
            statement_timeout=third,
            lock_timeout=max(third / 2, 0.5),
            idle_in_transaction_timeout=max(lease_seconds, 2.0),
            tcp_user_timeout=third,
            keepalives_idle=max(int(third / 2), 1),
            keepalives_interval=max(int(third / 6), 1),
            keepalives_count=3,
            connect_timeout=max(int(third), 2),
        )


# The rebalancer never waits long on a lock, and one that stops answering in the middle
# of a transaction (frozen, partitioned) has it rolled back by the server, releasing the
# rows it locked. Its statements (a page of rows) have no time limit.
REBALANCER_LIMITS = SessionLimits(
    statement_timeout=None, lock_timeout=30.0, idle_in_transaction_timeout=60.0, connect_timeout=10
)

# Migrations: no session timeouts (an index build may take long), a patient network.
MIGRATOR_LIMITS = SessionLimits(
    statement_timeout=None,
    lock_timeout=None,
    idle_in_transaction_timeout=None,
    tcp_user_timeout=60.0,
    keepalives_idle=10,
    keepalives_interval=5,
    keepalives_count=3,
    connect_timeout=10,
)


def connect_kwargs(limits: SessionLimits) -> dict[str, Any]:
    """libpq connection parameters for ``limits`` (merged over the DSN's own)."""
    settings = (
        ("statement_timeout", limits.statement_timeout),
        ("lock_timeout", limits.lock_timeout),
        ("idle_in_transaction_session_timeout", limits.idle_in_transaction_timeout),
    )
    options = " ".join(
        f"-c {name}={int(seconds * 1000)}" for name, seconds in settings if seconds is not None
    )
    kwargs: dict[str, Any] = {
        "connect_timeout": limits.connect_timeout,
        "keepalives": 1,
        "keepalives_idle": limits.keepalives_idle,
        "keepalives_interval": limits.keepalives_interval,
        "keepalives_count": limits.keepalives_count,
        "tcp_user_timeout": int(limits.tcp_user_timeout * 1000),
    }
    if options:
        kwargs["options"] = options
    return kwargs


def dedicated(
    shard: ShardConfig, purpose: str, limits: SessionLimits, *, autocommit: bool = True
) -> Conn:
    """A connection to ``shard`` of its own (not pooled), opened with ``limits`` and
    ``application_name`` ``shardflow-<purpose>``. The caller closes it (``with`` does).

    Any driver error, a malformed DSN included, becomes :class:`ShardUnavailable` whose
    reason is the driver's first line with the DSN's secrets masked (libpq quotes the
    token it cannot parse, a password as often as not).
    """
    try:
        return psycopg.connect(
            shard.dsn,
            autocommit=autocommit,
            application_name=f"shardflow-{purpose}",
            **connect_kwargs(limits),
        )
    except psycopg.Error as exc:
        reason = scrub_dsns(first_line(exc), [shard.dsn])
        if isinstance(exc, psycopg.ProgrammingError):
            reason = f"invalid DSN: {reason}"
        # Not `from exc`: the driver's full text may quote the DSN, password included.
        raise ShardUnavailable(shard.name, reason) from None


class ShardHealth:
    """What one client knows of its shards' reachability, shared by the sync and the async
    pools: a shard that just failed is refused for ``cooldown`` seconds with its reason;
    a new or failed pool is probed with one direct connection before it is waited on; a
    shard reached since it was last marked down is logged as a warning when lost."""

    def __init__(self, cooldown: float) -> None:
        self.cooldown = cooldown
        self._down_until: dict[str, float] = {}
        self._down_reason: dict[str, str] = {}
        # Shards to probe with one direct connection before waiting on their pool: new
        # pools, and pools whose shard failed. A refused shard then fails at once.
        self._unproven: set[str] = set()
        # Shards reached since they were last marked down: losing one is news (WARNING).
        self._reached: set[str] = set()

    def check(self, name: str) -> None:
        """Raise ShardUnavailable while ``name`` is in its cool-down after a failure."""
        until = self._down_until.get(name)
        if until is not None:
            if time.monotonic() < until:
                raise ShardUnavailable(name, self._down_reason.get(name, "recently failed"))
            self._down_until.pop(name, None)

    def unproven(self, name: str) -> bool:
        return name in self._unproven

    def opened(self, name: str) -> None:
        """A new pool for ``name``: probe it before waiting on it."""
        self._unproven.add(name)

    def reached(self, name: str) -> None:
        self._unproven.discard(name)
        self._reached.add(name)

    def mark_down(self, name: str, reason: str) -> None:
        # A shard that was reachable going down is logged once, as a warning. One never
        # reached (or still down) only fails the call, whose caller reports it: a CLI
        # command would otherwise say the same thing twice.
        level = logging.WARNING if name in self._reached else logging.INFO
        self._reached.discard(name)
        log.log(level, "shard %s unavailable: %s", name, reason)
        self._unproven.add(name)
        self._down_reason[name] = reason
        self._down_until[name] = time.monotonic() + self.cooldown


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
        limits: SessionLimits | None = None,
    ) -> None:
        self._config = config
        self._min = min_size
        self._max = max_size
        self._timeout = timeout
        self.health = ShardHealth(cooldown)
        self.limits = limits or SessionLimits()
        self._pools: dict[str, ConnectionPool[Conn]] = {}
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
                raise ClientClosed("the cluster client is closed")
            pool = self._pools.get(name)
            if pool is None:
                shard = self.shard(name)
                max_size = max(self._max or shard.pool.max, 1)
                min_size = min(self._min if self._min is not None else shard.pool.min, max_size)
                pool = ConnectionPool(
                    shard.dsn,
                    min_size=min_size,
                    max_size=max_size,
                    kwargs={"autocommit": True, **connect_kwargs(self.limits)},
                    timeout=self._timeout,
                    name=f"shardflow-{name}",
                    open=False,
                )
                pool.open(wait=False)
                self._pools[name] = pool
                self.health.opened(name)
        return pool

    @contextmanager
    def connection(self, name: str) -> Iterator[Conn]:
        """A pooled autocommit connection to shard ``name``."""
        self.health.check(name)
        pool = self.pool(name)
        if self.health.unproven(name):
            self._probe(name)
        try:
            with pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            self.health.mark_down(name, "no connection within the pool timeout")
            raise ShardUnavailable(name, "no connection within the pool timeout") from exc
        except psycopg.Error as exc:
            if classify(exc) is not Failure.UNAVAILABLE:
                raise  # a statement's own failure (deadlock, lock timeout): the caller's
            reason = scrub_dsns(first_line(exc), [self.shard(name).dsn])
            self.health.mark_down(name, reason)
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
            self.dedicated(name, "probe").close()
        except ShardUnavailable as exc:
            self.health.mark_down(name, exc.reason)
            raise
        self.health.reached(name)

    def dedicated(self, name: str, purpose: str, *, autocommit: bool = True) -> Conn:
        """A connection to shard ``name`` outside the pool (LISTEN, session locks),
        opened with the pool's limits: see :func:`dedicated`."""
        return dedicated(self.shard(name), purpose, self.limits, autocommit=autocommit)

    def connect(self, name: str, *, autocommit: bool = True) -> Conn:
        """Kept for callers not yet converted: ``dedicated(name, "dedicated")``."""
        return self.dedicated(name, "dedicated", autocommit=autocommit)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()
