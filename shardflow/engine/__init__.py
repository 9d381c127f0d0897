"""The workflow engine: app registry, runs and checkpoints, workers, the client."""

from __future__ import annotations

from shardflow.engine.aio.client import AsyncCluster, AsyncWorkflowHandle, connect_async
from shardflow.engine.aio.primitives import (
    AsyncChildHandle,
    get_event_async,
    recv_async,
    send_async,
    set_event_async,
    sleep_async,
    start_child_async,
)
from shardflow.engine.app import App, RetryPolicy, Step, Workflow
from shardflow.engine.cluster import Cluster, Page, Submission, WorkflowHandle, connect
from shardflow.engine.context import current_workflow_id
from shardflow.engine.primitives import (
    ChildHandle,
    get_event,
    recv,
    send,
    set_event,
    sleep,
    start_child,
    workflow_id,
)
from shardflow.engine.records import StepRecord, WorkflowStatus
from shardflow.engine.serialization import JsonSerializer, Serializer, StepFailed
from shardflow.engine.states import WorkflowState
from shardflow.engine.worker import Worker

__all__ = [
    "App",
    "AsyncChildHandle",
    "AsyncCluster",
    "AsyncWorkflowHandle",
    "ChildHandle",
    "Cluster",
    "JsonSerializer",
    "Page",
    "RetryPolicy",
    "Serializer",
    "Step",
    "StepFailed",
    "StepRecord",
    "Submission",
    "Worker",
    "Workflow",
    "WorkflowHandle",
    "WorkflowState",
    "WorkflowStatus",
    "connect",
    "connect_async",
    "current_workflow_id",
    "get_event",
    "get_event_async",
    "recv",
    "recv_async",
    "send",
    "send_async",
    "set_event",
    "set_event_async",
    "sleep",
    "sleep_async",
    "start_child",
    "start_child_async",
    "workflow_id",
]
