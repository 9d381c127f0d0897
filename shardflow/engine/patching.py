"""Changing a workflow while runs of it are in flight: ``patched`` and ``deprecate_patch``.

A run replays its recorded steps by position (step number) and name, so new code must
make the same step calls, in the same order, as the code that recorded the history.
``patched("change-id")`` lets a workflow keep both: it answers whether this run may take
the new branch at this point, and the answer is the same on every replay of the run.

How a call at position ``n`` (the run's next step number) decides, once per run and
change ID (a second call with the same ID in the same run returns the first answer and
takes no position):

- the record at ``n`` is this change's marker (step ``shardflow.patch:<change-id>``):
  True, and the marker takes position ``n``, as it did when it was recorded;
- the record at ``n`` is something else, or a later position is recorded: the run went
  past this point with the old code, which recorded no marker. False, and no position
  is taken, so the old code's steps keep their numbers;
- nothing is recorded at ``n`` or after: the run reaches this point for the first time.
  The marker is checkpointed at ``n`` like a step (one committed row, fenced on the
  attempt) and the answer is True; every later replay, on any worker, finds it.

``deprecate_patch("change-id")`` is for the release after every old run has finished:
the workflow then keeps only the new branch, and the call consumes the marker when the
history holds it at this position, takes no position when it does not, and never
records one. Once no history holds a marker, the call can go too.
"""

from __future__ import annotations

import weakref

from shardflow.engine import context
from shardflow.engine.runner import WorkflowRun
from shardflow.errors import ShardflowError

__all__ = ["MARKER_PREFIX", "deprecate_patch", "marker_name", "patched"]

MARKER_PREFIX = "shardflow.patch:"
_MAX_ID = 200

# The answers a run gave so far, per change ID (a run replays from its start on every
# attempt, so this is rebuilt the same way each time).
_answers: weakref.WeakKeyDictionary[WorkflowRun, dict[str, bool]] = weakref.WeakKeyDictionary()


def marker_name(change_id: str) -> str:
    """The step name of ``change_id``'s marker: ``shardflow.patch:<change-id>``."""
    if not isinstance(change_id, str) or not change_id.strip():
        raise ValueError("a patch change ID must be a non-empty string")
    if len(change_id) > _MAX_ID or "\x00" in change_id:
        raise ValueError(f"a patch change ID is at most {_MAX_ID} characters, without NUL")
    return MARKER_PREFIX + change_id


def patched(change_id: str) -> bool:
    """True if this run takes the new code of ``change_id`` here; False while it replays
    a history recorded before the change (see the module's docstring)."""
    name = marker_name(change_id)
    run = _run("patched")
    answers = _answers.setdefault(run, {})
    if change_id in answers:
        return answers[change_id]
    step_no = run.next_step
    record = run.recorded.get(step_no)
    if record is not None and record.name == name:
        run.next_step += 1
        answer = True
    elif record is not None or any(n > step_no for n in run.recorded):
        answer = False
    else:
        run.checkpoint(name, lambda: True)
        answer = True
    answers[change_id] = answer
    return answer


def deprecate_patch(change_id: str) -> None:
    """Accept histories recorded with or without ``change_id``'s marker; record none."""
    name = marker_name(change_id)
    run = _run("deprecate_patch")
    record = run.recorded.get(run.next_step)
    if record is not None and record.name == name:
        run.next_step += 1


def _run(what: str) -> WorkflowRun:
    run = context.current_run()
    if not isinstance(run, WorkflowRun):
        raise ShardflowError(f"shardflow.{what}() can only be called inside a workflow")
    return run
