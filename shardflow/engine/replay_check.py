"""Before a deploy: replay the recorded histories of real workflows against new code.

Each selected workflow is run by the runner's own :func:`~shardflow.engine.runner.execute`
with its recorded steps loaded, exactly as a worker would replay it, but nothing runs and
nothing is written:

- the run is interrupted before it starts, and every place where a run would do
  something new (run a step, record a value, consume a message, publish an event, look
  at a child) checks that first: reaching a position with no record (the end of the
  history) stops the check there, successfully;
- a recorded ``send`` is not delivered again, a ``Suspend`` parks nothing, and the final
  state goes to a writer that only remembers it (:class:`ReplayWriter`).

A workflow fails the check when replay meets a step whose name differs from the record
at its position (non-determinism: the step number, the recorded name and the name the
new code called), when the new code raises where the history did not end in an error,
when it ends before replaying every recorded step, or when the app no longer registers
the workflow.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shardflow.engine.app import App, Workflow
from shardflow.engine.cluster import Cluster
from shardflow.engine.execution import execute
from shardflow.engine.filters import WorkflowFilter
from shardflow.engine.records import Claim, FinishWrite, StepRecord, StepWrite, WorkflowStatus
from shardflow.engine.runner import WorkflowRun
from shardflow.engine.signals import RunInterrupted
from shardflow.engine.states import WorkflowState
from shardflow.engine.store import Store
from shardflow.engine.store.admin import AdminStore

__all__ = ["Outcome", "ReplayResult", "ReplayWriter", "check_workflow", "replay_check"]

# The states whose workflows will run again: checked when no state is asked for.
PENDING_STATES = (WorkflowState.RUNNING, WorkflowState.SUSPENDED, WorkflowState.ENQUEUED)
_END = "replay-check: end of the recorded history"
_NEVER = 1e12  # the replay's lease: it never expires


class Outcome(enum.StrEnum):
    OK = "ok"  # replayed to the end of its history (or to the same end)
    NON_DETERMINISM = "non-determinism"  # a step differs from the record at its position
    ERROR = "error"  # the new code raised where the history did not end in an error
    UNREPLAYED = "unreplayed"  # the new code ended before the last recorded step
    UNKNOWN = "unknown-workflow"  # the new app has no workflow of this name


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """How one workflow's history replays against the new code."""

    workflow_id: str
    name: str
    state: WorkflowState
    outcome: Outcome
    recorded: int  # steps in the history
    replayed: int  # positions the new code went through
    step_no: int | None = None  # where it failed
    expected: str | None = None  # the recorded step there
    found: str | None = None  # what the new code called there
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.outcome is not Outcome.OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "workflow_id": self.workflow_id,
            "name": self.name,
            "state": self.state.value,
            "outcome": self.outcome.value,
            "failed": self.failed,
            "recorded": self.recorded,
            "replayed": self.replayed,
            "step_no": self.step_no,
            "expected": self.expected,
            "found": self.found,
            "message": self.message,
        }


class ReplayWriter:
    """A :class:`~shardflow.engine.ports.RunWriter` that writes nothing: a step record
    would be new work (the replay stops there), a final state is only remembered."""

    def __init__(self) -> None:
        self.finished: tuple[WorkflowState, dict[str, Any] | None, str | None] | None = None

    def record_step(self, shard: str, write: StepWrite) -> StepRecord | None:
        raise RunInterrupted(_END)

    def finish(self, shard: str, write: FinishWrite) -> bool:
        self.finished = (write.state, write.error, write.reason)
        return False


class _ReadOnlyStore(Store):
    """The store for reads (the codec, recorded steps); the writes a run makes refuse."""

    def suspend(self, shard: str, **_: Any) -> bool:
        return False  # a Suspend at the end of the history parks nothing

    def wake(self, shard: str, workflow_id: str, wait_for: str | None = None) -> bool:
        return False

    def consume_message(self, shard: str, **_: Any) -> tuple[bool, Any]:
        raise RunInterrupted(_END)

    def set_event(self, shard: str, **_: Any) -> None:
        raise RunInterrupted(_END)


