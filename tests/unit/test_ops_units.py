"""Operations pieces without a database: the retention and payloads config, claim checks
through the Codec, blob stores (filesystem and S3 via moto), step timings, JSON logs."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from shardflow.cli.logs import make_handler
from shardflow.config import BlobStoreKind, parse
from shardflow.engine.blobs import (
    BLOB_MARKER,
    BlobMissing,
    BlobRef,
    BlobStoreUnavailable,
    FilesystemBlobStore,
    S3BlobStore,
    references,
)
from shardflow.engine.serialization import Codec, JsonSerializer
from shardflow.engine.timings import StepTimes
from shardflow.errors import ConfigError, PayloadTooLarge, SerializationError, ShardUnavailable
from shardflow.rebalance.progress import WaitNotices

BASE = "name: c\nshards: [{name: s0, dsn: 'host=h dbname=d'}]\n"


# -- config -------------------------------------------------------------------------------


def test_retention_section_is_optional_and_validated() -> None:
    assert parse(BASE).retention is None
    policy = parse(BASE + "retention: {keep_finished_days: 7, batch_size: 200}\n").retention
    assert policy is not None
    assert (policy.keep_finished_seconds, policy.batch_size, policy.interval_seconds) == (
        7 * 86400,
        200,
        60.0,
    )
    cases = {
        "retention: {}": "retention.keep_finished_days: missing required key (line 3)",
        "retention: {keep_finished_day: 7}": (
            "retention.keep_finished_day: unknown key; did you mean 'keep_finished_days'? (line 3)"
        ),
        "retention: {keep_finished_days: -1}": (
            "retention.keep_finished_days: must be > 0, got -1 (line 3)"
        ),
        "retention: {keep_finished_days: 1, batch_size: 0}": (
            "retention.batch_size: must be between 1 and 100000, got 0 (line 3)"
        ),
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError) as caught:
            parse(BASE + text + "\n")
        assert str(caught.value) == message


def test_payloads_section_names_a_blob_store() -> None:
    payloads = parse(BASE).payloads
    assert payloads.blob_store is None
    text = "payloads:\n  inline_max_bytes: 1000\n  blob_store: {kind: filesystem, path: /b}\n"
    payloads = parse(BASE + text).payloads
    assert payloads.inline_max_bytes == 1000
    assert payloads.blob_store is not None
    assert (payloads.blob_store.kind, payloads.blob_store.path) == (BlobStoreKind.FILESYSTEM, "/b")
    s3 = parse(
        BASE + "payloads: {blob_store: {kind: s3, bucket: '${BUCKET}', prefix: sf/}}\n",
        env={"BUCKET": "blobs"},
    ).payloads.blob_store
    assert s3 is not None and (s3.kind, s3.bucket, s3.prefix) == (BlobStoreKind.S3, "blobs", "sf/")
    cases = {
        "payloads: {blob_store: {kind: s3, path: /x, bucket: b}}": (
            "payloads.blob_store.path: not a setting of blob stores of kind s3 (line 3)"
        ),
        "payloads: {blob_store: {kind: gcs}}": (
            "payloads.blob_store.kind: must be one of filesystem, s3, got 'gcs' (line 3)"
        ),
        "payloads: {blob_store: {kind: filesystem}}": (
            "payloads.blob_store.path: missing required key (line 3)"
        ),
        "payloads: {blob_stor: {}}": (
            "payloads.blob_stor: unknown key; did you mean 'blob_store'? (line 3)"
        ),
        "payloads: {inline_max_bytes: 2000000, blob_store: {kind: s3, bucket: b}}": (
            "payloads.inline_max_bytes: must be <= limits.max_payload_bytes (1048576) (line 3)"
        ),
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError) as caught:
            parse(BASE + text + "\n")
        assert str(caught.value) == message


# -- claim checks -----------------------------------------------------------------------------


def codec(tmp_path: Path, inline: int = 100, max_bytes: int = 10_000) -> Codec:
    store = FilesystemBlobStore(tmp_path / "blobs")
    return Codec(JsonSerializer(), max_bytes, blobs=store, inline_max_bytes=inline)


def test_codec_keeps_small_values_inline_and_offloads_large_ones(tmp_path: Path) -> None:
    c = codec(tmp_path)
    assert c.dumps({"a": 1}, "x") == '{"a":1}'
    value = {"text": "é" * 200}
    text = c.dumps(value, "x")
    assert text.startswith(BLOB_MARKER) and len(text) < 150
    ref = BlobRef.parse(text)
    assert ref is not None
    assert (tmp_path / "blobs" / ref.key).read_bytes() == json.dumps(
        value, separators=(",", ":"), ensure_ascii=False
    ).encode()
    assert c.loads(text) == value  # served from memory right after the write
    assert c.loads(text) == value  # and from the store after that
    # Another process with the same store reads it too.
    assert codec(tmp_path).loads(text) == value
    # The payload limit still applies, before anything is written.
    with pytest.raises(PayloadTooLarge):
        c.dumps("x" * 20_000, "big")
    assert references([text, '"plain"', None, text]) == [ref]


def test_codec_refuses_what_it_cannot_trust(tmp_path: Path) -> None:
    c = codec(tmp_path)
    text = c.dumps("y" * 500, "x")
    assert c.loads(text) == "y" * 500  # the write's own read-back, from memory
    ref = BlobRef.parse(text)
    assert ref is not None
    blob = tmp_path / "blobs" / ref.key
    blob.write_bytes(blob.read_bytes()[:-2] + b'z"')
    with pytest.raises(BlobMissing, match="does not hold the content"):
        codec(tmp_path).loads(text)
    blob.unlink()
    with pytest.raises(BlobMissing, match="is missing"):
        codec(tmp_path).loads(text)
    with pytest.raises(SerializationError, match=r"no payloads\.blob_store configured"):
        Codec(JsonSerializer(), 10_000).loads(text)
    with pytest.raises(SerializationError, match="malformed blob reference"):
        c.loads(BLOB_MARKER + "shardflow-blob:1:5:abc:../../etc/passwd")

    class Raw:
        def dumps(self, value: Any) -> str:
            return str(value)

        def loads(self, text: str) -> Any:
            return text

    with pytest.raises(SerializationError, match="must not start with 0x1E"):
        Codec(Raw(), 1000).dumps(BLOB_MARKER + "x", "value")


def test_filesystem_store_refuses_foreign_keys_and_reports_a_missing_mount(
    tmp_path: Path,
) -> None:
    store = FilesystemBlobStore(tmp_path / "never-mounted")
    key = BlobRef.new(b"data").key
    with pytest.raises(BlobStoreUnavailable) as caught:
        store.get(key)
    assert isinstance(caught.value, ShardUnavailable)  # retryable, like a shard outage
    with pytest.raises(BlobMissing, match="malformed blob key"):
        store.get("../../etc/passwd")
    store = FilesystemBlobStore(tmp_path / "blobs")
    store.put(key, b"data")
    assert store.get(key) == b"data"
    store.delete([key, key])
    with pytest.raises(BlobMissing):
        store.get(key)


def test_s3_store_round_trip_with_moto() -> None:
    moto = pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    with moto.mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="blobs")
        store = S3BlobStore("blobs", prefix="sf/", client=client)
        keys = [BlobRef.new(bytes([i])).key for i in range(3)]
        for i, key in enumerate(keys):
            store.put(key, bytes([i]) * 10)
        assert store.get(keys[1]) == b"\x01" * 10
        listed = client.list_objects_v2(Bucket="blobs")["Contents"]
        assert sorted(o["Key"] for o in listed) == sorted("sf/" + k for k in keys)
        store.delete(keys[:2])
        with pytest.raises(BlobMissing):
            store.get(keys[0])
        assert store.get(keys[2]) == b"\x02" * 10
        missing_bucket = S3BlobStore("nope", client=client)
        with pytest.raises(BlobStoreUnavailable, match="NoSuchBucket"):
            missing_bucket.put(keys[0], b"x")


# -- step timings -------------------------------------------------------------------------------


def test_step_times_buckets_by_upper_bound() -> None:
    times = StepTimes((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 3.0):
        times.observe("s0", "fetch", seconds)
    times.observe("s1", "fetch", 0.2)
    snapshot = times.snapshot()
    counts, total = snapshot[("s0", "fetch")]
    assert counts == [2, 1, 1] and total == pytest.approx(3.65)
    counts, total = snapshot[("s1", "fetch")]
    assert counts == [0, 1, 0] and total == pytest.approx(0.2)


# -- logs ---------------------------------------------------------------------------------------


def test_json_logs_and_redaction() -> None:
    stream = io.StringIO()
    dsn = "postgresql://app:hunter2-pw@db:5432/x"
    handler = make_handler(stream, "json", lambda: [dsn])
    logger = logging.getLogger("shardflow.test.jsonlogs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info("connecting to %s", dsn, extra={"workflow_id": "w-1", "shard": "s0"})
        try:
            raise RuntimeError("failed with password=hunter2-pw")
        except RuntimeError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "connecting to postgresql://app:***@db:5432/x"
    assert (first["workflow_id"], first["shard"], first["level"]) == ("w-1", "s0", "INFO")
    assert "attempt" not in first
    assert "RuntimeError" in second["exception"]
    assert "hunter2" not in stream.getvalue()


def test_wait_notices_say_a_wait_after_a_second_then_every_ten_seconds() -> None:
    now = [100.0]
    said: list[str] = []
    notices = WaitNotices(said.append, clock=lambda: now[0])
    for t in (100.0, 100.5, 101.2, 105.0, 110.0, 111.3, 121.3):
        now[0] = t
        notices.waiting("the lock")
    assert said == [
        "waiting for the lock (1s so far)",
        "waiting for the lock (11s so far)",
        "waiting for the lock (21s so far)",
    ]
    notices.done()  # a new wait starts silent again
    now[0] = 200.0
    notices.waiting("2 running workflow(s)")
    now[0] = 200.9
    notices.waiting("2 running workflow(s)")
    assert len(said) == 3
