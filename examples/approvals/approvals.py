"""Messages and events: a workflow waits (suspended, holding no thread) for a decision
sent from outside, and publishes its status as an event."""

import os
import sys

import shardflow

app = shardflow.App("approvals")


@app.workflow(name="approvals.request")
def request_approval(request_id: str) -> str:
    shardflow.set_event("status", "waiting")
    decision = shardflow.recv(topic="decision", timeout=24 * 3600)  # suspends
    outcome = decision or "expired"
    shardflow.set_event("status", outcome)
    return outcome


if __name__ == "__main__":
    request_id = sys.argv[1] if len(sys.argv) > 1 else "r-42"
    with shardflow.connect(os.environ.get("SHARDFLOW_CONFIG", "cluster.yaml")) as cluster:
        # The workflow has an explicit name=, so submitting it from this script (module
        # __main__) stores "approvals.request", which the worker (module approvals) serves.
        handle = cluster.submit(request_approval, request_id, workflow_id=f"approval-{request_id}")
        print(cluster.get_event(handle.workflow_id, "status", timeout=60))  # waiting
        cluster.send(handle.workflow_id, "approved", topic="decision")
        print(handle.result(timeout=60))  # approved