class _ReplayClient:
    """The client calls of a replayed run: a recorded send was delivered already, and
    anything else would be new work (never reached: the run stops first)."""

    def get(self, workflow_id: str) -> WorkflowStatus:
        raise RunInterrupted(_END)

    def send(
        self,
        workflow_id: str,
        message: Any,
        topic: str | None = None,
        idempotency_key: str | None = None,
    ) -> bool:
        return False

    def get_event(self, workflow_id: str, key: str, timeout: float = 0.0, **_: Any) -> Any:
        raise RunInterrupted(_END)

    def submit_child(
        self,
        workflow: Workflow[Any, Any] | str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        workflow_id: str,
        parent_id: str,
    ) -> object:
        raise RunInterrupted(_END)

    def wake(self, workflow_id: str, wait_for: str | None = None) -> bool:
        return False


class _ReplayRun(WorkflowRun):
    """A run that remembers the last step name the code called (for the report)."""

    called: str | None = None

    def take_step(self, name: str) -> tuple[int, StepRecord | None]:
        self.called = name
        return super().take_step(name)


def check_workflow(
    store: Store, app: App, status: WorkflowStatus, inputs: str, steps: Sequence[StepRecord]
) -> ReplayResult:
    """Replay one workflow's history (``steps``, its stored ``inputs``) against ``app``."""
    recorded = {s.step_no: s for s in steps}

    def result(outcome: Outcome, replayed: int, **more: Any) -> ReplayResult:
        return ReplayResult(
            status.workflow_id, status.name, status.state, outcome, len(steps), replayed, **more
        )

    if status.name not in app.workflows:
        return result(Outcome.UNKNOWN, 0, message=f"no workflow named {status.name!r}")
    # Attempt 1: the runner loads nothing; the history is handed over here instead.
    claim = Claim(
        workflow_id=status.workflow_id,
        shard=status.shard,
        name=status.name,
        queue=status.queue,
        inputs=inputs,
        attempt=1,
        recoveries=0,
        parent_id=None,
        state=status.state,
    )
    writer = ReplayWriter()
    run = _ReplayRun(claim, store, _NEVER, _ReplayClient(), writer)
    run.recorded = recorded
    run.interrupt(_END)  # every new piece of work stops the replay before it starts
    execute(run, app)
    replayed = run.next_step
    if writer.finished is None:  # stopped (or parked) where the history ends
        return result(Outcome.OK, replayed)
    state, error, reason = writer.finished
    message = "" if error is None else f"{error.get('type', 'Error')}: {error.get('message', '')}"
    if reason == "non-determinism":
        step_no = replayed - 1
        record = recorded.get(step_no)
        return result(
            Outcome.NON_DETERMINISM,
            replayed,
            step_no=step_no,
            expected=None if record is None else record.name,
            found=run.called,
            message=message,
        )
    if state is WorkflowState.ERROR and status.state not in (
        WorkflowState.ERROR,
        WorkflowState.DEAD,
    ):
        return result(Outcome.ERROR, replayed, step_no=replayed, message=message)
    left = sorted(n for n in recorded if n >= replayed)
    if left:
        return result(
            Outcome.UNREPLAYED,
            replayed,
            step_no=left[0],
            expected=recorded[left[0]].name,
            message=f"the new code ended with {len(left)} recorded step(s) not replayed",
        )
    return result(Outcome.OK, replayed)


def replay_check(
    cluster: Cluster,
    app: App,
    *,
    name: str | None = None,
    state: WorkflowState | None = None,
    since: datetime | None = None,
    limit: int = 500,
) -> Iterator[ReplayResult]:
    """Replay up to ``limit`` workflows (newest first per state; by default those that
    will run again: RUNNING, SUSPENDED, ENQUEUED) against ``app``. Reads only."""
    store = _ReadOnlyStore(cluster.pools, cluster.codec)
    admin = AdminStore(cluster.pools, cluster.codec)
    left = limit
    for each_state in (state,) if state is not None else PENDING_STATES:
        filters = WorkflowFilter(state=each_state, name=name, created_after=since)
        cursor: str | None = None
        while left > 0:
            page = cluster.list_workflows(filters=filters, limit=min(left, 200), cursor=cursor)
            for status in page.items[:left]:
                left -= 1
                extra = admin.workflow_extra(status.shard, status.workflow_id)
                if extra is None:  # moved or deleted since it was listed
                    continue
                steps = store.load_steps(status.shard, status.workflow_id)
                yield check_workflow(store, app, status, extra.inputs, steps)
            cursor = page.next_cursor
            if cursor is None:
                break
