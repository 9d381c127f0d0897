"""Group commit of the async client's submits: tasks calling ``AsyncCluster.submit`` at
the same time share one insert statement (one commit) per shard, as threads calling
``Cluster.submit`` do (:mod:`shardflow.engine.group_submit`, whose rules this follows):
a lone submit commits at once; under load the commits follow the commit rate, not the
number of callers; one row's error is its own (a failed batch is placed again row by
row); a shard that stays unavailable fails every row of its batch; no caller waits for
ever, a cancelled one included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from shardflow.engine.group_submit import MAX_ROWS, Pending, take_batch
from shardflow.engine.records import NewWorkflow
from shardflow.errors import ShardUnavailable

# rows -> {row ID: (ID of the workflow it names, shard)}
Place = Callable[[list[NewWorkflow]], Awaitable[dict[str, tuple[str, str]]]]


class AsyncSubmitGroups:
    """The queued submits of one async client, per shard (all on one event loop)."""

    def __init__(self, place: Place, max_rows: int = MAX_ROWS) -> None:
        self._place = place
        self.max_rows = max_rows
        self._queued: dict[str, list[Pending[asyncio.Event]]] = {}
        self._leading: set[str] = set()
        self.commits = 0  # batches placed

    async def submit(self, shard: str, row: NewWorkflow) -> tuple[str, str]:
        """Place ``row`` (grouped under ``shard``, the owner of its slot when queued);
        returns ``(workflow ID, shard)`` once it is durable, or raises its error."""
        me = Pending(row, asyncio.Event())
        self._queued.setdefault(shard, []).append(me)
        me.lead = shard not in self._leading
        self._leading.add(shard)
        try:
            while not me.lead and not me.done:
                await me.wake.wait()
                me.wake.clear()
        except asyncio.CancelledError:
            self._leave(shard, me)
            raise
        if not me.done:
            await self._lead(shard)
        if me.error is not None:
            raise me.error
        assert me.placed is not None
        return me.placed

    def _leave(self, shard: str, me: Pending[asyncio.Event]) -> None:
        """A waiting caller was cancelled: take its row out, and hand on a lead it held."""
        queued = self._queued.get(shard, [])
        if me in queued:
            queued.remove(me)
        if me.lead and not me.done:
            self._hand_on(shard)

    def _hand_on(self, shard: str) -> None:
        rest = self._queued.get(shard)
        if rest:
            rest[0].lead = True
            rest[0].wake.set()
        else:
            self._queued.pop(shard, None)
            self._leading.discard(shard)

    async def _lead(self, shard: str) -> None:
        batch, self._queued[shard] = take_batch(self._queued[shard], self.max_rows)
        try:
            await self._commit(batch)
        finally:
            for p in batch:
                if p.error is None and p.placed is None:
                    p.error = ShardUnavailable(shard, "the submitting task was cancelled")
                p.done = True
                p.wake.set()
            self.commits += 1
            self._hand_on(shard)

    async def _commit(self, batch: list[Pending[asyncio.Event]]) -> None:
        try:
            placed = await self._place([p.row for p in batch])
        except ShardUnavailable as exc:
            for p in batch:
                p.error = exc
            return
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
                return
            for p in batch:
                try:
                    p.placed = (await self._place([p.row]))[p.row.workflow_id]
                except Exception as own:
                    p.error = own
            return
        for p in batch:
            p.placed = placed[p.row.workflow_id]
