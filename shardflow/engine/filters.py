"""Which workflows a listing or a bulk action is about: :class:`WorkflowFilter`.

Pure: no I/O. Every field is optional; the filter matches a workflow when every field
that is set matches. Values go to SQL only as parameters (``store/admin.py``); a
workflow-ID prefix is turned into a ``LIKE`` pattern with its wildcards escaped here.
Bad values raise :class:`ValueError` with a one-line message naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shardflow.engine.states import WorkflowState

_TEXT_MAX = 512  # the longest workflow ID (cluster._ID_MAX); names and queues are shorter
# States a user can filter on; IMPORTING and MOVED rows belong to the rebalancer and
# are never listed.
LISTABLE_STATES = tuple(
    s for s in WorkflowState if s not in (WorkflowState.IMPORTING, WorkflowState.MOVED)
)


@dataclass(frozen=True, slots=True)
class WorkflowFilter:
    """Workflows whose state, name, queue, ID prefix, creation time and parent match.

    ``created_after`` is inclusive and ``created_before`` exclusive; both must carry a
    time zone. ``parent_id`` matches the children a workflow started, ``forked_from``
    the forks made from a workflow, ``app_version`` the workflows whose latest attempt
    ran that version of the app.
    """

    state: WorkflowState | None = None
    name: str | None = None
    queue: str | None = None
    id_prefix: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    parent_id: str | None = None
    forked_from: str | None = None
    app_version: str | None = None

    def __post_init__(self) -> None:
        if self.state is not None:
            state = _state(self.state)
            object.__setattr__(self, "state", state)
        for field_name in ("name", "queue", "id_prefix", "parent_id", "forked_from", "app_version"):
            _check_text(field_name, getattr(self, field_name))
        for field_name in ("created_after", "created_before"):
            value = getattr(self, field_name)
            if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
                raise ValueError(f"filter {field_name}: a datetime with a time zone is required")
        if (
            self.created_after is not None
            and self.created_before is not None
            and self.created_after >= self.created_before
        ):
            raise ValueError("filter created_after must be earlier than created_before")

    @classmethod
    def from_strings(cls, values: Mapping[str, str | None]) -> WorkflowFilter:
        """A filter from text (a query string, CLI flags): empty values mean "any";
        times are ISO 8601 (``2026-01-02``, ``2026-01-02T03:04:05+00:00``; UTC if no
        zone is given)."""
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown filter field(s): {', '.join(sorted(unknown))}")

        def text(key: str) -> str | None:
            value = values.get(key)
            return value.strip() if value is not None and value.strip() else None

        state = text("state")
        return cls(
            state=_state(state) if state is not None else None,
            name=text("name"),
            queue=text("queue"),
            # A prefix keeps its spaces: IDs are compared exactly.
            id_prefix=values.get("id_prefix") or None,
            created_after=_time("created_after", text("created_after")),
            created_before=_time("created_before", text("created_before")),
            parent_id=values.get("parent_id") or None,
            forked_from=values.get("forked_from") or None,
            app_version=text("app_version"),
        )

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, f) is None for f in self.__dataclass_fields__)

    def to_strings(self) -> dict[str, str]:
        """The fields that are set, as text (the inverse of :meth:`from_strings`)."""
        out: dict[str, str] = {}
        for key in self.__dataclass_fields__:
            value = getattr(self, key)
            if value is None:
                continue
            out[key] = value.isoformat() if isinstance(value, datetime) else str(value)
        return out

    def sql_params(self) -> dict[str, Any]:
        """Parameters of the filtered queries in ``queries/admin.sql``."""
        return {
            "state": self.state.value if self.state is not None else None,
            "name": self.name,
            "queue": self.queue,
            "id_like": None if self.id_prefix is None else like_prefix(self.id_prefix),
            "created_after": self.created_after,
            "created_before": self.created_before,
            "parent_id": self.parent_id,
            "forked_from": self.forked_from,
            "app_version": self.app_version,
        }

    def describe(self) -> str:
        """One line for messages: ``state=ERROR queue=emails`` (or ``all workflows``)."""
        parts = [f"{k}={v}" for k, v in self.to_strings().items()]
        return " ".join(parts) if parts else "all workflows"


def like_prefix(prefix: str) -> str:
    """A ``LIKE`` pattern (escape character ``\\``) matching IDs that start with ``prefix``."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _state(value: str | WorkflowState) -> WorkflowState:
    try:
        state = WorkflowState(str(value).upper())
    except ValueError:
        raise ValueError(
            f"filter state: {str(value)[:40]!r} is not one of "
            + ", ".join(s.value for s in LISTABLE_STATES)
        ) from None
    if state not in LISTABLE_STATES:
        raise ValueError(f"filter state: {state.value} rows are internal and never listed")
    return state


def _check_text(field_name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value:
        raise ValueError(f"filter {field_name}: a non-empty string is required")
    if len(value) > _TEXT_MAX:
        raise ValueError(f"filter {field_name}: longer than {_TEXT_MAX} characters")
    if "\x00" in value:
        raise ValueError(f"filter {field_name}: must not contain NUL characters")


def _time(field_name: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"filter {field_name}: {text[:40]!r} is not an ISO 8601 time (e.g. 2026-01-02T03:04Z)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
