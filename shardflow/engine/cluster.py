"""The client: a connection to every shard, composed of small parts.

- :mod:`~shardflow.engine.topology`: shard identities and the live slot map;
- :mod:`~shardflow.engine.locator`: find a workflow across moves, place new rows;
- :mod:`~shardflow.engine.placement`: a submission's row (ID, checks, inputs, slot);
- :mod:`~shardflow.engine.listing`: the cross-shard listing and its page merge;
- :mod:`~shardflow.engine.waits`: messages, events, wake-ups, children, fork;
- :mod:`~shardflow.engine.listeners`: what wakes result() and get_event (LISTEN per shard);
- :mod:`~shardflow.engine.control`: cancel and resume;
- :mod:`~shardflow.engine.bulk`: filtered listing, cancel and resume by filter;
- :mod:`~shardflow.engine.handles`: what the client hands out.

:class:`Cluster` holds them and forwards to them; it adds no rule of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar, Unpack, overload

from shardflow import tracing
from shardflow.config.loader import load
from shardflow.config.model import ClusterConfig
from shardflow.engine import bulk
from shardflow.engine.app import Workflow
from shardflow.engine.control import Control
from shardflow.engine.coverage import warn_unserved
from shardflow.engine.driving import drive
from shardflow.engine.filters import WorkflowFilter
from shardflow.engine.group_submit import SubmitGroups
from shardflow.engine.handles import Page, Submission, WorkflowHandle
from shardflow.engine.listeners import WaitListeners
from shardflow.engine.listing import query_plan
from shardflow.engine.locator import Locator
from shardflow.engine.placement import IdSource, new_row
from shardflow.engine.records import NewWorkflow, StepRecord, WorkflowStatus
from shardflow.engine.serialization import Codec, JsonSerializer, Serializer
from shardflow.engine.signals import RunEvent
from shardflow.engine.states import WorkflowState
from shardflow.engine.store import Store
from shardflow.engine.topology import Topology
from shardflow.engine.typed import SubmitOptions, Submitter
from shardflow.engine.waits import Waits
from shardflow.retry import idempotent
from shardflow.router.hashing import Hasher
from shardflow.router.pools import SessionLimits, ShardPools
from shardflow.router.router import Router
from shardflow.router.slotmap import SlotMap, desired_map

__all__ = ["Cluster", "Page", "Submission", "WorkflowHandle", "connect"]

R = TypeVar("R")
DEFAULT_RETRY_SECONDS = 30.0


class Cluster:
    """A connection to every shard of a cluster. Thread-safe; share one per process."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        serializer: Serializer | None = None,
        pool_max_size: int | None = None,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> None:
        self.config = config
        # How long reads and idempotent writes ride through a restart or failover (reconnecting).
        self.retry_seconds = retry_seconds
        self.codec = Codec.for_config(serializer or JsonSerializer(), config)
        self.pools = ShardPools(
            config,
            max_size=pool_max_size,
            limits=SessionLimits.for_lease(config.worker.lease_seconds),
        )
        self.store = Store(self.pools, self.codec)
        self.hasher = Hasher(config.hash.slots, config.hash.seed)
        self.router = Router(self.hasher, desired_map(config, epoch=0))
        self.topology = Topology(config, self.store, self.router)
        self.locator = Locator(self.store, self.router, self.topology, retry_seconds)
        # One LISTEN connection per shard waited on, waking result() and get_event.
        self.listeners = WaitListeners(self.store)
        self.waits = Waits(
            self.codec,
            self.store,
            self.locator,
            lambda sub: self._new_row(sub, None, tracing.carrier()),
            retry_seconds,
            self.listeners,
        )
        self.control = Control(self.store, self.locator, self.waits, retry_seconds)
        self.submit_groups = SubmitGroups(self.locator, self.store, self.router, retry_seconds)
        try:
            self.topology.refresh()
        except BaseException:
            self.close()  # a client that failed to start leaves no pool threads behind
            raise

    # -- topology -------------------------------------------------------------------------

    def check_identity(self, shard: str) -> None:
        """Refuse a shard whose recorded identity disagrees with the config."""
        self.topology.check_identity(shard)

    def refresh_topology(self) -> SlotMap:
        """Load the newest slot map from the reachable shards and adopt it."""
        return self.topology.refresh()

    def route(self, workflow_id: str) -> str:
        """The shard that owns ``workflow_id``'s slot in the cached map (no I/O)."""
        return self.router.route(workflow_id)

    # -- submit -----------------------------------------------------------------------------

    @overload
    def submit(
        self,
        workflow: Workflow[Any, R],
        *args: Any,
        workflow_id: str | None = None,
        queue: str | None = None,
        priority: int = 0,
        dedup_key: str | None = None,
        delay_seconds: float | None = None,
        timeout_seconds: float | None = None,
        partition_key: str | None = None,
        debounce_key: str | None = None,
        debounce_seconds: float | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle[R]: ...

    @overload
    def submit(
        self,
        workflow: str,
        *args: Any,
        workflow_id: str | None = None,
        queue: str | None = None,
        priority: int = 0,
        dedup_key: str | None = None,
        delay_seconds: float | None = None,
        timeout_seconds: float | None = None,
        partition_key: str | None = None,
        debounce_key: str | None = None,
        debounce_seconds: float | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle[Any]: ...

    def submit(
        self,
        workflow: Workflow[Any, Any] | str,
        *args: Any,
        workflow_id: str | None = None,
        queue: str | None = None,
        priority: int = 0,
        dedup_key: str | None = None,
        delay_seconds: float | None = None,
        timeout_seconds: float | None = None,
        partition_key: str | None = None,
        debounce_key: str | None = None,
        debounce_seconds: float | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle[Any]:
        """Start a workflow; idempotent on ``workflow_id``.

        ``workflow`` is a registered function or its name (to submit without the code).
        Remaining positional and keyword arguments go to the workflow. The handle is
        typed: ``result()`` returns the workflow's return type. Wrong arguments raise
        TypeError here, at the call; for a type checker to catch them too, use
        ``cluster.with_options(workflow_id=...).submit(wf, *args)`` (see
        :class:`~shardflow.engine.typed.Submitter`). ``partition_key`` is the key of a
        queue's per-key flow control (docs/queues.md#flow-control); ``debounce_key`` and
        ``debounce_seconds`` keep one pending run per key (docs/queues.md#debounce).
        """
        sub = Submission(
            workflow,
            args,
            kwargs,
            workflow_id,
            queue,
            priority,
            dedup_key,
            delay_seconds,
            timeout_seconds,
            partition_key,
            debounce_key,
            debounce_seconds,
        )
        return self.submit_many([sub])[0]

    def with_options(self, **options: Unpack[SubmitOptions]) -> Submitter:
        """Submit options (``workflow_id``, ``queue``, ...) bound first, so that
        ``.submit(wf, *args, **kwargs)`` checks the workflow's arguments statically."""
        return Submitter(self, options)

    @tracing.traced_submit
    def submit_many(
        self, submissions: Iterable[Submission | tuple[Any, ...]]
    ) -> list[WorkflowHandle[Any]]:
        """Submit many workflows: one insert statement per shard."""
        new_ids, trace_context = IdSource(), tracing.carrier()
        rows = [
            self._new_row(
                s if isinstance(s, Submission) else Submission(s[0], s[1:]), new_ids, trace_context
            )
            for s in submissions
        ]
        placed = self.submit_groups.place(rows)
        warn_unserved(self, [(r.name, r.queue, placed[r.workflow_id][1]) for r in rows])
        return [WorkflowHandle[Any](self, *placed[r.workflow_id]) for r in rows]

    def _new_row(
        self, sub: Submission, new_ids: IdSource | None, trace_context: dict[str, str] | None
    ) -> NewWorkflow:
        return new_row(sub, self.config, self.codec, self.router, new_ids, trace_context)

    def submit_child(
        self,
        workflow: Workflow[Any, Any] | str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        workflow_id: str,
        parent_id: str,
    ) -> WorkflowHandle[Any]:
        """Start a child of ``parent_id`` under a fixed ID (idempotent); what
        :func:`shardflow.start_child` calls."""
        shard = self.waits.submit_child(
            workflow, args, kwargs, workflow_id=workflow_id, parent_id=parent_id
        )
        return WorkflowHandle(self, workflow_id, shard)

    def fork(
        self, workflow_id: str, from_step: int, new_workflow_id: str | None = None
    ) -> WorkflowHandle[Any]:
        """A new workflow with the same inputs that reuses the recorded outputs of steps
        before ``from_step`` and runs again from there."""
        new_id, shard = self.waits.fork(workflow_id, from_step, new_workflow_id)
        return WorkflowHandle(self, new_id, shard)

    # -- reads --------------------------------------------------------------------------------

    @idempotent
    def get(self, workflow_id: str) -> WorkflowStatus:
        """The workflow's current status, wherever it lives. Raises WorkflowNotFound.

        Never misses a workflow that is being moved (see
        :class:`~shardflow.engine.locator.Locator`), and never writes.
        """
        return self.locator.find(workflow_id)

    @idempotent
    def handle(self, workflow_id: str) -> WorkflowHandle[Any]:
        """A handle to an existing workflow (checked)."""
        status = self.get(workflow_id)
        return WorkflowHandle[Any](self, workflow_id, status.shard)

    @idempotent
    def steps(self, workflow_id: str) -> list[StepRecord]:
        """The recorded steps of a workflow, in order."""
        status = self.get(workflow_id)
        return self.store.steps(status.shard, workflow_id)

    def list_workflows(
        self,
        state: str | WorkflowState | None = None,
        name: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        skip_unavailable: bool = False,
        *,
        id_prefix: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        parent_id: str | None = None,
        forked_from: str | None = None,
        app_version: str | None = None,
        filters: WorkflowFilter | None = None,
    ) -> Page:
        """Workflows of all shards, newest first, ``limit`` at a time.

        Each shard returns its next ``limit`` rows after the cursor (keyset on
        ``(created_at, workflow_id)``, never OFFSET); the pages are merged. A shard that
        is down raises ShardUnavailable, or with ``skip_unavailable`` is left out and
        named in ``Page.unavailable`` (its workflows are then missing from the pages).

        Filters: ``state``, ``name``, ``queue``, a workflow-ID prefix, a creation-time
        range (``created_after`` inclusive, ``created_before`` exclusive, time-zone
        aware), ``parent_id`` (the children of a workflow), ``forked_from`` (the
        forks made from a workflow with :meth:`fork`) and ``app_version`` (the version
        of the app that ran the latest attempt, docs/upgrades.md); or a whole
        :class:`~shardflow.engine.filters.WorkflowFilter` as ``filters``.
        """
        plan = query_plan(
            self,
            state,
            name,
            queue,
            limit,
            cursor,
            skip_unavailable,
            id_prefix=id_prefix,
            created_after=created_after,
            created_before=created_before,
            parent_id=parent_id,
            forked_from=forked_from,
            app_version=app_version,
            filters=filters,
        )
        return drive(plan, self.store)

    # -- messages, events, wake-ups -----------------------------------------------------------

    def send(
        self,
        workflow_id: str,
        message: Any,
        topic: str | None = None,
        idempotency_key: str | None = None,
    ) -> bool:
        """Send ``message`` to a workflow. With an ``idempotency_key``, sending again is a
        no-op. Returns False for such a duplicate. Follows the workflow if it moved.

        Without a key, one is drawn per call before the first attempt, so a retry after a
        lost commit answer never delivers the message twice."""
        return self.waits.send(workflow_id, message, topic, idempotency_key)

    def get_event(
        self,
        workflow_id: str,
        key: str,
        timeout: float = 0.0,
        *,
        interrupt: RunEvent | None = None,
    ) -> Any:
        """The value a workflow published under ``key``, waiting up to ``timeout``
        seconds for it; None if it is not set by then. A workflow that does not exist
        yet, or whose shard is unreachable for a while, is waited for the same way."""
        return self.waits.get_event(workflow_id, key, timeout, interrupt=interrupt)

    def wake(self, workflow_id: str, wait_for: str | None = None) -> bool:
        """Wake a suspended workflow now (if it waits for ``wait_for``)."""
        return self.waits.wake(workflow_id, wait_for)

    def wake_parent_of(self, workflow_id: str) -> bool:
        """Wake the parent of a workflow that ended, if the parent waits for a child."""
        return self.waits.wake_parent_of(workflow_id)

    # -- control ------------------------------------------------------------------------------

    def cancel(self, workflow_id: str, reason: str = "cancelled") -> WorkflowStatus:
        """Cancel a workflow and its children. Terminal: a running one stops at its next
        step boundary."""
        return self.control.cancel(workflow_id, reason)

    def cancel_children(self, workflow_id: str, reason: str) -> int:
        """Cancel the children (and their children) a workflow started. Returns how many
        were active."""
        return self.control.cancel_children(workflow_id, reason)

    def resume(self, workflow_id: str) -> WorkflowStatus:
        """Re-queue a cancelled, failed or dead-lettered workflow from its last checkpoint."""
        return self.control.resume(workflow_id)

    def cancel_many(
        self,
        filters: WorkflowFilter,
        *,
        reason: str = "cancelled",
        batch: int = bulk.DEFAULT_BATCH,
        dry_run: bool = False,
    ) -> bulk.BulkResult:
        """Cancel every active workflow matching ``filters`` (and their children), shard
        by shard in batches; ``dry_run`` only counts them. See :mod:`shardflow.engine.bulk`."""
        return bulk.cancel_many(self, filters, reason=reason, batch=batch, dry_run=dry_run)

    def resume_many(
        self, filters: WorkflowFilter, *, batch: int = bulk.DEFAULT_BATCH, dry_run: bool = False
    ) -> bulk.BulkResult:
        """Resume every CANCELLED, ERROR or DEAD workflow matching ``filters``, shard by
        shard in batches; ``dry_run`` only counts them. See :mod:`shardflow.engine.bulk`."""
        return bulk.resume_many(self, filters, batch=batch, dry_run=dry_run)

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        self.listeners.close()
        self.pools.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    config: ClusterConfig | str | os.PathLike[str],
    *,
    serializer: Serializer | None = None,
    pool_max_size: int | None = None,
    retry_seconds: float = DEFAULT_RETRY_SECONDS,
) -> Cluster:
    """Connect to a cluster described by a YAML file or a :class:`ClusterConfig`.

    ``retry_seconds``: how long reads and idempotent writes retry through a shard's
    restart or failover before raising :class:`ShardUnavailable`.
    """
    cfg = config if isinstance(config, ClusterConfig) else load(config)
    return Cluster(
        cfg, serializer=serializer, pool_max_size=pool_max_size, retry_seconds=retry_seconds
    )
