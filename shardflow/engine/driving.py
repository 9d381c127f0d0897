"""Plans and their drivers: client logic written once, run sync or async.

A plan is a generator that yields what it needs done (:class:`Read` a statement on a
shard, :class:`Transact` several in one transaction, :class:`Pause` between hops,
:class:`Call` a sync store call, run sub-plans :class:`Together`) and receives the
answer, or has the error thrown in where it yielded. :func:`drive` runs a plan on the sync store;
:func:`drive_async` awaits it on the async store, so the rules of following moves
(:class:`~shardflow.engine.locator.Locator`) and of loading the slot map
(:class:`~shardflow.engine.topology.Topology`) exist once for both clients.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from shardflow.engine.store import Store
from shardflow.engine.store.aio import AsyncStore
from shardflow.engine.store.statements import Statement, Transaction
from shardflow.retry import Backoff, Failure, classify

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Read(Generic[T]):
    """Run ``statement`` on ``shard``; the answer is the statement's."""

    shard: str
    statement: Statement[T]


@dataclass(frozen=True, slots=True)
class Transact(Generic[T]):
    """Run the statements of ``transaction`` in one transaction on ``shard``."""

    shard: str
    transaction: Transaction[T]


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait ``seconds`` (a backoff between hops)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Call:
    """Run a sync store call that is not a single statement (a transaction such as
    activating a staged copy or inserting a fork); answer: its return value. The async
    driver runs it in a thread."""

    call: Callable[[], Any]


@dataclass(frozen=True, slots=True)
class Together:
    """Run ``plans`` side by side (they touch disjoint rows); answer: their results."""

    plans: list[Plan[Any]]


Request = Read[Any] | Transact[Any] | Pause | Call | Together
Plan = Generator[Request, Any, T]


def retried(make: Callable[[], Plan[T]], seconds: float) -> Plan[T]:
    """Run the plan ``make()`` returns, making a fresh one after a connection loss or a
    transient statement failure, with backoff, for up to ``seconds`` (as
    :func:`~shardflow.retry.retrying`; the waits are :class:`Pause` requests, so either
    driver runs it). Only for plans that are safe to repeat."""
    deadline = time.monotonic() + seconds
    backoff = Backoff(0.05, 1.0)
    while True:
        try:
            return (yield from make())
        except Exception as exc:
            if classify(exc) not in (Failure.UNAVAILABLE, Failure.RETRY):
                raise
            delay = backoff.next()
            if time.monotonic() + delay > deadline:
                raise
            yield Pause(delay)


def drive(plan: Plan[T], store: Store) -> T:
    """Run ``plan`` with the sync store (the calling thread does the I/O)."""
    answer: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = plan.send(answer) if error is None else plan.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        answer, error = None, None
        try:
            if isinstance(request, Read):
                answer = store.perform(request.shard, request.statement)
            elif isinstance(request, Transact):
                answer = store.transact(request.shard, request.transaction)
            elif isinstance(request, Pause):
                time.sleep(request.seconds)
            elif isinstance(request, Call):
                answer = request.call()
            elif len(request.plans) == 1:
                answer = [drive(request.plans[0], store)]
            else:
                # One shard's statement runs while the next is sent.
                with ThreadPoolExecutor(len(request.plans)) as pool:
                    futures = [pool.submit(drive, p, store) for p in request.plans]
                    answer = [f.result() for f in futures]
        except Exception as exc:
            error = exc


async def drive_async(plan: Plan[T], store: AsyncStore) -> T:
    """Run ``plan`` on the event loop with the async store: reads, transactions and
    waits are awaited natively; only a :class:`Call` runs in a thread."""
    answer: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = plan.send(answer) if error is None else plan.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        answer, error = None, None
        try:
            if isinstance(request, Read):
                answer = await store.perform(request.shard, request.statement)
            elif isinstance(request, Transact):
                answer = await store.transact(request.shard, request.transaction)
            elif isinstance(request, Pause):
                await asyncio.sleep(request.seconds)
            elif isinstance(request, Call):
                answer = await asyncio.to_thread(request.call)
            else:
                # As the sync driver's pool: every sub-plan ends before an error leaves.
                answers = await asyncio.gather(
                    *(drive_async(p, store) for p in request.plans), return_exceptions=True
                )
                failed = [a for a in answers if isinstance(a, BaseException)]
                if failed:
                    raise failed[0]
                answer = answers
        except Exception as exc:
            error = exc
