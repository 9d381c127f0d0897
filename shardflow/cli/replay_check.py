"""``shardflow workflows replay-check``: would the new code replay the recorded histories?

Replays the histories of real workflows (by default those that will run again) against
the app given with ``--app``, running no step and writing nothing, and prints each
workflow that would fail, where and why. Exit status 1 when any would, else 0. See
docs/upgrades.md.
"""

from __future__ import annotations

import argparse
import textwrap

from shardflow.cli.options import (
    CliError,
    Subparsers,
    add_command,
    add_json_option,
    add_option,
    positive_int,
    upper,
)
from shardflow.cli.output import print_json
from shardflow.cli.worker import import_app
from shardflow.engine import Cluster
from shardflow.engine.filters import LISTABLE_STATES, WorkflowFilter
from shardflow.engine.replay_check import Outcome, ReplayResult, replay_check

_WIDTH = 80
_STATES = tuple(s.value for s in LISTABLE_STATES)


def register(actions: Subparsers) -> None:
    check = add_command(
        actions,
        "replay-check",
        help="replay recorded histories against new code (runs no step, writes nothing)",
    )
    add_option(check, "--app", help="the new code's shardflow.App, e.g. myproject.flows:app")
    add_option(check, "--name", help="only workflows with this workflow name")
    add_option(
        check,
        "--state",
        type=upper,
        choices=_STATES,
        metavar="STATE",
        help="only workflows in this state (default: RUNNING, SUSPENDED, ENQUEUED; "
        + ", ".join(_STATES)
        + ")",
    )
    add_option(check, "--since", help="only workflows created at or after (ISO 8601)")
    add_option(check, "--limit", type=positive_int, default=500, help="at most N workflows (500)")
    add_json_option(check)


def run(cluster: Cluster, args: argparse.Namespace) -> int:
    if not args.app:
        raise CliError(
            "replay-check needs the new code: pass --app MODULE:ATTR or set SHARDFLOW_APP"
        )
    app = import_app(args.app)
    # The same validation (and one-line errors) as the listing filters.
    filters = WorkflowFilter.from_strings(
        {"state": args.state, "name": args.name, "created_after": args.since}
    )
    results = list(
        replay_check(
            cluster,
            app,
            name=filters.name,
            state=filters.state,
            since=filters.created_after,
            limit=args.limit,
        )
    )
    failed = [r for r in results if r.failed]
    if args.json:
        print_json(
            {
                "app": args.app,
                "checked": len(results),
                "failed": len(failed),
                "results": [r.to_dict() for r in results],
            }
        )
    else:
        for result in failed:
            print(result.workflow_id)
            for line in _explain(result):
                print(line)
        verdict = f"{len(failed)} would fail" if failed else "all replay"
        print(f"replay-check: {len(results)} workflow(s) checked, {verdict}")
    return 1 if failed else 0


def _explain(result: ReplayResult) -> list[str]:
    """Why ``result`` fails, wrapped to 80 columns under its workflow ID."""
    if result.outcome is Outcome.NON_DETERMINISM:
        text = (
            f"{result.outcome.value} at step {result.step_no}: recorded"
            f" {result.expected!r}, the new code calls {result.found!r}"
        )
    elif result.outcome is Outcome.UNREPLAYED:
        text = (
            f"{result.outcome.value}: {result.message}, from step {result.step_no}"
            f" ({result.expected!r})"
        )
    else:
        text = f"{result.outcome.value}: {result.message}"
    text += f" [{result.name}, {result.state.value}]"
    return textwrap.wrap(
        text, _WIDTH, initial_indent="  ", subsequent_indent="    ", break_long_words=True
    )
