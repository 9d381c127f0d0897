"""A cluster YAML whose shards are reached through one :class:`FaultProxy` each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import yaml

if TYPE_CHECKING:
    pass

from shardflow.testing.faults.proxy import FaultProxy


def via_proxy(dsn: str, proxy: FaultProxy) -> str:
    """``dsn`` (URL form) with its host and port replaced by the proxy's."""
    parts = urlsplit(dsn)
    if not parts.scheme:
        raise ValueError("via_proxy() needs a URL DSN (postgresql://...)")
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{proxy.port}" if userinfo else f"127.0.0.1:{proxy.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def dsn_address(dsn: str) -> tuple[str, int]:
    """Host and port of a URL DSN."""
    parts = urlsplit(dsn)
    return parts.hostname or "127.0.0.1", parts.port or 5432


@dataclass
class ProxiedCluster:
    """A cluster YAML whose shard DSNs go through one :class:`FaultProxy` per shard."""

    path: Path
    proxies: dict[str, FaultProxy]  # shard name -> proxy
    direct_dsns: dict[str, str]  # shard name -> the real DSN, for checks and admin work

    def heal_all(self) -> None:
        for proxy in self.proxies.values():
            proxy.heal()

    def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.close()


def proxied_cluster(config_path: Path, out_path: Path) -> ProxiedCluster:
    """Write ``out_path``: the cluster YAML at ``config_path`` with every shard behind a
    new proxy. Close the result to stop the proxies."""
    doc = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    proxies: dict[str, FaultProxy] = {}
    direct: dict[str, str] = {}
    try:
        for shard in doc["shards"]:
            host, port = dsn_address(shard["dsn"])
            proxy = FaultProxy(host, port, name=shard["name"])
            proxies[shard["name"]] = proxy
            direct[shard["name"]] = shard["dsn"]
            shard["dsn"] = via_proxy(shard["dsn"], proxy)
    except BaseException:
        for proxy in proxies.values():
            proxy.close()
        raise
    out_path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return ProxiedCluster(out_path, proxies, direct)
