"""Blob stores for large payloads: the claim-check pattern.

A serialized value (workflow inputs or result, step output, message, event) longer than
``payloads.inline_max_bytes`` is written to the cluster's blob store under a fresh key,
and its row keeps only a short reference. Reading the row fetches the blob back, checks
its size and SHA-256, and returns the value: workflow code never sees the difference.

The reference is text that no JSON document starts with (an ASCII record separator,
0x1E, then ``shardflow-blob:1:<size>:<sha256>:<key>``). Keys are
``YYYY/MM/DD/<32 hex digits>``, never derived from user data, so a reference read from a
row cannot name a path outside the store, and an S3 lifecycle rule can expire by date.

Every process of a cluster (workers, clients, the rebalancer moves rows, never blobs)
must see the same store: a directory on a shared filesystem, or an S3-compatible bucket
(the ``s3`` extra installs boto3; credentials come from boto3's usual sources).

Blobs are deleted by retention, together with the rows that reference them. A blob
whose row was never written (a step recorded by another attempt first) stays behind;
see docs/operations.md for sweeping those.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from shardflow.config.model import BlobStoreConfig, BlobStoreKind
from shardflow.errors import SerializationError, ShardflowError, ShardUnavailable

__all__ = [
    "BLOB_MARKER",
    "BlobMissing",
    "BlobRef",
    "BlobStore",
    "BlobStoreUnavailable",
    "FilesystemBlobStore",
    "S3BlobStore",
    "is_reference",
    "open_blob_store",
    "references",
]

# The first character of every reference. JSON text never starts with a control
# character, and PostgreSQL text columns can hold it (unlike NUL).
BLOB_MARKER = "\x1e"
_PREFIX = BLOB_MARKER + "shardflow-blob:1:"
_KEY = re.compile(r"\d{4}/\d{2}/\d{2}/[0-9a-f]{32}")
_REF = re.compile(
    re.escape(_PREFIX) + r"(?P<size>\d+):(?P<sha256>[0-9a-f]{64}):(?P<key>" + _KEY.pattern + ")"
)
# S3 DeleteObjects takes at most this many keys per request.
_S3_DELETE_BATCH = 1000


class BlobStoreUnavailable(ShardUnavailable):
    """The blob store cannot be read or written now. Retryable: like an unavailable
    shard, a run that meets it is abandoned (not failed) and recovered later."""

    def __init__(self, reason: str) -> None:
        self.shard = "blob-store"
        self.reason = reason
        ShardflowError.__init__(self, f"blob store is unavailable: {reason}")


class BlobMissing(SerializationError):
    """A row references a blob that is not in the store, or whose content changed."""


class BlobStore(Protocol):
    """Where large payloads live. Keys come from :meth:`BlobRef.new`; blobs never change."""

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def delete(self, keys: Sequence[str]) -> None:
        """Delete these blobs; keys that are already gone are not an error."""
        ...


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A claim check: what a row holds instead of a large payload."""

    key: str
    size: int
    sha256: str

    @classmethod
    def new(cls, data: bytes, now: datetime | None = None) -> BlobRef:
        day = (now or datetime.now(timezone.utc)).strftime("%Y/%m/%d")
        return cls(f"{day}/{uuid.uuid4().hex}", len(data), hashlib.sha256(data).hexdigest())

    @classmethod
    def parse(cls, text: str) -> BlobRef | None:
        """The reference ``text`` holds, or None if it is not a well-formed reference."""
        match = _REF.fullmatch(text)
        if match is None:
            return None
        return cls(match["key"], int(match["size"]), match["sha256"])

    @property
    def text(self) -> str:
        return f"{_PREFIX}{self.size}:{self.sha256}:{self.key}"

    def check(self, data: bytes) -> bytes:
        """``data`` if it is this blob's content; else :class:`BlobMissing`."""
        if len(data) != self.size or hashlib.sha256(data).hexdigest() != self.sha256:
            raise BlobMissing(f"blob {self.key} does not hold the content its reference names")
        return data


