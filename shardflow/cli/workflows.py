"""``shardflow workflows list|show|steps|cancel|resume``: look at and steer workflows."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from shardflow.cli.options import (
    Subparsers,
    add_command,
    add_json_option,
    add_option,
    load_config,
    positive_int,
    upper,
)
from shardflow.cli.output import compact_json, note, print_fields, print_json, print_table
from shardflow.engine import Cluster, WorkflowState, WorkflowStatus, connect
from shardflow.engine.coverage import unserved, why_waiting
from shardflow.engine.records import StepRecord
from shardflow.errors import WorkflowError

_STATES = tuple(s.value for s in WorkflowState)
_CELL_LIMIT = 60  # characters of a step's output shown in the table; --json has it all


def register(subparsers: Subparsers) -> None:
    parser = add_command(subparsers, "workflows", help="list, inspect, cancel and resume workflows")
    actions = parser.add_subparsers(dest="workflows_command", metavar="ACTION", required=True)

    listing = add_command(actions, "list", help="workflows of all shards, newest first")
    add_option(listing, "--state", type=upper, choices=_STATES, help="only workflows in this state")
    add_option(listing, "--name", help="only workflows with this workflow name")
    add_option(listing, "--queue", help="only workflows of this queue")
    add_option(listing, "--limit", type=positive_int, default=50, help="page size (default 50)")
    add_option(listing, "--cursor", help="continue after the page that printed this cursor")
    add_json_option(listing)

    for name, text in (
        ("show", "one workflow's status, output and error"),
        ("steps", "one workflow's recorded steps"),
        ("resume", "re-queue a cancelled, failed or dead-lettered workflow"),
    ):
        command = add_command(actions, name, help=text)
        command.add_argument("workflow_id", metavar="ID", help="workflow ID")
        add_json_option(command)

    cancel = add_command(actions, "cancel", help="cancel a workflow that has not ended")
    cancel.add_argument("workflow_id", metavar="ID", help="workflow ID")
    add_option(cancel, "--reason", default="cancelled by CLI", help="recorded reason")
    add_json_option(cancel)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    with connect(config) as cluster:
        action: str = args.workflows_command
        if action == "list":
            return _list(cluster, args)
        if action == "show":
            _print_status(cluster.get(args.workflow_id), json=args.json, cluster=cluster)
            return 0
        if action == "steps":
            return _steps(cluster, args)
        if action == "cancel":
            status = cluster.cancel(args.workflow_id, reason=args.reason)
            return _report_control(status, WorkflowState.CANCELLED, "cancel", json=args.json)
        status = cluster.resume(args.workflow_id)
        return _report_control(status, None, "resume", json=args.json)


def _list(cluster: Cluster, args: argparse.Namespace) -> int:
    page = cluster.list_workflows(
        state=args.state,
        name=args.name,
        queue=args.queue,
        limit=args.limit,
        cursor=args.cursor,
        skip_unavailable=True,
    )
    if page.unavailable:
        # An operator listing during an outage still sees the healthy shards.
        down = ", ".join(page.unavailable)
        note(f"warning: shard(s) {down} unreachable; their workflows are missing")
    reasons = _unrunnable(cluster, page.items)
    if args.json:
        print_json(
            {
                "workflows": [s.to_dict() for s in page.items],
                "next_cursor": page.next_cursor,
                "unavailable": list(page.unavailable),
                "unrunnable": {
                    s.workflow_id: reasons[key(s)] for s in page.items if key(s) in reasons
                },
            }
        )
        return 0
    print_table(
        ("id", "name", "queue", "state", "shard", "attempt", "created_at"),
        [
            (
                s.workflow_id,
                s.name,
                s.queue,
                s.state.value + ("*" if key(s) in reasons else ""),
                s.shard,
                s.attempt,
                s.created_at.isoformat(timespec="seconds"),
            )
            for s in page.items
        ],
        numeric=("attempt",),
        keep=("id", "state", "shard"),
        drop_order=("queue", "attempt", "created_at"),
    )
    for (shard, name, queue), reason in sorted(reasons.items()):
        note(f"* ENQUEUED {name} [{queue}] on {shard}: {reason}")
    if page.next_cursor:
        print(f"next cursor: {page.next_cursor}")
    return 0


def key(s: WorkflowStatus) -> tuple[str, str, str]:
    return (s.shard, s.name, s.queue)


def _unrunnable(cluster: Cluster, items: list[WorkflowStatus]) -> dict[tuple[str, str, str], str]:
    """Why no live worker can run the ENQUEUED workflows listed (coverage.py)."""
    shards = sorted({s.shard for s in items if s.state is WorkflowState.ENQUEUED})
    if not shards:
        return {}
    found, _ = unserved(cluster, shards)
    return {(u.shard, u.name, u.queue): u.reason for u in found}


def _print_status(status: WorkflowStatus, *, json: bool, cluster: Cluster) -> None:
    if json:
        print_json(status.to_dict())
        return
    data = status.to_dict()
    fields = [(key, data[key]) for key in data if key not in ("output", "error")]
    fields.append(("output", compact_json(status.output)))
    error = status.error
    if error is not None:
        summary = f"{error.get('type', 'Error')}: {error.get('message', '')}"
        fields.append(("error", summary))
    why = why_waiting(cluster, status)
    if why is not None:
        fields.append(("waiting", why))
    print_fields(fields)
    if error is not None and error.get("traceback"):
        # The traceback as the worker saw it, one line per line (not one JSON string).
        print("traceback:")
        print(str(error["traceback"]).rstrip("\n"))


def _steps(cluster: Cluster, args: argparse.Namespace) -> int:
    steps = cluster.steps(args.workflow_id)
    if args.json:
        print_json({"workflow_id": args.workflow_id, "steps": [s.to_dict() for s in steps]})
        return 0
    if not steps:
        print(f"workflow {args.workflow_id} has no recorded steps")
        return 0
    print_table(
        ("step", "name", "attempt", "started", "ms", "result"),
        [
            (
                s.step_no,
                s.name,
                s.attempt,
                _iso(s.started_at),
                None if s.duration_ms is None else f"{s.duration_ms:.1f}",
                _step_result(s),
            )
            for s in steps
        ],
        numeric=("step", "attempt", "ms"),
        # Narrow terminals wrap the result, never the name or the timing.
        keep=("name", "attempt", "started", "ms"),
    )
    return 0


def _iso(at: datetime | None) -> str | None:
    """UTC, to the second: ``2026-01-02T03:04:05Z``."""
    if at is None:
        return None
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _step_result(step: StepRecord) -> str:
    if step.error is not None:
        return f"error: {compact_json(step.error, _CELL_LIMIT)}"
    if step.name == "shardflow.sleep" and isinstance(step.output, int | float):
        # Recorded as the wake time in epoch seconds (database clock).
        return f"wakes {_iso(datetime.fromtimestamp(step.output, UTC))}"
    return compact_json(step.output, _CELL_LIMIT)


def _report_control(
    status: WorkflowStatus, wanted: WorkflowState | None, verb: str, *, json: bool
) -> int:
    """Print the state after ``cancel``/``resume``; a workflow that had already ended
    cannot be cancelled, which is an error (exit 2) rather than a silent no-op."""
    if wanted is not None and status.state is not wanted:
        raise WorkflowError(
            f"cannot {verb} workflow {status.workflow_id!r}: it is {status.state.value}"
        )
    if json:
        print_json(status.to_dict())
    else:
        print(f"workflow {status.workflow_id}: {status.state.value} (shard {status.shard})")
    return 0
