"""The workflow engine: app registry, runs and checkpoints, workers, the client."""

from __future__ import annotations

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
    "current_workflow_id",
    "get_event",
    "recv",
    "send",
    "set_event",
    "sleep",
    "start_child",
    "workflow_id",
]
