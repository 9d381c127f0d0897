"""The two files a local cluster keeps in its directory.

- ``servers.json``: what :class:`~shardflow.local.LocalCluster` needs to find its servers
  again (shard names, ports, data directories, binaries, settings). Data directories are
  stored relative to the cluster directory, so the directory can be moved while stopped;
  when the server user could not reach it (root, see shardflow.local.unprivileged) they
  are absolute paths under ``data_root``, a directory of their own.
- ``cluster.yaml``: the shardflow configuration pointing at those servers. When it exists
  only the shards' ``dsn`` values are rewritten, so a user's edits (queues, limits) stay.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shardflow.errors import EmbeddedServerError

STATE_FILE = "servers.json"
CONFIG_FILE = "cluster.yaml"
_STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class ServerRecord:
    """One server of a local cluster; ``data_dir`` is relative to the cluster directory."""

    shard: str
    port: int
    data_dir: str


@dataclass(frozen=True, slots=True)
class ClusterState:
    """The content of ``servers.json``."""

    name: str
    slots: int
    bindir: Path
    servers: tuple[ServerRecord, ...]
    settings: Mapping[str, str] = field(default_factory=dict)
    data_root: Path | None = None
    """Where the data directories are when not under the cluster directory."""

    def to_json(self) -> str:
        document = {
            "version": _STATE_VERSION,
            "name": self.name,
            "slots": self.slots,
            "bindir": str(self.bindir),
            "settings": dict(self.settings),
            "data_root": None if self.data_root is None else str(self.data_root),
            "servers": [
                {"shard": s.shard, "port": s.port, "data_dir": s.data_dir} for s in self.servers
            ],
        }
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ClusterState:
        document = json.loads(text)
        if document.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown version {document.get('version')!r}")
        data_root = document.get("data_root")
        return cls(
            data_root=None if data_root is None else Path(data_root),
            name=str(document["name"]),
            slots=int(document["slots"]),
            bindir=Path(document["bindir"]),
            settings={str(k): str(v) for k, v in document["settings"].items()},
            servers=tuple(
                ServerRecord(str(s["shard"]), int(s["port"]), str(s["data_dir"]))
                for s in document["servers"]
            ),
        )


def read_state(path: Path) -> ClusterState | None:
    """The state in ``path``, or ``None`` if there is no such file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return ClusterState.from_json(text)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EmbeddedServerError(f"{path} is not a local cluster state file: {exc}") from exc


def write_state(path: Path, state: ClusterState) -> None:
    _write_atomically(path, state.to_json())


def write_cluster_yaml(path: Path, name: str, slots: int, dsns: Sequence[tuple[str, str]]) -> None:
    """Write the cluster configuration, or update the shards' DSNs in an existing one.

    ``dsns`` holds ``(shard name, dsn)`` pairs.
    """
    document = _read_yaml(path)
    if document is None:
        document = {
            "name": name,
            "hash": {"slots": slots, "seed": 0},
            "shards": [{"name": shard, "dsn": dsn, "weight": 1} for shard, dsn in dsns],
        }
    else:
        by_name = dict(dsns)
        for shard in document.get("shards") or []:
            if isinstance(shard, dict) and shard.get("name") in by_name:
                shard["dsn"] = by_name[shard["name"]]
    _write_atomically(path, yaml.safe_dump(document, sort_keys=False))


def add_shard_to_yaml(path: Path, shard: str, dsn: str, weight: int = 1) -> None:
    """Append a shard to the cluster configuration (kept if already there)."""
    document = _read_yaml(path) or {}
    shards = document.setdefault("shards", [])
    if not any(isinstance(s, dict) and s.get("name") == shard for s in shards):
        shards.append({"name": shard, "dsn": dsn, "weight": weight})
    _write_atomically(path, yaml.safe_dump(document, sort_keys=False))


def _read_yaml(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    document = yaml.safe_load(text)
    if not isinstance(document, dict):
        raise EmbeddedServerError(f"{path} does not hold a cluster configuration mapping")
    return document


def _write_atomically(path: Path, text: str) -> None:
    # Readers (another `shardflow` process, a worker loading the config) never see half a file.
    # Mode 0600: cluster.yaml holds the superuser's password in its DSNs.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
