"""Turning arguments, results and step outputs into text and back.

JSON by default; any object with ``dumps(value) -> str`` and ``loads(text) -> value`` can
replace it (``shardflow.connect(..., serializer=...)``). Sizes are checked against
``limits.max_payload_bytes`` before anything is written, so an oversized or
unserializable value fails whole, with nothing partial stored.
"""

from __future__ import annotations

import builtins
import json
import traceback
from typing import Any, Protocol

from shardflow.errors import PayloadTooLarge, SerializationError


class Serializer(Protocol):
    def dumps(self, value: Any) -> str: ...

    def loads(self, text: str) -> Any: ...


class JsonSerializer:
    """Strict JSON: no NaN, no silent ``str()`` of unknown objects."""

    def dumps(self, value: Any) -> str:
        return json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)

    def loads(self, text: str) -> Any:
        return json.loads(text)


class Codec:
    """A serializer plus the payload size limit."""

    __slots__ = ("max_bytes", "serializer")

    def __init__(self, serializer: Serializer, max_bytes: int) -> None:
        self.serializer = serializer
        self.max_bytes = max_bytes

    def dumps(self, value: Any, what: str) -> str:
        try:
            text = self.serializer.dumps(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(f"{what} cannot be serialized: {exc}") from exc
        # len(str) bounds the UTF-8 size from below; only encode when it could matter.
        if len(text) * 4 > self.max_bytes:
            size = len(text.encode("utf-8"))
            if size > self.max_bytes:
                raise PayloadTooLarge(what, size, self.max_bytes)
        return text

    def loads(self, text: str | None) -> Any:
        if text is None:
            return None
        try:
            return self.serializer.loads(text)
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"stored value cannot be deserialized: {exc}") from exc


def error_record(exc: BaseException) -> dict[str, Any]:
    """How an exception is stored: type, message, traceback."""
    return {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc))[-8000:],
    }


class StepFailed(Exception):
    """A recorded step error replayed whose original exception type cannot be rebuilt."""

    def __init__(self, error: dict[str, Any]) -> None:
        self.error = error
        super().__init__(f"{error.get('type', 'Error')}: {error.get('message', '')}")


def rebuild_error(error: dict[str, Any]) -> Exception:
    """The exception to raise when a recorded step error is replayed.

    Built-in exception types (ValueError, KeyError, ...) come back as themselves with the
    recorded message; anything else as :class:`StepFailed` carrying the record.
    """
    if error.get("module") == "builtins":
        cls = getattr(builtins, str(error.get("type")), None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                return cls(error.get("message", ""))
            except Exception:
                pass
    return StepFailed(error)
