"""shardflow: durable workflows on sharded PostgreSQL.

Public API::

    import shardflow
    app = shardflow.App("orders")

    @app.step(max_attempts=3)
    def charge(order_id: str) -> dict: ...

    @app.workflow()
    def process_order(order_id: str) -> str:
        return charge(order_id)["id"]

    cluster = shardflow.connect("cluster.yaml")
    handle = cluster.submit(process_order, "o-1", workflow_id="order-o-1")
    shardflow.Worker(cluster, app).run()
"""

from __future__ import annotations

from shardflow.config import ClusterConfig, load
from shardflow.engine import (
    App,
    AsyncChildHandle,
    AsyncCluster,
    AsyncWorkflowHandle,
    ChildHandle,
    Cluster,
    JsonSerializer,
    Page,
    RetryPolicy,
    Serializer,
    StepFailed,
    StepRecord,
    Submission,
    Worker,
    WorkflowHandle,
    WorkflowState,
    WorkflowStatus,
    connect,
    connect_async,
    current_workflow_id,
    get_event,
    get_event_async,
    recv,
    recv_async,
    send,
    send_async,
    set_event,
    set_event_async,
    sleep,
    sleep_async,
    start_child,
    start_child_async,
    workflow_id,
)
from shardflow.engine.filters import WorkflowFilter
from shardflow.engine.patching import deprecate_patch, patched
from shardflow.engine.worker import EventKind, WorkerEvent
from shardflow.errors import (
    ClientClosed,
    ConfigError,
    IdentityMismatch,
    NonDeterminismError,
    PayloadTooLarge,
    RoutingError,
    SerializationError,
    ShardflowError,
    ShardUnavailable,
    StoreError,
    TransientStoreError,
    UnknownWorkflow,
    ValueRejected,
    WorkflowCancelled,
    WorkflowConflict,
    WorkflowDeduplicated,
    WorkflowError,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowTimeout,
    WrongEventLoop,
)

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncChildHandle",
    "AsyncCluster",
    "AsyncWorkflowHandle",
    "ChildHandle",
    "ClientClosed",
    "Cluster",
    "ClusterConfig",
    "ConfigError",
    "EventKind",
    "IdentityMismatch",
    "JsonSerializer",
    "NonDeterminismError",
    "Page",
    "PayloadTooLarge",
    "RetryPolicy",
    "RoutingError",
    "SerializationError",
    "Serializer",
    "ShardUnavailable",
    "ShardflowError",
    "StepFailed",
    "StepRecord",
    "StoreError",
    "Submission",
    "TransientStoreError",
    "UnknownWorkflow",
    "ValueRejected",
    "Worker",
    "WorkerEvent",
    "WorkflowCancelled",
    "WorkflowConflict",
    "WorkflowDeduplicated",
    "WorkflowError",
    "WorkflowFailed",
    "WorkflowFilter",
    "WorkflowHandle",
    "WorkflowNotFound",
    "WorkflowState",
    "WorkflowStatus",
    "WorkflowTimeout",
    "WrongEventLoop",
    "connect",
    "connect_async",
    "current_workflow_id",
    "deprecate_patch",
    "get_event",
    "get_event_async",
    "load",
    "patched",
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
