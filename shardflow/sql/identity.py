"""A shard's recorded cluster identity, and the one check that refuses a shard whose
identity disagrees with the config. Pure: the store, the migrator and the rebalancer
read the row (query ``get_identity``) and hand it here.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardflow.config.model import ClusterConfig
from shardflow.errors import IdentityMismatch


@dataclass(frozen=True, slots=True)
class Identity:
    """The ``cluster_identity`` row: written once by ``shardflow migrate``."""

    cluster_name: str
    shard_name: str
    slots: int
    seed: int

    @classmethod
    def from_row(cls, row: tuple[object, ...]) -> Identity:
        return cls(str(row[0]), str(row[1]), int(str(row[2])), int(str(row[3])))


def check_identity(config: ClusterConfig, shard: str, identity: Identity | None) -> None:
    """Refuse shard ``shard`` unless its recorded ``identity`` is the one ``config`` gives
    it. No identity (None) means the shard was never migrated."""
    if identity is None:
        raise IdentityMismatch(
            f"shard {shard!r} has no shardflow identity; run `shardflow migrate` first"
        )
    expected = (
        ("cluster name", identity.cluster_name, config.name),
        ("shard name", identity.shard_name, shard),
        ("hash.slots", identity.slots, config.hash.slots),
        ("hash.seed", identity.seed, config.hash.seed),
    )
    for what, recorded, configured in expected:
        if recorded != configured:
            raise IdentityMismatch(
                f"shard {shard!r}: {what} is {configured!r} in the config but"
                f" {recorded!r} on the server; this database belongs to another cluster"
                " or shard"
            )
