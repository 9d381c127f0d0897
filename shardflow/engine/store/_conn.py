"""The one place the store reaches a shard: a pooled (or dedicated) connection whose
driver errors leave classified (:mod:`shardflow.retry`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg.rows import RowFactory

from shardflow.engine.serialization import Codec
from shardflow.engine.store.statements import Statement, Transaction
from shardflow.engine.store_errors import StoreError, TransientStoreError
from shardflow.errors import ShardUnavailable, ValueRejected
from shardflow.retry import Failure, classify, first_line
from shardflow.router.pools import Conn, ShardPools
from shardflow.sql import query

R = TypeVar("R")
T = TypeVar("T")
Params = Mapping[str, Any]


def store_error(shard: str, exc: BaseException) -> Exception | None:
    """The classified error for a driver error on ``shard`` (None: let it through
    unchanged, for the pools to turn into :class:`ShardUnavailable`)."""
    kind = classify(exc)
    if kind is Failure.UNAVAILABLE and isinstance(exc, psycopg.Error):
        return None
    text = f"shard {shard!r}: {first_line(exc)}"
    if kind is Failure.RETRY:
        return TransientStoreError(text)
    if kind is Failure.BAD_VALUE:
        return ValueRejected(text)
    return StoreError(text)


@contextmanager
def classified(shard: str) -> Iterator[None]:
    """Driver errors raised inside leave classified (the pools turn a connection's loss
    into ShardUnavailable, so that passes through); used by the sync and the async store."""
    try:
        yield
    except ShardUnavailable:
        raise
    except (psycopg.Error, UnicodeEncodeError) as exc:
        error = store_error(shard, exc)
        if error is None:
            raise  # the pools turn it into ShardUnavailable
        raise error from exc


class ShardAccess:
    """The base of every part of the store: the pools, the codec, and connections."""

    def __init__(self, pools: ShardPools, codec: Codec) -> None:
        self.pools = pools
        self.codec = codec

    @contextmanager
    def _conn(self, shard: str) -> Iterator[Conn]:
        """A pooled connection; driver errors leave classified (:mod:`shardflow.retry`):
        ShardUnavailable, TransientStoreError (retry in place), ValueRejected (this value
        can never be stored), StoreError (anything else)."""
        with self.pools.connection(shard) as conn, classified(shard):
            yield conn

    def perform(self, shard: str, statement: Statement[T]) -> T:
        """Run one store operation (:mod:`~shardflow.engine.store.statements`) on a
        pooled connection of ``shard``."""
        with self._conn(shard) as conn:
            return run_statement(conn, statement)

    def transact(self, shard: str, transaction: Transaction[T]) -> T:
        """Run the statements of ``transaction`` in one transaction on ``shard``."""
        with self._conn(shard) as conn, conn.transaction():
            answer: Any = None
            while True:
                try:
                    statement = transaction.send(answer)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                answer = run_statement(conn, statement)


def run_statement(conn: Conn, statement: Statement[T]) -> T:
    """Run ``statement`` on ``conn`` and return its answer."""
    try:
        with conn.cursor(row_factory=statement.rows) as cur:
            cur.execute(query(statement.name), statement.params, prepare=statement.prepare)
            rows = cur.fetchall()
    except psycopg.Error as exc:
        if statement.catch is not None and isinstance(exc, statement.catch):
            return statement.caught(exc)
        raise
    return statement.answer(rows)


def fetch_all(conn: Conn, name: str, params: Params | None, rows: RowFactory[R]) -> list[R]:
    """Run the named query ``name`` and read every row with the row factory ``rows``."""
    with conn.cursor(row_factory=rows) as cur:
        return cur.execute(query(name), params).fetchall()


def fetch_one(conn: Conn, name: str, params: Params | None, rows: RowFactory[R]) -> R | None:
    with conn.cursor(row_factory=rows) as cur:
        return cur.execute(query(name), params).fetchone()


def run(conn: Conn, name: str, params: Params | None = None) -> int:
    """Run the named query ``name`` for its effect; returns the rows it affected."""
    return conn.execute(query(name), params).rowcount


def at(now: datetime | None) -> dict[str, datetime | None]:
    """The ``now`` parameter of a time-dependent query (None: the database's now())."""
    return {"now": now}


def returns_row(conn: Conn, name: str, params: Params | None = None) -> bool:
    """Run the named query ``name``; whether it returned a row (wrote, found, took)."""
    return conn.execute(query(name), params).fetchone() is not None
