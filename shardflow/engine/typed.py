"""Statically checked submits: ``cluster.with_options(...).submit(wf, *args, **kwargs)``.

``Cluster.submit(wf, *args, workflow_id=..., **kwargs)`` mixes the workflow's own
arguments with submit's options in one call, which ``typing.ParamSpec`` cannot express
(no keyword-only parameters may sit between ``*args: P.args`` and ``**kwargs:
P.kwargs``). So ``submit`` types its result (``WorkflowHandle[R]``, ``result() -> R``) and
checks arguments at run time (TypeError at the call), while a :class:`Submitter` takes
the options first and then the arguments alone, which a type checker verifies::

    handle = cluster.with_options(workflow_id="order-o-1").submit(process_order, "o-1")
    receipt: str = handle.result(timeout=60)
    cluster.with_options().submit(process_order, 42)   # mypy: incompatible type "int"
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ParamSpec, Protocol, TypedDict, TypeVar

from shardflow.engine.app import Workflow
from shardflow.engine.handles import Submission, WorkflowHandle

P = ParamSpec("P")
R = TypeVar("R")


class SubmitOptions(TypedDict, total=False):
    """The options of :meth:`Cluster.submit`, by name."""

    workflow_id: str | None
    queue: str | None
    priority: int
    dedup_key: str | None
    delay_seconds: float | None
    timeout_seconds: float | None
    partition_key: str | None
    debounce_key: str | None
    debounce_seconds: float | None


class SubmitsMany(Protocol):
    """The client call a :class:`Submitter` makes."""

    def submit_many(
        self, submissions: Iterable[Submission | tuple[Any, ...]]
    ) -> list[WorkflowHandle[Any]]: ...


@dataclass(frozen=True, slots=True)
class Submitter:
    """Submit options bound to a client; :meth:`submit` takes only the workflow's own
    arguments, typed by the workflow's signature."""

    cluster: SubmitsMany
    options: SubmitOptions

    def submit(
        self, workflow: Workflow[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> WorkflowHandle[R]:
        o = self.options
        sub = Submission(
            workflow,
            args,
            kwargs,
            o.get("workflow_id"),
            o.get("queue"),
            o.get("priority", 0),
            o.get("dedup_key"),
            o.get("delay_seconds"),
            o.get("timeout_seconds"),
            o.get("partition_key"),
            o.get("debounce_key"),
            o.get("debounce_seconds"),
        )
        handle: WorkflowHandle[Any] = self.cluster.submit_many([sub])[0]
        return handle
