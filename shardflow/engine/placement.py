"""From a submission to the row that creates it: the workflow ID (given, derived from a
dedup key, or drawn), checked arguments and options, encoded inputs, hash and slot.

Where the row then goes is the locator's business (:meth:`Locator.place`).
"""

from __future__ import annotations

import hashlib
import math
import os

from shardflow.config.model import ClusterConfig
from shardflow.engine.app import Workflow
from shardflow.engine.handles import Submission
from shardflow.engine.records import NewWorkflow
from shardflow.engine.serialization import Codec, is_storable_text
from shardflow.errors import ShardflowError
from shardflow.router.router import Router

ID_MAX = 512


class IdSource:
    """Random (version 4) UUIDs, drawing from the OS in blocks: one syscall per 256 IDs
    instead of one per ID when a batch of workflows is submitted."""

    __slots__ = ("_block", "_pos")

    def __init__(self) -> None:
        self._block = b""
        self._pos = 0

    def next(self) -> str:
        if self._pos >= len(self._block):
            self._block = os.urandom(16 * 256)
            self._pos = 0
        b = bytearray(self._block[self._pos : self._pos + 16])
        self._pos += 16
        b[6] = (b[6] & 0x0F) | 0x40  # version 4
        b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
        h = b.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def check_id(workflow_id: str) -> None:
    """Raise ValueError (one line) for an ID no shard could store or route."""
    if not isinstance(workflow_id, str) or not workflow_id:
        raise ValueError("workflow_id must be a non-empty string")
    if len(workflow_id) > ID_MAX:
        raise ValueError(f"workflow_id is longer than {ID_MAX} characters")
    if "\x00" in workflow_id:
        raise ValueError("workflow_id must not contain NUL characters")
    if not is_storable_text(workflow_id):
        raise ValueError("workflow_id must be valid Unicode text (it has a lone surrogate)")


def new_row(
    sub: Submission,
    config: ClusterConfig,
    codec: Codec,
    router: Router,
    new_ids: IdSource | None,
    trace_context: dict[str, str] | None,
) -> NewWorkflow:
    """The row that creates ``sub``'s workflow. Raises TypeError for arguments the
    workflow cannot take, ValueError or ShardflowError for bad options. The row carries
    ``trace_context`` (:func:`shardflow.tracing.carrier`, read once per batch)."""
    timeout = sub.timeout_seconds
    if isinstance(sub.workflow, Workflow):
        sub.workflow.check_arguments(sub.args, sub.kwargs)
        name, default_queue = sub.workflow.name, sub.workflow.queue
        if timeout is None:
            timeout = sub.workflow.timeout_seconds
    elif isinstance(sub.workflow, str) and sub.workflow:
        name, default_queue = sub.workflow, "default"
    else:
        raise TypeError("submit() takes a registered workflow or a workflow name")
    queue = sub.queue or default_queue
    if queue not in config.queues:
        known = ", ".join(sorted(config.queues))
        raise ShardflowError(f"queue {queue!r} is not declared in the config (known: {known})")
    debounced = _check_debounce(sub)
    workflow_id = sub.workflow_id
    if workflow_id is None:
        if debounced:
            # Same workflow and debounce key -> same hash tag -> one shard holds its runs.
            tag = hashlib.sha1(f"{name}\0{sub.debounce_key}".encode()).hexdigest()[:16]
            workflow_id = f"{{debounce-{tag}}}{(new_ids or IdSource()).next()}"
        elif sub.dedup_key is not None:
            # Same dedup key -> same hash tag -> same shard, so uniqueness is exact.
            tag = hashlib.sha1(f"{queue}\0{sub.dedup_key}".encode()).hexdigest()[:16]
            workflow_id = f"{{dedup-{tag}}}{(new_ids or IdSource()).next()}"
        else:
            workflow_id = (new_ids or IdSource()).next()
    else:
        check_id(workflow_id)
    key = sub.partition_key
    if key is not None and not (
        isinstance(key, str) and 0 < len(key) <= ID_MAX and "\x00" not in key
    ):
        raise ValueError(f"partition_key must be a string of 1-{ID_MAX} characters without NUL")
    if key is not None and not is_storable_text(key):
        raise ValueError("partition_key must be valid Unicode text (it has a lone surrogate)")
    if sub.delay_seconds is not None and sub.delay_seconds < 0:
        raise ValueError("delay_seconds must be >= 0")
    if timeout is not None and timeout < 0:
        raise ValueError("timeout_seconds must be >= 0")
    inputs = codec.dumps(
        {"args": list(sub.args), "kwargs": dict(sub.kwargs)}, "workflow inputs", workflow_id
    )
    route_hash, slot, _ = router.hash_and_route(workflow_id)
    return NewWorkflow(
        workflow_id=workflow_id,
        slot=slot,
        route_hash=route_hash,
        name=name,
        queue=queue,
        priority=int(sub.priority),
        inputs=inputs,
        delay_seconds=sub.delay_seconds,
        timeout_seconds=timeout,
        dedup_key=sub.dedup_key,
        parent_id=None,
        trace_context=trace_context,
        partition_key=key,
        debounce_key=sub.debounce_key,
        debounce_seconds=sub.debounce_seconds,
    )


def _check_debounce(sub: Submission) -> bool:
    """Whether ``sub`` is debounced; ValueError (one line) for options it cannot take."""
    if sub.debounce_key is None and sub.debounce_seconds is None:
        return False
    key, seconds = sub.debounce_key, sub.debounce_seconds
    if key is None or seconds is None:
        raise ValueError("debounce_key and debounce_seconds go together")
    if not (isinstance(key, str) and 0 < len(key) <= ID_MAX and "\x00" not in key):
        raise ValueError(f"debounce_key must be a string of 1-{ID_MAX} characters without NUL")
    if not is_storable_text(key):
        raise ValueError("debounce_key must be valid Unicode text (it has a lone surrogate)")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ValueError("debounce_seconds must be a number")
    if not 0 < seconds < math.inf:
        raise ValueError(f"debounce_seconds must be > 0 and finite, got {seconds}")
    for option, value in (
        ("workflow_id", sub.workflow_id),
        ("dedup_key", sub.dedup_key),
        ("delay_seconds", sub.delay_seconds),
    ):
        if value is not None:
            # The pending run's ID is returned, and its start is the debounce window.
            raise ValueError(f"debounce_key cannot be combined with {option}")
    return True
