"""``shardflow workflows list|show|steps|cancel|resume|replay-check``: look at and steer
workflows (``replay-check`` lives in :mod:`shardflow.cli.replay_check`).

``list`` filters by state, name, queue, ID prefix, creation time, parent and fork source.
``cancel``/``resume`` take one workflow ID, or filters for a bulk action (shard by shard,
in batches; ``--dry-run`` only counts).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from shardflow.cli import replay_check
from shardflow.cli.options import (
    CliError,
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
from shardflow.engine.bulk import DEFAULT_BATCH
from shardflow.engine.coverage import unserved, why_waiting
from shardflow.engine.filters import WorkflowFilter
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
    add_option(listing, "--id-prefix", help="only workflows whose ID starts with this")
    add_option(listing, "--created-after", help="only workflows created at or after (ISO 8601)")
    add_option(listing, "--created-before", help="only workflows created before (ISO 8601)")
    add_option(listing, "--parent", help="only the children of this workflow ID")
    add_option(listing, "--forked-from", help="only the forks of this workflow ID")
    add_option(listing, "--app-version", help="only those last run by this app version")
    add_option(listing, "--limit", type=positive_int, default=50, help="page size (default 50)")
    add_option(listing, "--cursor", help="continue after the page that printed this cursor")
    add_json_option(listing)

    for name, text in (
        ("show", "one workflow's status, output and error"),
        ("steps", "one workflow's recorded steps"),
    ):
        command = add_command(actions, name, help=text)
        command.add_argument("workflow_id", metavar="ID", help="workflow ID")
        add_json_option(command)

    resume = add_command(
        actions,
        "resume",
        help="re-queue a cancelled, failed or dead-lettered workflow (or all matching filters)",
    )
    cancel = add_command(
        actions, "cancel", help="cancel a workflow that has not ended (or all matching filters)"
    )
    for command in (cancel, resume):
        command.add_argument("workflow_id", metavar="ID", nargs="?", help="workflow ID")
        _add_bulk_filters(command)
    add_option(cancel, "--reason", default="cancelled by CLI", help="recorded reason")
    add_json_option(cancel)
    add_json_option(resume)
    replay_check.register(actions)
    parser.set_defaults(run=run)


def _add_bulk_filters(command: argparse.ArgumentParser) -> None:
    # Plain options, unlike the others: what a bulk action touches is never taken from
    # an environment variable left set for another command.
    group = command.add_argument_group("bulk action (instead of an ID)")
    group.add_argument("--state", type=upper, choices=_STATES, help="workflows in this state")
    group.add_argument("--name", help="workflows with this workflow name")
    group.add_argument("--queue", help="workflows of this queue")
    group.add_argument("--id-prefix", help="workflows whose ID starts with this")
    group.add_argument("--created-after", help="created at or after (ISO 8601)")
    group.add_argument("--created-before", help="created before (ISO 8601)")
    group.add_argument("--parent", help="the children of this workflow ID")
    group.add_argument("--forked-from", help="the forks of this workflow ID")
    group.add_argument("--app-version", help="last run by this app version")
    group.add_argument("--batch", type=positive_int, default=DEFAULT_BATCH, help="per statement")
    group.add_argument("--dry-run", action="store_true", help="only count what would change")


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
        if action == "replay-check":
            return replay_check.run(cluster, args)
        filters = _filters(args)
        if args.workflow_id is not None and not filters.is_empty:
            raise CliError(f"workflows {action}: give a workflow ID or filters, not both")
        if args.workflow_id is None:
            if filters.is_empty:
                raise CliError(f"workflows {action}: give a workflow ID or at least one filter")
            return _bulk(cluster, action, filters, args)
        if args.dry_run:
            raise CliError("--dry-run applies to a bulk action (filters), not to one ID")
        if action == "cancel":
            status = cluster.cancel(args.workflow_id, reason=args.reason)
            return _report_control(status, WorkflowState.CANCELLED, "cancel", json=args.json)
        status = cluster.resume(args.workflow_id)
        return _report_control(status, None, "resume", json=args.json)


def _filters(args: argparse.Namespace) -> WorkflowFilter:
    return WorkflowFilter.from_strings(
        {
            "state": args.state,
            "name": args.name,
            "queue": args.queue,
            "id_prefix": args.id_prefix,
            "created_after": args.created_after,
            "created_before": args.created_before,
            "parent_id": args.parent,
            "forked_from": args.forked_from,
            "app_version": args.app_version,
        }
    )


def _bulk(cluster: Cluster, action: str, filters: WorkflowFilter, args: argparse.Namespace) -> int:
    if action == "cancel":
        result = cluster.cancel_many(
            filters, reason=args.reason, batch=args.batch, dry_run=args.dry_run
        )
    else:
        result = cluster.resume_many(filters, batch=args.batch, dry_run=args.dry_run)
    if args.json:
        print_json(
            {
                "action": result.action,
                "dry_run": result.dry_run,
                "filters": filters.to_strings(),
                "total": result.total,
                "per_shard": result.per_shard,
                "skipped": result.skipped,
            }
        )
        return 0
    verb = {"cancel": "cancelled", "resume": "resumed"}[action]
    shards = ", ".join(f"{shard}: {n}" for shard, n in result.per_shard.items())
    head = f"would be {verb}" if result.dry_run else verb
    print(f"{result.total} workflow(s) {head} matching {filters.describe()} ({shards})")
    for workflow_id, why in sorted(result.skipped.items()):
        note(f"skipped {workflow_id}: {why}")
    return 0


def _list(cluster: Cluster, args: argparse.Namespace) -> int:
    filters = _filters(args)
    page = cluster.list_workflows(
        limit=args.limit,
        cursor=args.cursor,
        skip_unavailable=True,
        filters=filters,
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
