"""Turning arguments, results and step outputs into text and back.

JSON by default; any object with ``dumps(value) -> str`` and ``loads(text) -> value`` can
replace it (``shardflow.connect(..., serializer=...)``). Sizes are checked against
``limits.max_payload_bytes`` before anything is written, so an oversized or
unserializable value fails whole, with nothing partial stored.

With a blob store configured (``payloads.blob_store``), a serialized value longer than
``payloads.inline_max_bytes`` is written there and the row keeps a reference (a claim
check, see :mod:`shardflow.engine.blobs`); :meth:`Codec.loads` follows it back.
"""

from __future__ import annotations

import builtins
import json
import threading
import traceback
from typing import TYPE_CHECKING, Any, Protocol

from shardflow.engine.blobs import BLOB_MARKER, BlobMissing, BlobRef, BlobStore, open_blob_store
from shardflow.errors import PayloadTooLarge, SerializationError, ShardflowError, ValueRejected

if TYPE_CHECKING:
    from shardflow.config.model import ClusterConfig


class Serializer(Protocol):
    def dumps(self, value: Any) -> str: ...

    def loads(self, text: str) -> Any: ...


class JsonSerializer:
    """Strict JSON: no NaN, no silent ``str()`` of unknown objects."""

    def __init__(self) -> None:
        # One encoder for every call: json.dumps with options builds a new one each time.
        self._encode = json.JSONEncoder(
            separators=(",", ":"), allow_nan=False, ensure_ascii=False
        ).encode
        self._encode_ascii = json.JSONEncoder(
            separators=(",", ":"), allow_nan=False, ensure_ascii=True
        ).encode

    def dumps(self, value: Any) -> str:
        text = self._encode(value)
        if not text.isascii() and not is_storable_text(text):
            # A lone surrogate (what os.listdir returns for a file name that is not
            # UTF-8) cannot be sent as UTF-8: escape it as \udXXX, which JSON allows and
            # loads() turns back into the same string.
            return self._encode_ascii(value)
        return text

    def loads(self, text: str) -> Any:
        return json.loads(text)


def _what(what: str, of: str | None) -> str:
    return what if of is None else f"{what} of {of!r}"


class Codec:
    """A serializer plus the payload size limit, and the blob store for large values."""

    __slots__ = ("blobs", "inline_max_bytes", "max_bytes", "serializer")

    def __init__(
        self,
        serializer: Serializer,
        max_bytes: int,
        *,
        blobs: BlobStore | None = None,
        inline_max_bytes: int | None = None,
    ) -> None:
        self.serializer = serializer
        self.max_bytes = max_bytes
        self.blobs = blobs
        self.inline_max_bytes = max_bytes if inline_max_bytes is None else inline_max_bytes

    @classmethod
    def for_config(cls, serializer: Serializer, config: ClusterConfig) -> Codec:
        """The codec ``limits`` and ``payloads`` of the cluster YAML describe."""
        payloads = config.payloads
        store = payloads.blob_store
        return cls(
            serializer,
            config.limits.max_payload_bytes,
            blobs=None if store is None else open_blob_store(store),
            inline_max_bytes=payloads.inline_max_bytes,
        )

    def dumps(self, value: Any, what: str, of: str | None = None) -> str:
        """Serialize ``value`` (described as ``what`` [``of`` a workflow] in errors)."""
        try:
            text = self.serializer.dumps(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(f"{_what(what, of)} cannot be serialized: {exc}") from exc
        # len(str) bounds the UTF-8 size from below; only encode when it could matter.
        if len(text) * 4 > self.max_bytes:
            size = len(text.encode("utf-8"))
            if size > self.max_bytes:
                raise PayloadTooLarge(_what(what, of), size, self.max_bytes)
        if text[:1] == BLOB_MARKER:
            raise SerializationError(f"{_what(what, of)}: serialized text must not start with 0x1E")
        if "\x00" in text or not is_storable_text(text):
            raise ValueRejected(
                f"{_what(what, of)}: the serializer produced text PostgreSQL cannot store"
                " (a NUL character or a lone surrogate)"
            )
        if self.blobs is not None and len(text) * 4 > self.inline_max_bytes:
            data = text.encode("utf-8")
            if len(data) > self.inline_max_bytes:
                return self._offload(data, text)
        return text

    def loads(self, text: str | None) -> Any:
        if text is None:
            return None
        if text[:1] == BLOB_MARKER:
            text = self._fetch(text)
        try:
            return self.serializer.loads(text)
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"stored value cannot be deserialized: {exc}") from exc

    def copy_stored(self, text: str) -> str:
        """A stored value made fit for another row: the same text, except that a claim
        check is copied to a blob of its own. Each blob belongs to the rows of one
        workflow and goes with them (retention), so two workflows never share one."""
        if text[:1] != BLOB_MARKER:
            return text
        data = self._fetch(text).encode("utf-8")  # checked against the reference
        assert self.blobs is not None  # _fetch needs one
        ref = BlobRef.new(data)
        self.blobs.put(ref.key, data)
        return ref.text

    def _offload(self, data: bytes, text: str) -> str:
        assert self.blobs is not None
        ref = BlobRef.new(data)
        self.blobs.put(ref.key, data)
        # The runner reads back what it just wrote (so a value returns exactly as a
        # replay would): serve that from memory, once, instead of from the store. Only
        # up to a size, since each run thread may hold one until its next read.
        if len(data) <= _RECENT_MAX_BYTES:
            _recent.ref, _recent.text = ref.text, text
        else:
            _recent.ref = _recent.text = None
        return ref.text

    def _fetch(self, reference: str) -> str:
        if getattr(_recent, "ref", None) == reference:
            text: str = _recent.text
            _recent.ref = _recent.text = None
            return text
        ref = BlobRef.parse(reference)
        if ref is None:
            raise SerializationError("stored value is a malformed blob reference")
        if self.blobs is None:
            raise SerializationError(
                f"stored value is in a blob store ({ref.key}), but this process has no"
                " payloads.blob_store configured"
            )
        data = ref.check(self.blobs.get(ref.key))
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BlobMissing(f"blob {ref.key} is not UTF-8 text") from exc


# Per thread: the last payload this thread offloaded (see Codec._offload).
_recent = threading.local()
_RECENT_MAX_BYTES = 1 << 20


def is_storable_text(text: str) -> bool:
    """Whether PostgreSQL can store ``text`` in a text column: valid UTF-8 (no lone
    surrogates). NUL is checked separately where it matters."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def storable(text: str) -> str:
    """``text`` with what PostgreSQL cannot store escaped: NUL as ``\\x00``, lone
    surrogates as ``\\udXXX``. For diagnostics (error messages), never for values."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not is_storable_text(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def error_record(exc: BaseException) -> dict[str, Any]:
    """How an exception is stored: type, message, traceback. Whatever the exception's
    text holds (a NUL, a lone surrogate), the record can be stored as jsonb."""
    return {
        "type": type(exc).__name__,
        "module": type(exc).__module__,
        "message": storable(_text_of(exc)),
        "traceback": storable("".join(traceback.format_exception(exc))[-8000:]),
    }


def _text_of(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not lose the error itself
        return f"<{type(exc).__name__}: str() failed>"


class StepFailed(ShardflowError):
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
