"""The storage boundary's errors, defined in :mod:`shardflow.errors` (where the whole tree
is written out) and named here as the engine has always imported them.

``Fenced`` is :class:`~shardflow.errors.LeaseLost`: a fenced write this run made was
refused because it no longer owns the workflow.
"""

from __future__ import annotations

from shardflow.errors import DedupConflict, StoreError, TransientStoreError
from shardflow.errors import LeaseLost as Fenced

__all__ = ["DedupConflict", "Fenced", "StoreError", "TransientStoreError"]