def is_reference(text: str | None) -> bool:
    """Whether a stored value is a claim check (cheap: looks at one character)."""
    return text is not None and text[:1] == BLOB_MARKER


def references(texts: Iterable[str | None]) -> list[BlobRef]:
    """The distinct blob references among stored values (others are ignored)."""
    found: dict[str, BlobRef] = {}
    for text in texts:
        if is_reference(text):
            assert text is not None
            ref = BlobRef.parse(text)
            if ref is not None:
                found[ref.key] = ref
    return list(found.values())


class FilesystemBlobStore:
    """Blobs as files under ``root``: a directory every process of the cluster mounts."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FilesystemBlobStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        if not _KEY.fullmatch(key):
            raise BlobMissing(f"malformed blob key {key[:80]!r}")
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write aside, then rename: a reader never sees half a blob.
            fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temp, path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise BlobStoreUnavailable(f"cannot write {key}: {exc.strerror or exc}") from exc

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            if not self.root.is_dir():
                # The shared directory is not mounted: not the blob's fault.
                raise BlobStoreUnavailable(f"directory {self.root} does not exist") from exc
            raise BlobMissing(f"blob {key} is missing from {self.root}") from exc
        except OSError as exc:
            raise BlobStoreUnavailable(f"cannot read {key}: {exc.strerror or exc}") from exc

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            try:
                self._path(key).unlink(missing_ok=True)
            except OSError as exc:
                raise BlobStoreUnavailable(f"cannot delete {key}: {exc.strerror or exc}") from exc


class S3BlobStore:
    """Blobs as objects ``<prefix><key>`` in an S3-compatible bucket (AWS, MinIO, R2...).

    Needs boto3 (``pip install 'shardflow[s3]'``). Credentials and region come from
    boto3's usual chain (environment, profile, instance role), never from the YAML.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        if client is None:
            try:
                import boto3
            except ImportError as exc:
                raise ShardflowError(
                    "payloads.blob_store kind s3 needs boto3: pip install 'shardflow[s3]'"
                ) from exc
            client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)
        self._client = client

    def __repr__(self) -> str:
        return f"S3BlobStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def _object(self, key: str) -> str:
        if not _KEY.fullmatch(key):
            raise BlobMissing(f"malformed blob key {key[:80]!r}")
        return self.prefix + key

    def put(self, key: str, data: bytes) -> None:
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=self._object(key),
                Body=data,
                ContentType="application/octet-stream",
            )
        except Exception as exc:
            raise BlobStoreUnavailable(f"cannot write {key}: {_s3_reason(exc)}") from exc

    def get(self, key: str) -> bytes:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._object(key))
            data: bytes = response["Body"].read()
            return data
        except Exception as exc:
            if _s3_code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise BlobMissing(f"blob {key} is missing from bucket {self.bucket}") from exc
            raise BlobStoreUnavailable(f"cannot read {key}: {_s3_reason(exc)}") from exc

    def delete(self, keys: Sequence[str]) -> None:
        objects = [{"Key": self._object(key)} for key in keys]
        for start in range(0, len(objects), _S3_DELETE_BATCH):
            batch = objects[start : start + _S3_DELETE_BATCH]
            try:
                self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except Exception as exc:
                raise BlobStoreUnavailable(f"cannot delete blobs: {_s3_reason(exc)}") from exc


def _s3_code(exc: Exception) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return None if code is None else str(code)
    return None


def _s3_reason(exc: Exception) -> str:
    code = _s3_code(exc)
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return f"{code}: {first}" if code and code not in first else first


def open_blob_store(config: BlobStoreConfig) -> BlobStore:
    """The blob store ``payloads.blob_store`` describes."""
    if config.kind is BlobStoreKind.FILESYSTEM:
        assert config.path is not None
        return FilesystemBlobStore(config.path)
    assert config.bucket is not None
    return S3BlobStore(
        config.bucket,
        prefix=config.prefix,
        endpoint_url=config.endpoint_url,
        region=config.region,
    )
